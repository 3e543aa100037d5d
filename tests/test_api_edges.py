# SPDX-License-Identifier: LGPL-2.1-or-later
"""The Python API and create under real use (issue 21): empty images as
qemu-img makes them, sizes past what a file can hold, and passphrases QEMU
cannot take refused where only QEMU could use the image."""

import os
import subprocess
import sys

import pytest

import pyqcrypt
from conftest import qemu_img, qemu_secret, write_file

PW = b"edges api passphrase"


def pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + [str(a) for a in args],
                          capture_output=True, text=True)


@pytest.mark.interop
def test_empty_qcow2_is_clean_and_as_qemu_img_makes_it(workdir):
    ours, theirs = os.path.join(workdir, "o.qcow2"), os.path.join(workdir, "t.qcow2")
    assert pyq("create", "-f", "qcow2", ours, "0").returncode == 0
    qemu_img("create", "-f", "qcow2", theirs, "0")
    qemu_img("check", ours)                               # exit 0: no leaked cluster
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    enc = os.path.join(workdir, "e.qcow2")
    pyqcrypt.create(enc, 0, format="qcow2", passphrase=PW, iterations=1000)
    obj = qemu_secret(workdir, PW, "s")
    qemu_img("check", "--object", obj, "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % enc)
    empty = write_file(os.path.join(workdir, "empty.raw"), b"")
    out = os.path.join(workdir, "c.qcow2")
    assert pyq("convert", "-O", "qcow2", empty, out).returncode == 0
    qemu_img("check", out)
    with pyqcrypt.open(out, writable=True) as img:
        assert img.size == 0 and img.read(0, 0) == b""


def test_sizes_no_file_can_hold_are_errors(workdir):
    for fmt, opts in (("luks", "key-secret=s,iter-time=10"), ("qcow2", None)):
        path = os.path.join(workdir, "big." + fmt)
        args = ["create", "-f", fmt, "--object", qemu_secret(workdir, PW, "s")]
        proc = pyq(*args, *(["-o", opts] if opts else []), path, str((1 << 63) - 512))
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert "too large" in proc.stderr.lower(), proc.stderr
        assert not [n for n in os.listdir(workdir) if n.startswith("big.")]


@pytest.mark.interop
def test_passphrases_qemu_cannot_take_are_refused_for_qcow2(workdir):
    binary = b"a\0b"
    path = os.path.join(workdir, "n.qcow2")
    for bad in (binary, b"\xff\xfe", "caf\u00e9".encode("latin-1")):
        with pytest.raises(pyqcrypt.Error, match="not valid UTF-8"):
            pyqcrypt.create(path, 1 << 20, format="qcow2", passphrase=bad, iterations=1000)
        assert not os.path.exists(path)
    # a UTF-8 passphrase beyond ASCII works, and QEMU opens the image with it
    good = "caf\u00e9 \u65e5\u672c".encode("utf-8")
    pyqcrypt.create(path, 1 << 20, format="qcow2", passphrase=good, iterations=1000)
    obj = qemu_secret(workdir, good, "g")
    qemu_img("check", "--object", obj, "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=g" % path)
    # add-key of a binary key to the qcow2 image: refused, nothing changed
    kf, bad = write_file(os.path.join(workdir, "k"), good), write_file(os.path.join(workdir, "b"),
                                                                       binary)
    before = open(path, "rb").read()
    proc = pyq("add-key", "--key-file", kf, "--pbkdf-force-iterations", "1000", path, bad)
    assert proc.returncode == 1 and "not valid UTF-8" in proc.stderr, proc.stderr
    assert open(path, "rb").read() == before
    # a raw LUKS volume takes binary keys, as cryptsetup does
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, 1 << 20, format="luks", passphrase=binary, iterations=1000)
    with pyqcrypt.open(vol, passphrase=binary):
        pass


@pytest.mark.interop
def test_info_of_a_luks_volume_with_a_partial_last_sector_matches_qemu_img(workdir):
    import json
    vol = os.path.join(workdir, "odd.luks")
    obj = qemu_secret(workdir, PW, "s")
    qemu_img("create", "-f", "luks", "--object", obj, "-o", "key-secret=s,iter-time=10", vol, "1M")
    with open(vol, "ab") as fh:
        fh.write(b"\0" * 300)
    ours = json.loads(pyq("info", "--output", "json", vol).stdout)
    theirs = json.loads(qemu_img("info", "--output", "json", vol).stdout)
    assert ours["virtual-size"] == theirs["virtual-size"] == (1 << 20) + 512
