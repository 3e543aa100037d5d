# SPDX-License-Identifier: LGPL-2.1-or-later
"""Weak cipher choices need an explicit opt-in to create, and say why;
existing weak images stay readable and convertible; PBKDF2 never falls
below cryptsetup's minimum."""

import os
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt.crypto import CipherSpec
from pyqcrypt.crypto.policy import InsecureCipherWarning, weaknesses
from pyqcrypt.luks.device import create_volume, format_device
from pyqcrypt.qcow2 import create_qcow2

from conftest import cs_format, write_file

WEAK = [("aes-ecb", 256, "ECB"), ("aes-cbc-plain", 256, "watermarking"),
        ("aes-cbc-plain64", 256, "watermarking"), ("aes-cbc-plain64be", 128, "watermarking"),
        ("aes-lrw-plain64", 256, "LRW is a legacy mode"),
        ("serpent-lrw-plain64", 384, "LRW is a legacy mode")]


@pytest.mark.parametrize("name,bits,why", WEAK)
def test_weak_specs_need_opt_in_everywhere(workdir, name, bits, why):
    spec = CipherSpec.parse(name, bits)
    with pytest.raises(pyqcrypt.Error, match=why):
        create_volume(os.path.join(workdir, "a.luks"), 1 << 20, b"pw", spec, iterations=1000)
    dev = write_file(os.path.join(workdir, "dev.img"), bytes(4 << 20))
    with pytest.raises(pyqcrypt.Error, match="--allow-insecure"):
        format_device(dev, b"pw", spec, iterations=1000)
    assert open(dev, "rb").read(6) == bytes(6)                # nothing written
    with pytest.raises(pyqcrypt.Error, match=why):
        create_qcow2(os.path.join(workdir, "a.qcow2"), 1 << 20, encrypt_format="luks", passphrase=b"pw",
                     spec=spec, iterations=1000)
    assert sorted(os.listdir(workdir)) == ["dev.img"]
    with pytest.warns(InsecureCipherWarning, match=why):
        create_volume(os.path.join(workdir, "b.luks"), 1 << 20, b"pw", spec, iterations=1000,
                      allow_insecure=True)
    with pyqcrypt.open(os.path.join(workdir, "b.luks"), passphrase=b"pw") as img:
        assert img.size == 1 << 20


def test_plain_iv_wraps_above_2tib():
    spec = CipherSpec.parse("aes-xts-plain", 512)
    assert weaknesses(spec, 2 << 40) == []
    assert "2 TiB" in weaknesses(spec, (2 << 40) + 512)[0]
    assert weaknesses(CipherSpec.parse("aes-xts-plain64", 512), 1 << 60) == []
    assert weaknesses(CipherSpec.parse("aes-cbc-essiv:sha256", 256), 1 << 60) == []


def test_plain_iv_refused_for_large_qcow2(workdir):
    with pytest.raises(pyqcrypt.Error, match="2 TiB"):
        create_qcow2(os.path.join(workdir, "big.qcow2"), 3 << 40, encrypt_format="luks",
                     passphrase=b"pw", spec=CipherSpec.parse("aes-xts-plain", 512), iterations=1000)
    create_qcow2(os.path.join(workdir, "small.qcow2"), 1 << 30, encrypt_format="luks",
                 passphrase=b"pw", spec=CipherSpec.parse("aes-xts-plain", 512), iterations=1000)


def test_existing_weak_volume_stays_readable_and_convertible(workdir):
    vol = cs_format(workdir, "cbc.luks", b"pw", "aes-cbc-plain", 256)
    with pyqcrypt.open(vol, passphrase=b"pw", writable=True) as img:
        img.write(0, b"keep" * 1000)
    dst = os.path.join(workdir, "strong.qcow2")
    pyqcrypt.convert(vol, dst, src_passphrase=b"pw", dst_passphrase=b"pw2", iterations=1000)
    with pyqcrypt.open(dst, passphrase=b"pw2") as img:
        assert img.read(0, 4000) == b"keep" * 1000
    pyqcrypt.convert(vol, os.path.join(workdir, "kept.qcow2"), keep_ciphertext=True)   # no opt-in


def test_cli_opt_in_and_warning(workdir):
    secret = write_file(os.path.join(workdir, "s"), b"pw")
    base = [sys.executable, "-m", "pyqcrypt", "create", "-q", "-f", "luks", "--object",
            "secret,id=s,file=%s" % secret, "-o", "key-secret=s,iter-time=10,cipher-mode=ecb"]
    proc = subprocess.run(base + [os.path.join(workdir, "e.luks"), "1M"], capture_output=True, text=True)
    assert proc.returncode == 1 and "--allow-insecure" in proc.stderr and "ECB" in proc.stderr
    proc = subprocess.run(base[:5] + ["--allow-insecure"] + base[5:] + [os.path.join(workdir, "e.luks"), "1M"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("pyqcrypt: warning: aes-ecb is insecure: ECB")


def test_pbkdf2_never_below_minimum(workdir):
    hdr = create_volume(os.path.join(workdir, "fast.luks"), 1 << 20, b"pw", iter_time_ms=1)
    assert hdr.mk_digest_iter >= 1000
    assert all(s.iterations >= 1000 for s in hdr.slots if s.active)
    with pytest.raises(pyqcrypt.Error, match="between 1000"):
        create_volume(os.path.join(workdir, "weak.luks"), 1 << 20, b"pw", iterations=999)
