# SPDX-License-Identifier: LGPL-2.1-or-later
"""Images dropped without close(), and images used after close().

Like Python's own file objects, an image that is garbage-collected while
open flushes what it cached (qcow2 L2 tables and refcounts, in the same
order as close()), releases its locks, closes its files and says so with a
ResourceWarning.  QEMU must then read the bytes back and be able to take
the write lock.  Any use after close() is a pyqcrypt.Error; a second
close() does nothing.
"""

import gc
import os
import warnings

import pytest

import pyqcrypt

from conftest import qemu_img, qemu_io, qemu_secret

pytestmark = pytest.mark.interop

PW = b"close pass"
SIZE = 8 << 20
# (offset, length, pattern): unaligned, crossing clusters, allocating an L2 table.
WRITES = [(70000, 200000, 0x5A), (5 << 20, 4096, 0x6B), ((5 << 20) + 4096 + 7, 1000, 0x7C)]


def _make(workdir, kind):
    """(path, passphrase, qemu-io target, qemu-io objects, qemu-io fmt)."""
    obj = qemu_secret(workdir, PW)
    if kind == "qcow2":
        path = os.path.join(workdir, "i.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", path, str(SIZE))
        return path, None, path, (), "qcow2"
    if kind == "qcow2-luks":
        path = os.path.join(workdir, "i.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", "--object", obj, "-o",
                 "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", path, str(SIZE))
        return path, PW, "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % path, [obj], None
    if kind == "luks":
        path = os.path.join(workdir, "i.luks")
        pyqcrypt.create(path, SIZE, "luks", passphrase=PW, iterations=1000)
        return path, PW, "driver=luks,file.filename=%s,key-secret=sec0" % path, [obj], None
    path = os.path.join(workdir, "i.raw")
    with open(path, "wb") as fh:
        fh.truncate(SIZE)
    return path, None, path, (), "raw"


KINDS = ["qcow2", "qcow2-luks", "luks", "raw"]


def _qemu_reads_back(target, objects, fmt, workdir):
    # The data, through qemu-img convert -U (no lock needed) ...
    raw = os.path.join(workdir, "back.raw")
    src = ["-f", fmt, target] if fmt else ["--image-opts", target]
    args = ["convert", "-U", "-O", "raw"]
    for obj in objects:
        args += ["--object", obj]
    qemu_img(*args, *src, raw)
    with open(raw, "rb") as fh:
        data = fh.read()
    os.unlink(raw)
    for off, n, pat in WRITES:
        assert data[off:off + n] == bytes([pat]) * n, hex(off)
    # ... then with qemu-io, which must get the write lock (ours is gone).
    cmds = ["read -P 0x%x %d %d" % (pat, off, n) for off, n, pat in WRITES]
    cmds.append("write -P 0x01 0 512")
    out = qemu_io(target, *cmds, objects=objects, fmt=fmt)
    assert "Pattern verification failed" not in out.stdout + out.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_writable_image_keeps_its_writes(workdir, kind):
    path, pw, target, objects, fmt = _make(workdir, kind)
    img = pyqcrypt.open(path, passphrase=pw, writable=True)
    for off, n, pat in WRITES:
        img.write(off, bytes([pat]) * n)
    with pytest.warns(ResourceWarning, match="unclosed image"):
        del img
        gc.collect()
    _qemu_reads_back(target, objects, fmt, workdir)
    if kind.startswith("qcow2"):
        check = ["--object", objects[0], "--image-opts", target] if objects else ["-f", fmt, target]
        out = qemu_img("check", *check).stdout.decode()
        assert "No errors were found" in out, out


@pytest.mark.parametrize("kind", ["qcow2", "qcow2-luks"])
def test_dropped_readonly_image_releases_its_lock(workdir, kind):
    """A read-only qcow2 open refuses to share the write permission (as
    QEMU does); dropping it must give that back."""
    path, pw, target, objects, fmt = _make(workdir, kind)
    with pyqcrypt.open(path, passphrase=pw, writable=True) as img:
        for off, n, pat in WRITES:
            img.write(off, bytes([pat]) * n)
    img = pyqcrypt.open(path, passphrase=pw)
    assert img.read(WRITES[0][0], 10) == bytes([WRITES[0][2]]) * 10
    proc = qemu_io(target, "write -P 0x01 0 512", objects=objects, fmt=fmt, check=False)
    assert proc.returncode != 0 and "lock" in proc.stdout + proc.stderr
    with pytest.warns(ResourceWarning, match="unclosed image"):
        del img
        gc.collect()
    _qemu_reads_back(target, objects, fmt, workdir)


def test_failed_open_warns_nothing(workdir):
    """A wrong passphrase leaves no half-open image behind to warn about."""
    path, _, _, _, _ = _make(workdir, "qcow2-luks")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(pyqcrypt.WrongPassphrase):
            pyqcrypt.open(path, passphrase=b"wrong", writable=True)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
    with pyqcrypt.open(path, passphrase=PW, writable=True) as img:   # and no lock is left
        img.write(0, b"x")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("writable", [True, False], ids=["rw", "ro"])
def test_use_after_close_is_an_error(workdir, kind, writable):
    path, pw, _, _, _ = _make(workdir, kind)
    img = pyqcrypt.open(path, passphrase=pw, writable=writable)
    img.read(0, 512)
    img.close()
    img.close()                                 # harmless
    calls = {
        "read": lambda: img.read(0, 512),
        "readinto": lambda: img.readinto(0, bytearray(512)),
        "write": lambda: img.write(0, b"x" * 512),
        "flush": img.flush,
    }
    if hasattr(img, "is_allocated"):
        calls["is_allocated"] = lambda: img.is_allocated(0, 4096)
    for name, call in calls.items():
        if name == "readinto" and not hasattr(img, "readinto"):
            continue
        with pytest.raises(pyqcrypt.Error, match="closed"):
            call()
    with img:                                   # a context manager exit after close is harmless too
        pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = None                              # closed: no warning when dropped
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
