# SPDX-License-Identifier: LGPL-2.1-or-later
"""Block status of an opened image, as QEMU 7.2's block layer reports it
to qemu-img map and compare: for a guest range, which of its first bytes
hold data, read as zeros, are allocated in this layer, and where the data
lies in which file.

Owns the per-layer status (block/io.c's bdrv_co_block_status over the
drivers qemu-img would use: qcow2 from its L2 entries, see
qcow2/block_status.py; raw from the file system's holes, SEEK_DATA and
SEEK_HOLE; a LUKS payload, whose driver reports no status, as data
throughout), the status through a backing chain as map sees it
(``map_entry``: the first layer with data or zeros, and its depth) and as
compare sees it (``chain_status``), and map's merging of adjacent entries
(``map_pairs``).  Sizes are QEMU's: rounded up to whole 512-byte sectors.
"""

from .image import RawImage
from .qcow2.block_status import SC_COMPRESSED, SC_NORMAL, SC_ZERO_ALLOC, SC_ZERO_PLAIN, WITH_OFFSET
from .qcow2.image import Qcow2Image
from .units import SECTOR, ceil_div

# QEMU's BDRV_BLOCK_* bits (compare -s compares them all)
DATA, ZERO, OFFSET_VALID, ALLOCATED, EOF, RECURSE = 0x01, 0x02, 0x04, 0x10, 0x20, 0x40


def qemu_size(img):
    """The image's size as QEMU sees it: whole sectors."""
    return ceil_div(img.size, SECTOR) * SECTOR


class Status:
    """The status of the first *length* bytes of a range: *flags*, and
    with OFFSET_VALID the *offset* in the file named *file*."""

    __slots__ = ("flags", "length", "offset", "file")

    def __init__(self, flags, length, offset=None, file=None):
        self.flags = flags
        self.length = length
        self.offset = offset
        self.file = file

    def __repr__(self):
        return "<Status 0x%x %d @%s %s>" % (self.flags, self.length, self.offset, self.file)


def layer_status(img, offset, length):
    """The status of one layer (no look at its backing file's data) at
    *offset*, for at most *length* bytes; length 0 with EOF at or past
    the end."""
    total = qemu_size(img)
    if offset >= total:
        return Status(EOF, 0)
    length = min(length, total - offset)
    if isinstance(img, Qcow2Image):
        st = _qcow2_status(img, offset, length)
    elif isinstance(img, RawImage):
        st = _raw_status(img, offset, length)
    else:                           # LUKS: QEMU's luks driver reports no status
        st = Status(DATA | ALLOCATED, length)
    if offset + st.length == total:
        st.flags |= EOF
    return st


def _qcow2_status(img, offset, length):
    align = SECTOR if img.crypt is not None else 1      # QEMU's request alignment
    start = offset - offset % align
    end = ceil_div(offset + length, align) * align
    kind, count, host = img.block_status_run(start, end - start)
    count = min(count - (offset - start), length)
    flags, where, name = 0, None, None
    if kind in WITH_OFFSET and img.crypt is None:
        flags, where = OFFSET_VALID, host + (offset - start)
        name = img.header.data_file if img.has_data_file else img.path
    if kind in (SC_ZERO_PLAIN, SC_ZERO_ALLOC):
        flags |= ZERO
    elif kind in (SC_NORMAL, SC_COMPRESSED):
        flags |= DATA
    if flags & DATA and flags & OFFSET_VALID and img.metadata_preallocated():
        # The file's holes are zeros, whatever the L2 entries say.
        flags |= RECURSE
        storage = img.data_file_storage()
        inner = _file_status(storage.data_runs, storage.size(), where, count)
        if inner.flags & EOF and (not inner.length or inner.flags & ZERO):
            flags |= ZERO
        else:
            flags |= inner.flags & ZERO
            count = inner.length
    if flags & (DATA | ZERO):
        flags |= ALLOCATED
    elif img.backing is None or offset >= qemu_size(img.backing):
        flags |= ZERO
    return Status(flags, count, where, name)


def _raw_status(img, offset, length):
    st = _file_status(img.data_runs, img.size, offset, length)
    st.flags = st.flags & ~EOF | OFFSET_VALID | ALLOCATED
    st.offset, st.file = offset, img.path
    return st


def _file_status(data_runs, size, offset, length):
    """Data or a hole in a file of *size* bytes whose ``data_runs`` are
    given, as file-posix reports them: a data extent runs to the next hole
    (or the end of the file); past the file's last byte (the rest of its
    last sector) is a hole; EOF when the answer reaches the end."""
    total = ceil_div(size, SECTOR) * SECTOR
    if offset >= total:
        return Status(EOF, 0)
    length = min(length, total - offset)
    flags = ZERO
    if offset < size:
        run = next(iter(data_runs(offset, min(length, size - offset))), None)
        if run is not None and run[0] == 0:
            flags, length = DATA, run[1]
        elif run is not None:
            length = run[0]
    return Status(flags | (EOF if offset + length == total else 0), length)


def _below(img):
    return getattr(img, "backing", None)


class MapEntry:
    """One entry of qemu-img map: guest [start, start+length) found at
    *depth* of the chain, with its flags and, when known, the *offset* in
    the file *file*."""

    __slots__ = ("start", "length", "depth", "present", "zero", "data", "offset", "file")

    def __init__(self, start, length, depth=0, present=False, zero=False, data=False, offset=None,
                 file=None):
        self.start, self.length, self.depth = start, length, depth
        self.present, self.zero, self.data = present, zero, data
        self.offset, self.file = offset, file

    def mergeable(self, nxt):
        """*nxt* continues this entry (qemu-img's entry_mergeable)."""
        if self.length == 0:
            return False
        same = (self.zero, self.data, self.depth, self.present, self.file, self.offset is None) == \
            (nxt.zero, nxt.data, nxt.depth, nxt.present, nxt.file, nxt.offset is None)
        return same and (self.offset is None or self.offset + self.length == nxt.offset)


def map_entry(img, offset, length):
    """The MapEntry at *offset* (at most *length* bytes): the first layer
    from the top whose status has data or zeros."""
    depth, layer = 0, img
    while True:
        st = layer_status(layer, offset, length)
        length = st.length
        if st.flags & (DATA | ZERO):
            break
        layer = _below(layer)
        if layer is None:
            st = Status(0, length)
            break
        depth += 1
    has_offset = bool(st.flags & OFFSET_VALID)
    return MapEntry(offset, length, depth, bool(st.flags & ALLOCATED), bool(st.flags & ZERO),
                    bool(st.flags & DATA), st.offset if has_offset else None,
                    st.file if has_offset else None)


def map_pairs(img, start, max_length=None):
    """qemu-img map's walk: (entry, next entry or None) for each merged
    entry from *start*, to be printed before the walk goes on (the human
    output changes the next entry's flags, as qemu-img does).  Past the
    end, one empty entry."""
    end = qemu_size(img)
    if max_length is not None:
        end = min(start + max_length, end)
    curr = MapEntry(start, 0)
    while curr.start + curr.length < end:
        pos = curr.start + curr.length
        nxt = map_entry(img, pos, end - pos)
        if curr.mergeable(nxt):
            curr.length += nxt.length
            continue
        if curr.length > 0:
            yield curr, nxt
        curr = nxt
    yield curr, None


def chain_status(img, offset, length):
    """The status of the whole chain at *offset*, as qemu-img compare asks
    for it (block/io.c's bdrv_block_status_above down to no base): the
    first layer that has the range allocated decides; a backing file that
    ends before the range reads as allocated zeros."""
    st = layer_status(img, offset, length)
    if st.length == 0 or st.flags & ALLOCATED:
        return st
    eof = offset + st.length if st.flags & EOF else None
    length = st.length
    layer = _below(img)
    while layer is not None:
        st = layer_status(layer, offset, length)
        if st.length == 0:
            st = Status(ZERO | ALLOCATED, length)
            break
        if st.flags & ALLOCATED:
            st.flags &= ~EOF
            break
        length = st.length
        layer = _below(layer)
    if offset + st.length == eof:
        st.flags |= EOF
    return st
