# SPDX-License-Identifier: LGPL-2.1-or-later
"""Writing over compressed clusters frees them as QEMU does.  qemu-img
packs several compressed clusters into one host cluster, whose refcount
then counts each of them; replacing one (a write, zeroes with or without
unmap, a discard, or commit emptying the top image) must drop the refcount
of every host cluster its bytes touched by one.  ``qemu-img check`` finds
no leak afterwards, and the image reads (through qemu-img) as the same
operations on a raw copy read."""

import os
import subprocess

import pytest

import pyqcrypt
from conftest import qemu_img

pytestmark = pytest.mark.interop
CS = 64 << 10


def _source(workdir, size=16 * CS):
    """Compressible data: each cluster a different short pattern."""
    path = os.path.join(workdir, "src.raw")
    with open(path, "wb") as fh:
        for i in range(size // CS):
            fh.write((b"cluster %03d " % i) * (CS // 12) + bytes(CS % 12))
    return path


def _compressed(workdir, src, ctype, extra=""):
    path = os.path.join(workdir, "c-%s.qcow2" % ctype)
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "compression_type=%s%s" % (ctype, extra), src, path)
    return path


def _ops(img, mirror, op):
    if op == "write":
        for offset, data in ((4 * CS + 100, b"x" * 3000), (0, b"y" * 3 * CS), (9 * CS - 10, b"z" * 20)):
            img.write(offset, data)
            mirror[offset:offset + len(data)] = data
    else:
        start, length = CS, 5 * CS
        if op == "zero":
            img.write_zeroes(start, length)
        elif op == "unmap":
            img.write_zeroes(start, length, unmap=True)
        else:
            img.discard(start, length)
        mirror[start:start + length] = bytes(length)


def _check_clean(path):
    proc = subprocess.run(["qemu-img", "check", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _same(path, mirror, workdir):
    raw = os.path.join(workdir, "mirror.raw")
    with open(raw, "wb") as fh:
        fh.write(mirror)
    proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, path],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
@pytest.mark.parametrize("op", ["write", "zero", "unmap", "discard"])
@pytest.mark.parametrize("extended_l2", [False, True], ids=["l2", "extended_l2"])
def test_replacing_compressed_clusters_leaks_nothing(workdir, ctype, op, extended_l2):
    src = _source(workdir)
    path = _compressed(workdir, src, ctype, ",extended_l2=on" if extended_l2 else "")
    info = subprocess.run(["qemu-img", "check", path], capture_output=True, text=True).stdout
    assert " 0.00% compressed" not in info and "compressed clusters" in info, info
    with open(src, "rb") as fh:
        mirror = bytearray(fh.read())
    with pyqcrypt.open(path, writable=True) as img:
        _ops(img, mirror, op)
    _check_clean(path)
    _same(path, mirror, workdir)


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
def test_commit_empties_compressed_clusters_without_leaks(workdir, compat):
    """Version 3 empties through discard; version 2 (no zero clusters)
    clears the entries itself."""
    src = _source(workdir)
    base = os.path.join(workdir, "base.qcow2")
    qemu_img("create", "-f", "qcow2", "-o", "compat=" + compat, base, str(16 * CS))
    top = os.path.join(workdir, "top.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "compat=%s,backing_file=base.qcow2,backing_fmt=qcow2" % compat,
             src, top)
    proc = subprocess.run([__import__("sys").executable, "-m", "pyqcrypt", "commit", top],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _check_clean(top)
    _check_clean(base)
    proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", src, top],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
