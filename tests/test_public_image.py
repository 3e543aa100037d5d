# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt.open`` returns a ``pyqcrypt.Image``: the block-device
interface and nothing else, whatever the format (qcow2-luks, LUKS1, LUKS2,
raw).

Its public names are exactly the documented ones (the format's tables,
caches, keys and files stay behind underscores); every method passes its
arguments through, checked by reading what it wrote back with the real
tools (``qemu-img compare`` for qcow2-luks, LUKS1 and raw; LUKS2, which
QEMU 7.2 cannot open, against cryptsetup's volume key and an independent
decryption); ``with`` gives the Image itself; use after close is an
Error; its repr names format and path but no secret; dropped open, it
warns once with a ResourceWarning and is closed (its lock is gone).
"""

import gc
import json
import os
import warnings

import pytest

import pyqcrypt

from conftest import cs_format, qemu_img, qemu_secret
from luks2util import make_luks2, pyca_payload

pytestmark = pytest.mark.interop

PW = b"public image pass"
SIZE = 4 << 20
CLUSTER = 64 << 10
INTERFACE = {"size", "writable", "closed", "format", "path", "read", "readinto", "write",
             "write_zeroes", "discard", "flush", "close"}
KINDS = ["qcow2-luks", "luks", "luks2", "raw"]
FORMAT = {"qcow2-luks": "qcow2", "luks": "luks", "luks2": "luks2", "raw": "raw"}


class Made:
    """An image of *kind* in *workdir*: its path, passphrase, and how qemu
    names it (None for LUKS2); *luks2* is luks2util's Volume."""

    def __init__(self, workdir, kind):
        self.workdir, self.kind, self.luks2 = workdir, kind, None
        self.obj = qemu_secret(workdir, PW)
        self.passphrase = None if kind == "raw" else PW
        if kind == "qcow2-luks":
            self.path = os.path.join(workdir, "i.qcow2")
            qemu_img("create", "-q", "-f", "qcow2", "--object", self.obj, "-o",
                     "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
                     self.path, str(SIZE))
            self.opts = "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % self.path
        elif kind == "luks":
            self.path = cs_format(workdir, "i.luks", PW)
            self.opts = "driver=luks,file.filename=%s,key-secret=sec0" % self.path
        elif kind == "luks2":
            self.luks2 = make_luks2(workdir, "i.luks2", size=8 << 20, passphrase=PW)
            self.path, self.opts = self.luks2.vol, None
        else:
            self.path = os.path.join(workdir, "i.raw")
            with open(self.path, "wb") as fh:
                fh.truncate(SIZE)
            self.opts = None

    def open(self, writable=False):
        return pyqcrypt.open(self.path, passphrase=self.passphrase, writable=writable)

    def assert_holds(self, model):
        """The real tools read *model* (bytes) back from the image."""
        if self.luks2 is not None:
            assert pyca_payload(self.luks2)[:len(model)] == model
            return
        ref = os.path.join(self.workdir, "model.raw")
        with open(ref, "wb") as fh:
            fh.write(model)
        if self.opts is None:
            out = qemu_img("compare", "-f", "raw", "-F", "raw", self.path, ref)
        else:
            out = qemu_img("compare", "--object", self.obj, "--image-opts", self.opts,
                           "driver=raw,file.filename=%s" % ref)
        assert b"Images are identical" in out.stdout, out.stdout

    def qcow2_allocated(self):
        """qemu-img check's count of allocated guest clusters."""
        out = qemu_img("check", "--output=json", "--object", self.obj, "--image-opts", self.opts)
        return json.loads(out.stdout)["allocated-clusters"]


@pytest.fixture(params=KINDS)
def made(request, workdir):
    return Made(workdir, request.param)


def test_only_the_interface_is_public(made):
    with made.open() as img:
        assert type(img) is pyqcrypt.Image
        assert {name for name in dir(img) if not name.startswith("_")} == INTERFACE
        assert not hasattr(img, "__dict__")
        with pytest.raises(AttributeError):
            img.header = None           # __slots__: nothing can be hung on it either
        assert img.format == FORMAT[made.kind]
        assert img.path == made.path
        assert not img.writable and not img.closed


def test_every_method_reaches_the_image(made):
    """write, write_zeroes (with and without unmap), discard, read,
    readinto and flush, then the close of the with block: qemu-img (or
    for LUKS2 an independent decryption) reads the result."""
    with made.open(writable=True) as img:
        size = img.size
        assert img.writable and size >= 2 << 20
        model = bytearray(os.urandom(size))
        img.write(0, bytes(model))                               # the whole payload
        edits = [(70001, bytes([0x5A]) * 100000), (size - 777, b"\x6B" * 777)]
        for off, data in edits:
            img.write(off, memoryview(bytearray(data)))
            model[off:off + len(data)] = data
        img.write_zeroes(300000, 5000)
        model[300000:305000] = bytes(5000)
        img.write_zeroes(2 * CLUSTER, 3 * CLUSTER + 10, unmap=True)
        model[2 * CLUSTER:5 * CLUSTER + 10] = bytes(3 * CLUSTER + 10)
        # qcow2 frees the clusters wholly inside (they read as zeros); LUKS
        # and raw keep every byte (discard is advice)
        img.discard((1 << 20) - 1000, 2 * CLUSTER + 2000)
        if made.kind == "qcow2-luks":
            model[1 << 20:(1 << 20) + 2 * CLUSTER] = bytes(2 * CLUSTER)
        img.flush()
        assert img.read(0, size) == bytes(model)
        buf = bytearray(3000)
        assert img.readinto(69000, buf) is buf
        assert buf == model[69000:72000]
        assert img.read(size - 1, 1) == model[-1:]
    assert img.closed
    made.assert_holds(bytes(model))
    if made.kind == "qcow2-luks":       # unmap and discard freed 3 and 2 whole clusters
        assert made.qcow2_allocated() == SIZE // CLUSTER - 3 - 2


def test_with_gives_the_image_and_closes_it(made):
    img = made.open()
    with img as entered:
        assert entered is img
        assert not img.closed
    assert img.closed
    img.close()                                 # a second close does nothing


def test_read_only_refuses_writes(made):
    with made.open() as img:
        with pytest.raises(pyqcrypt.Error):
            img.write(0, b"x" * 512)


def test_use_after_close_is_an_error(made):
    img = made.open(writable=True)
    img.close()
    calls = {"read": lambda: img.read(0, 512), "readinto": lambda: img.readinto(0, bytearray(512)),
             "write": lambda: img.write(0, b"x" * 512), "write_zeroes": lambda: img.write_zeroes(0, 512),
             "discard": lambda: img.discard(0, 512), "flush": img.flush}
    for name, call in calls.items():
        with pytest.raises(pyqcrypt.Error, match="closed"):
            call()
    assert img.closed and img.format == FORMAT[made.kind] and img.size > 0
    assert "closed" in repr(img)


def test_repr_names_format_and_path_not_the_secret(made):
    with made.open(writable=True) as img:
        text = repr(img)
    assert text.startswith("<pyqcrypt.Image %s " % FORMAT[made.kind]), text
    assert repr(made.path) in text and "writable" in text
    assert PW.decode() not in text and PW.hex() not in text


def test_dropped_open_warns_once_and_closes(made):
    img = made.open(writable=True)
    img.write(4096, b"\x42" * 512)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del img
        gc.collect()
    dropped = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(dropped) == 1 and "unclosed image %s" % made.path in str(dropped[0].message), caught
    with made.open(writable=True) as again:          # the write lock was given back
        assert again.read(4096, 512) == b"\x42" * 512


def test_internal_opener_keeps_the_format_object(workdir):
    """pyqcrypt's own code (conversion, the CLI) opens through
    pyqcrypt.image.open_image and gets the format's object, not the Image."""
    made = Made(workdir, "raw")
    with pyqcrypt.image.open_image(made.path) as inner:
        assert type(inner) is not pyqcrypt.Image and hasattr(inner, "is_allocated")
