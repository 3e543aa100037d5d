# SPDX-License-Identifier: LGPL-2.1-or-later
"""qemu-img compare's walk over two opened images (QEMU 7.2's img_compare):
ranges both chains report as zeros are skipped, ranges allocated on both
sides are compared 2 MiB at a time, a range allocated on one side only
must read as zeros there, and the excess of the larger image must read as
zeros.  A mismatch is reported at the start of the first differing
512-byte sector, as qemu-img reports it.  With *strict*, a size mismatch
or any difference in block status (pyqcrypt.block_status) is a mismatch.

Messages go to the *say* callback in qemu-img's words; the result is
qemu-img's exit status: 0 identical, 1 different; a failing block status
query raises CompareFailed with status 3, a failing read with 4.
"""

import concurrent.futures

from .block_status import ALLOCATED, ZERO, chain_status, qemu_size
from .conversion.compare import first_diff
from .conversion.copying import read_into
from .errors import Error
from .pipeline import Buffer
from .units import SECTOR

IO_BUF_SIZE = 2 << 20


class CompareFailed(Error):
    """A query or read failed during the comparison: *status* is qemu-img's
    exit status for it (3 block status, 4 read)."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class CompareRequest:
    """What to compare and how: images *a* and *b* (opened) named *name_a*
    and *name_b* in messages, *strict* (-s), *say* (one message line) and
    *tick* (progress: bytes done, total bytes)."""

    __slots__ = ("a", "b", "name_a", "name_b", "strict", "say", "tick")

    def __init__(self, a, b, name_a, name_b, strict=False, say=print, tick=None):
        self.a, self.b, self.name_a, self.name_b = a, b, name_a, name_b
        self.strict, self.say = strict, say
        self.tick = tick or (lambda done, total: None)


class _Walk:
    """The buffers and queries of one comparison."""

    def __init__(self, req):
        self.req = req
        self.buf_a, self.buf_b = Buffer(IO_BUF_SIZE), Buffer(IO_BUF_SIZE)
        self.zeros = Buffer(IO_BUF_SIZE)
        self.pool = concurrent.futures.ThreadPoolExecutor(1)

    def close(self):
        self.pool.shutdown()

    def status(self, img, name, offset, length):
        try:
            return chain_status(img, offset, length)
        except (Error, OSError) as exc:
            raise CompareFailed("Sector allocation test failed for %s (%s)" % (name, exc), 3) from None

    def read(self, img, name, offset, buf, n):
        """Guest bytes [offset, offset+n) into *buf*; past the image's own
        end (the rest of its last sector), zeros."""
        real = max(0, min(n, img.size - offset))
        try:
            read_into(img, offset, buf.view[:real], None)
        except (Error, OSError) as exc:
            raise CompareFailed("Error while reading offset %d of %s: %s" % (offset, name, exc),
                                4) from None
        if real < n:
            buf.view[real:n] = bytes(n - real)

    def differing_sector(self, offset, n):
        """The offset of the first differing sector of [offset, offset+n)
        of the two images, or None."""
        req = self.req
        # The two reads overlap (both release the GIL).
        pending = self.pool.submit(self.read, req.a, req.name_a, offset, self.buf_a, n)
        self.read(req.b, req.name_b, offset, self.buf_b, n)
        pending.result()
        diff = first_diff(self.buf_a, self.buf_b, n)
        return None if diff is None else offset + diff - diff % SECTOR

    def nonzero_sector(self, img, name, offset, n):
        """The offset of the first sector of [offset, offset+n) of *img*
        that is not all zeros, or None."""
        self.read(img, name, offset, self.buf_a, n)
        diff = first_diff(self.buf_a, self.zeros, n)
        return None if diff is None else offset + diff - diff % SECTOR


def compare_images(req):
    """Compare (see the module docstring); returns 0 or 1."""
    size_a, size_b = qemu_size(req.a), qemu_size(req.b)
    if req.strict and size_a != size_b:
        req.say("Strict mode: Image size mismatch!")
        return 1
    walk = _Walk(req)
    try:
        return _walk(req, walk, size_a, size_b)
    finally:
        walk.close()


def _walk(req, walk, size_a, size_b):
    common, total = min(size_a, size_b), max(size_a, size_b)
    offset = 0
    while offset < common:
        st_a = walk.status(req.a, req.name_a, offset, size_a - offset)
        st_b = walk.status(req.b, req.name_b, offset, size_b - offset)
        chunk = min(st_a.length, st_b.length)
        if req.strict and st_a.flags != st_b.flags:
            req.say("Strict mode: Offset %d block status mismatch!" % offset)
            return 1
        alloc_a, alloc_b = st_a.flags & ALLOCATED, st_b.flags & ALLOCATED
        bad = None
        if st_a.flags & st_b.flags & ZERO:
            pass
        elif alloc_a == alloc_b:
            if alloc_a:
                chunk = min(chunk, IO_BUF_SIZE)
                bad = walk.differing_sector(offset, chunk)
        else:
            chunk = min(chunk, IO_BUF_SIZE)
            img, name = (req.a, req.name_a) if alloc_a else (req.b, req.name_b)
            bad = walk.nonzero_sector(img, name, offset, chunk)
        if bad is not None:
            req.say("Content mismatch at offset %d!" % bad)
            return 1
        offset += chunk
        req.tick(chunk, total)
    if size_a != size_b:
        req.say("Warning: Image size mismatch!")
        img, name = (req.a, req.name_a) if size_a > size_b else (req.b, req.name_b)
        while offset < total:
            st = walk.status(img, name, offset, total - offset)
            chunk = st.length
            if st.flags & ALLOCATED and not st.flags & ZERO:
                chunk = min(chunk, IO_BUF_SIZE)
                bad = walk.nonzero_sector(img, name, offset, chunk)
                if bad is not None:
                    req.say("Content mismatch at offset %d!" % bad)
                    return 1
            offset += chunk
            req.tick(chunk, total)
    req.say("Images are identical.")
    return 0
