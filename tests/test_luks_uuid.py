# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt luksUUID --uuid``: a UUID pyqcrypt sets is the one cryptsetup
reads back (luksUUID and luksDump), the passphrase still opens the volume
with cryptsetup, and a UUID cryptsetup sets is the one pyqcrypt reads; bad
UUIDs, non-LUKS files and missing devices get cryptsetup's exit codes and
messages.  LUKS1, LUKS2 and detached headers; qcow2-luks images refused."""

import os
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import cs_format, qemu_img, tool, write_file

PW = b"uuid-pass"
NEW = "0b9d8f6e-25c4-4a6f-9c1e-3f7a2d5b8c41"


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *args], capture_output=True,
                          stdin=subprocess.DEVNULL)


def _cs(*args):
    return subprocess.run([tool("cryptsetup"), *args], capture_output=True, stdin=subprocess.DEVNULL)


def _volume(workdir, version, name="v"):
    if version == 1:
        return cs_format(workdir, name, PW)
    return cs_format(workdir, name, PW, size=24 << 20, extra=("--type", "luks2", "--pbkdf", "pbkdf2"))


def _luks2_copies(path):
    """(seqid, uuid) of the primary and the secondary LUKS2 binary header."""
    with open(path, "rb") as fh:
        primary = fh.read(4096)
        hdr_size = struct.unpack_from(">Q", primary, 8)[0]
        fh.seek(hdr_size)
        secondary = fh.read(4096)
    return [(struct.unpack_from(">Q", h, 16)[0], h[168:208].rstrip(b"\0").decode()) for h in
            (primary, secondary)]


@pytest.mark.parametrize("version", [1, 2])
def test_uuid_set_by_pyqcrypt_is_read_by_cryptsetup(workdir, version):
    vol = _volume(workdir, version)
    before = _luks2_copies(vol) if version == 2 else None
    proc = _pyq("luksUUID", "--uuid", NEW.upper(), vol)
    assert proc.returncode == 0, proc.stderr
    assert _cs("luksUUID", vol).stdout.decode() == NEW + "\n"
    dump = _cs("luksDump", vol).stdout.decode()
    assert "UUID:          \t%s\n" % NEW in dump
    assert _cs("open", "--test-passphrase", "-d", vol + ".key", vol).returncode == 0
    if version == 2:            # both binary copies, one sequence number further
        after = _luks2_copies(vol)
        assert after == [(before[0][0] + 1, NEW)] * 2


@pytest.mark.parametrize("version", [1, 2])
def test_uuid_set_by_cryptsetup_is_read_by_pyqcrypt(workdir, version):
    vol = _volume(workdir, version)
    assert _cs("luksUUID", "--uuid", NEW, vol).returncode == 0
    assert _pyq("luksUUID", vol).stdout.decode() == NEW + "\n"
    assert _pyq("test-passphrase", "--key-file", vol + ".key", vol).returncode == 0


@pytest.mark.parametrize("version", [1, 2])
def test_detached_header_alone_is_changed(workdir, version):
    hdr = os.path.join(workdir, "hdr")
    with open(hdr, "wb") as fh:
        fh.truncate(16 << 20)
    extra = ("--type", "luks2", "--pbkdf", "pbkdf2") if version == 2 else ()
    vol = cs_format(workdir, "data", PW, header=hdr, extra=extra)
    with open(vol, "rb") as fh:
        data = fh.read()
    missing = os.path.join(workdir, "no-such-device")   # cryptsetup does not open it either
    assert _pyq("luksUUID", "--header", hdr, "--uuid", NEW, missing).returncode == 0
    assert _cs("luksUUID", hdr).stdout.decode() == NEW + "\n"
    assert _pyq("luksUUID", "--header", hdr, missing).stdout.decode() == NEW + "\n"
    with open(vol, "rb") as fh:
        assert fh.read() == data
    assert _cs("open", "--test-passphrase", "--header", hdr, "-d", vol + ".key", vol).returncode == 0


@pytest.mark.parametrize("uuid", ["", "bad", NEW + "0", NEW[:-1], NEW.replace("-", ""),
                                  "{%s}" % NEW, "g" + NEW[1:], " " + NEW[1:], NEW + "\n"])
def test_bad_uuid_as_cryptsetup(workdir, uuid):
    src = _volume(workdir, 1)
    for extra in ([], ["-v"]):
        a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
        shutil.copyfile(src, a)
        shutil.copyfile(src, b)
        theirs, ours = _cs("luksUUID", *extra, "--uuid", uuid, a), _pyq("luksUUID", *extra, "--uuid", uuid, b)
        assert (ours.returncode, ours.stdout, ours.stderr) == \
            (theirs.returncode, theirs.stdout, theirs.stderr), (uuid, extra)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()       # neither touched the header


def test_not_luks_and_missing_device_as_cryptsetup(workdir):
    plain = write_file(os.path.join(workdir, "plain"), bytes(1 << 20))
    missing = os.path.join(workdir, "missing")
    for dev in (plain, missing):
        for uuid in (NEW, "bad"):
            theirs, ours = _cs("luksUUID", "--uuid", uuid, dev), _pyq("luksUUID", "--uuid", uuid, dev)
            assert (ours.returncode, ours.stdout, ours.stderr) == \
                (theirs.returncode, theirs.stdout, theirs.stderr), (dev, uuid)
    with open(plain, "rb") as fh:
        assert fh.read() == bytes(1 << 20)


def test_qcow2_luks_refused_in_words(workdir):
    img = os.path.join(workdir, "img.qcow2")
    key = write_file(os.path.join(workdir, "pw"), PW)
    qemu_img("create", "-f", "qcow2", "--object", "secret,id=s0,file=%s" % key,
             "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", img, "1M")
    with open(img, "rb") as fh:
        before = fh.read()
    proc = _pyq("luksUUID", "--uuid", NEW, img)
    assert proc.returncode == 1
    assert b"qcow2 image" in proc.stderr
    assert _cs("luksUUID", "--uuid", NEW, img).returncode == 1     # cryptsetup: not LUKS either
    with open(img, "rb") as fh:
        assert fh.read() == before


@pytest.mark.parametrize("version", [1, 2])
def test_locked_image_is_busy(workdir, version):
    from pyqcrypt.locks import lock_image
    from pyqcrypt.storage import Storage
    vol = _volume(workdir, version)
    before = _cs("luksUUID", vol).stdout
    with Storage(vol, writable=True) as st:
        lock_image(st, mode="exclusive")            # as a QEMU writing the volume
        proc = _pyq("luksUUID", "-v", "--uuid", NEW, vol)
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == b"Command failed with code -5 (device already exists or device is busy).\n"
    assert b"in use" in proc.stderr
    assert _cs("luksUUID", vol).stdout == before
