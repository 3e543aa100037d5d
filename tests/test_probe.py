# SPDX-License-Identifier: LGPL-2.1-or-later
"""Format probing (pyqcrypt.probe): one open and one read of a file's
first bytes decide qcow2, LUKS1, LUKS2 or raw, for ``open``, ``info`` and
``convert`` alike.  A file whose first bytes cannot be read is an error
naming it, never "raw": opening a qcow2 image or a LUKS volume as
plaintext after an EIO is how a conversion would copy ciphertext or
metadata as if it were the guest's data."""

import builtins
import errno
import os

import pytest

import pyqcrypt
from pyqcrypt import probe
from conftest import cs_format, qemu_img, write_file


@pytest.mark.parametrize("head,expected", [
    (b"QFI\xfb\x00\x00\x00\x03", "qcow2"),
    (b"QFI\xfb", "qcow2"),
    (b"LUKS\xba\xbe\x00\x01", "luks"),
    (b"LUKS\xba\xbe\x00\x02", "luks2"),
    (b"LUKS\xba\xbe\x00\x07", "luks"),          # unknown version: LUKS1's parser refuses it
    (b"LUKS\xba\xbe\x00", "luks"),              # too short for a version: never plaintext
    (b"QFI", "raw"),
    (b"", "raw"),
    (bytes(8), "raw"),
    (b"SKUL\xba\xbe\x00\x02", "raw"),            # LUKS2's secondary-header magic is not a volume
])
def test_sniff(head, expected):
    assert probe.sniff(head) == expected


def test_detect_on_real_images(workdir):
    q = os.path.join(workdir, "q.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", q, "1M")
    l1 = cs_format(workdir, "l1", b"probe")
    l2 = cs_format(workdir, "l2", b"probe", size=24 << 20, extra=("--type", "luks2", "--pbkdf", "pbkdf2"))
    raw = os.path.join(workdir, "r")
    write_file(raw, b"QF")
    assert [probe.detect(p) for p in (q, l1, l2, raw)] == ["qcow2", "luks", "luks2", "raw"]
    assert pyqcrypt.image.probe(l2) == "luks"


def test_unreadable_is_an_error_not_raw(workdir, monkeypatch):
    q = os.path.join(workdir, "q.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", q, "1M")
    for path in (os.path.join(workdir, "missing"), workdir):       # absent; a directory
        with pytest.raises(pyqcrypt.Error):
            probe.detect(path)
        with pytest.raises(pyqcrypt.Error):
            pyqcrypt.open(path)
    # One transient EIO on the first read of q's first bytes, whichever
    # call makes it: it must fail the open, not make q a raw image.
    failed = []
    real_pread, real_open = os.pread, builtins.open

    def eio_once():
        if not failed:
            failed.append(True)
            raise OSError(errno.EIO, "Input/output error")

    def pread(fd, n, off):
        if off == 0 and os.path.samestat(os.fstat(fd), os.stat(q)):
            eio_once()
        return real_pread(fd, n, off)

    def open_(file, mode="r", *a, **k):
        if isinstance(file, str) and os.path.abspath(file) == q and "r" in mode:
            eio_once()
        return real_open(file, mode, *a, **k)
    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(builtins, "open", open_)
    with pytest.raises(pyqcrypt.StorageError, match="Input/output error"):
        pyqcrypt.open(q)
    failed.clear()
    with pytest.raises(pyqcrypt.StorageError, match="Input/output error"):
        pyqcrypt.convert(q, os.path.join(workdir, "out.raw"), dst_format="raw")
    assert not os.path.exists(os.path.join(workdir, "out.raw"))


def test_open_reads_the_first_bytes_once(workdir, monkeypatch):
    """open() of a LUKS2 volume by probing decides its version from the
    one read (it read the magic three times before)."""
    l2 = cs_format(workdir, "l2", b"probe", size=24 << 20, extra=("--type", "luks2", "--pbkdf", "pbkdf2"))
    reads = []
    real = probe.read_head
    monkeypatch.setattr(probe, "read_head", lambda p, n: reads.append(p) or real(p, n))
    with pyqcrypt.open(l2, b"probe") as img:
        assert img.size > 0
    assert reads == [l2]
