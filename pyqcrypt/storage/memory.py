# SPDX-License-Identifier: LGPL-2.1-or-later
"""Byte stores that stand in for a Storage, and windows onto one.

``MemoryStorage`` is a Storage-like buffer (a header built in memory before
it is written anywhere); ``Region`` is a bounded window (offset, length)
onto a Storage, such as the LUKS header area of a volume or the FDE
clusters of a qcow2 image; ``zero_fill`` writes zeros through any writer
in bounded chunks.
"""

from ..errors import Error, FormatError

_ZEROS = bytes(4 << 20)


def zero_fill(write, offset, length):
    """Zeros over [offset, offset+length) through *write(offset, data)*
    (a Storage's pwrite or an image's write), in bounded chunks."""
    pos = 0
    while pos < length:
        n = min(length - pos, len(_ZEROS))
        write(offset + pos, memoryview(_ZEROS)[:n])
        pos += n


class MemoryStorage:
    """A Storage-like byte buffer (for building a header region in memory)."""

    path = "<memory>"
    is_block_device = False

    def __init__(self, size):
        self.buf = bytearray(size)

    def size(self):
        return len(self.buf)

    def pread(self, offset, length, what="data"):
        return bytes(self.buf[offset:offset + length])

    def preadinto(self, buf, offset, what="data"):
        view = memoryview(buf).cast("B")
        view[:] = self.buf[offset:offset + len(view)]

    def pwrite(self, offset, data):
        data = memoryview(data).cast("B")
        self.buf[offset:offset + len(data)] = data

    def sync(self):
        pass


class Region:
    """A bounded window onto a Storage: offsets are relative to its start."""

    def __init__(self, storage, offset, length):
        if offset < 0 or length < 0:
            raise Error("bad region (%d, %d)" % (offset, length))
        self.storage = storage
        self.offset = offset
        self.length = length

    @property
    def path(self):
        return self.storage.path

    def _check(self, offset, length, what):
        if offset < 0 or length < 0 or offset + length > self.length:
            raise FormatError("%s (%d bytes at %d) lies outside the %d-byte header region"
                              % (what, length, offset, self.length), path=self.path,
                              offset=self.offset + max(offset, 0))

    def read(self, offset, length, what="data"):
        self._check(offset, length, what)
        return self.storage.pread(self.offset + offset, length, what)

    def readinto(self, buf, offset, what="data"):
        self._check(offset, memoryview(buf).nbytes, what)
        return self.storage.preadinto(buf, self.offset + offset, what)

    def write(self, offset, data, what="data"):
        self._check(offset, memoryview(data).nbytes, what)
        self.storage.pwrite(self.offset + offset, data)

    def sync(self):
        self.storage.sync()

    def __repr__(self):
        return "<Region %s +%d, %d bytes>" % (self.storage.path, self.offset, self.length)
