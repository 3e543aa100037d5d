# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 refcounts: the table, the blocks, and cluster allocation.

Allocation appends: new clusters (data, L2 tables, refcount blocks, a
grown refcount table) always go past both the last cluster in use and the
end of the file, so nothing pyqcrypt allocates can overlap bytes that
exist, and a crash at any point leaves at worst leaked clusters.

Refcount blocks are cached and written back by ``flush()``; the image calls
it, and syncs, before it writes any L2 or L1 entry that points at a new
cluster (refcounts before references).  A new refcount block is synced
before the table entry that lists it.  Widths of 1 to 64 bits are
supported: entries narrower than a byte are packed least-significant bit
first, wider ones are big-endian.

``MetadataMap`` holds the cluster ranges that hold metadata (QEMU's
"overlap check"): built and validated once when an image is opened for
writing, extended as L2 tables, refcount blocks and tables are allocated,
and asked (by bisection, once per allocation or in-place write) whether a
data write would land on metadata.
"""

import bisect
import struct

from ..errors import FormatError
from ..units import ceil_div
from .entries import OFFSET_MASK
from .header import MAX_REFTABLE_BYTES

# How far past the end of the file refcounts may claim clusters before an
# image is refused for writing (the larger of this and the file size): a
# crash can leak a few clusters there, a hostile block claims terabytes.
MAX_REFCOUNTED_PAST_EOF = 256 << 20


class MetadataMap:
    """Sorted, disjoint cluster ranges [start, end) that hold metadata,
    each with a description for error messages."""

    def __init__(self, cluster_size):
        self.cs = cluster_size
        self._starts = []
        self._ends = []
        self._what = []

    def _clusters(self, offset, length):
        first = offset // self.cs
        return first, max(first + 1, ceil_div(offset + length, self.cs))

    def find(self, offset, length):
        """The metadata range overlapping bytes [offset, offset+length) as
        (offset, length, description), or None."""
        first, end = self._clusters(offset, length)
        i = bisect.bisect_left(self._starts, end) - 1
        if i >= 0 and self._ends[i] > first:
            return (self._starts[i] * self.cs, (self._ends[i] - self._starts[i]) * self.cs,
                    self._what[i])
        return None

    def add(self, offset, length, what):
        """Record new metadata; it must not overlap any already recorded
        (a FormatError otherwise, before anything is written there)."""
        hit = self.find(offset, length)
        if hit is not None:
            raise FormatError("new %s at 0x%x would overlap the %s at 0x%x"
                              % (what, offset, hit[2], hit[0]), field=what, offset=offset)
        first, end = self._clusters(offset, length)
        i = bisect.bisect_left(self._starts, first)
        self._starts.insert(i, first)
        self._ends.insert(i, end)
        self._what.insert(i, what)

    def __len__(self):
        return len(self._starts)

    @classmethod
    def build(cls, cluster_size, ranges, path=None):
        """A map of *ranges*, an iterable of (offset, length, description,
        field, field_offset) where field/field_offset name what points at
        the range.  Any two ranges sharing a cluster are a FormatError
        naming the later one's pointer (two L1 entries naming one L2 table,
        a refcount block on the L1 table, ...)."""
        cs = cluster_size
        items = sorted(((off // cs, max(off // cs + 1, ceil_div(off + length, cs)), what, fld, where)
                        for off, length, what, fld, where in ranges), key=lambda r: r[:2])
        m = cls(cs)
        prev = None                 # the range reaching furthest so far
        for item in items:
            first, end, what, fld, where = item
            if prev is not None and first < prev[1]:
                raise FormatError("%s at 0x%x overlaps the %s at 0x%x"
                                  % (what, first * cs, prev[2], prev[0] * cs),
                                  field=fld, offset=where, path=path)
            m._starts.append(first)
            m._ends.append(end)
            m._what.append(what)
            prev = item
        return m


def get_refcount(block, i, bits):
    """Refcount *i* of a refcount block of *bits*-bit entries: below a byte,
    packed from the least significant bit up; from 8 bits, big-endian."""
    if bits < 8:
        return (block[i * bits // 8] >> (i * bits % 8)) & ((1 << bits) - 1)
    n = bits // 8
    return int.from_bytes(block[i * n:(i + 1) * n], "big")


def set_refcount(block, i, value, bits):
    """Store refcount *i* (the caller checks that *value* fits)."""
    if bits < 8:
        shift = i * bits % 8
        mask = ((1 << bits) - 1) << shift
        block[i * bits // 8] = (block[i * bits // 8] & ~mask & 0xFF) | (value << shift)
    else:
        n = bits // 8
        block[i * n:(i + 1) * n] = value.to_bytes(n, "big")


class Refcounts:
    def __init__(self, storage, header, write_header):
        self.st = storage
        self.hdr = header
        self._write_header = write_header
        self.cs = header.cluster_size
        self.bits = header.refcount_bits
        self.per_block = self.cs * 8 // self.bits
        raw = storage.pread(header.refcount_table_offset,
                            header.refcount_table_clusters * self.cs, "refcount table")
        self.table = list(struct.unpack(">%dQ" % (len(raw) // 8), raw))
        size = storage.size()
        for i, entry in enumerate(self.table):
            where = header.refcount_table_offset + 8 * i
            off = entry & OFFSET_MASK
            if entry != off:
                raise FormatError("refcount table entry %d (0x%x) has reserved bits set or is not "
                                  "cluster-aligned" % (i, entry), field="refcount table",
                                  offset=where, path=storage.path)
            if off and (off % self.cs or off < self.cs or off + self.cs > size):
                raise FormatError("refcount block %d at 0x%x is misaligned, overlaps the header or "
                                  "lies outside the file" % (i, off), field="refcount table",
                                  offset=where, path=storage.path)
        self.blocks = {}
        self._by_offset = {}
        self.dirty = set()
        self.table_dirty = False
        self.meta = None            # the image's MetadataMap, when open for writing
        self.last_used = self._last_used()
        self.end = max(self.last_used + 1, ceil_div(size, self.cs))

    def check_writable(self, file_size):
        """Refuse to allocate after refcounts that claim clusters far past
        the end of the file (new clusters go after them)."""
        eof = ceil_div(file_size, self.cs)
        past = (self.last_used + 1 - eof) * self.cs
        if past > max(file_size, MAX_REFCOUNTED_PAST_EOF):
            ti = self.last_used // self.per_block
            raise FormatError("refcount block %d at 0x%x gives cluster %d (offset 0x%x) a refcount, "
                              "%d bytes past the end of the file; new clusters would go after it "
                              "(repair the image with qemu-img check -r all)"
                              % (ti, self.table[ti], self.last_used, self.last_used * self.cs, past),
                              field="refcount table", offset=self.hdr.refcount_table_offset + 8 * ti,
                              path=self.st.path)

    def metadata_ranges(self):
        """(offset, length, description, field, field_offset) of the
        refcount table and of every block it lists (see MetadataMap.build)."""
        h = self.hdr
        yield (h.refcount_table_offset, h.refcount_table_clusters * self.cs, "refcount table",
               "refcount_table_offset", 48)
        for ti, off in enumerate(self.table):
            if off:
                yield (off, self.cs, "refcount block of refcount table entry %d" % ti,
                       "refcount table", h.refcount_table_offset + 8 * ti)

    # ---- entries -----------------------------------------------------------------
    def _block(self, ti):
        blk = self.blocks.get(ti)
        if blk is None and ti < len(self.table) and self.table[ti]:
            off = self.table[ti]
            # Two table entries naming one block share one buffer (a corrupt
            # table must not multiply reads).
            blk = self._by_offset.get(off)
            if blk is None:
                blk = bytearray(self.st.pread(off, self.cs, "refcount block"))
                self._by_offset[off] = blk
            self.blocks[ti] = blk
        return blk

    def _get_in(self, blk, i):
        return get_refcount(blk, i, self.bits)

    def _set_in(self, blk, i, value):
        set_refcount(blk, i, value, self.bits)

    def get(self, cluster):
        ti, i = divmod(cluster, self.per_block)
        blk = self._block(ti) if ti < len(self.table) else None
        return 0 if blk is None else self._get_in(blk, i)

    def set(self, cluster, value):
        if not 0 <= value < 1 << self.bits:
            raise FormatError("refcount %d does not fit %d-bit refcounts" % (value, self.bits),
                              field="refcount")
        ti, i = divmod(cluster, self.per_block)
        if ti >= len(self.table):
            self._grow_table(ti + 1)
        blk = self._block(ti)
        if blk is None:
            blk = self._new_block(ti)
        self._set_in(blk, i, value)
        self.dirty.add(ti)

    def _last_used(self):
        """Highest cluster with a non-zero refcount (bounded work even when
        a hostile table lists the same block many times)."""
        last = -1
        seen = {}
        for ti, off in enumerate(self.table):
            if not off:
                continue
            if off not in seen:
                blk = self._block(ti)
                n = len(blk.rstrip(b"\0"))
                if n == 0:
                    seen[off] = -1
                elif self.bits >= 8:
                    seen[off] = (n - 1) // (self.bits // 8)
                else:
                    seen[off] = ((n - 1) * 8 + blk[n - 1].bit_length() - 1) // self.bits
            if seen[off] >= 0:
                last = max(last, ti * self.per_block + seen[off])
        return last

    def count_in_use(self, end, limit):
        """How many of clusters [0, end) have a non-zero refcount, counted
        a block at a time up to *limit* at least."""
        count = 0
        codes = {8: "B", 16: "H", 32: "I", 64: "Q"}
        for ti in range(min(ceil_div(end, self.per_block), len(self.table))):
            if count >= limit:
                break
            blk = self._block(ti)
            if blk is None:
                continue
            n = min(self.per_block, end - ti * self.per_block)
            if self.bits in codes:
                entries = memoryview(blk).cast(codes[self.bits])[:n].tolist()
                count += n - entries.count(0)
            else:
                count += sum(1 for i in range(n) if get_refcount(blk, i, self.bits))
        return count

    # ---- allocation --------------------------------------------------------------------
    def alloc(self, n):
        """Allocate *n* contiguous new clusters; returns the byte offset."""
        start = self.end
        self.end += n
        self.set_run(start, n, 1)
        return start * self.cs

    def set_run(self, first, n, value):
        """Set the refcounts of clusters [first, first+n) to *value*: one
        slice of each refcount block (blocks are added as ``set`` adds them)."""
        if n <= 0:
            return
        if not 0 <= value < 1 << self.bits:
            raise FormatError("refcount %d does not fit %d-bit refcounts" % (value, self.bits),
                              field="refcount")
        c, end = first, first + n
        while c < end:
            ti, i = divmod(c, self.per_block)
            k = min(end - c, self.per_block - i)
            if self.bits < 8:
                for x in range(c, c + k):
                    self.set(x, value)
            else:
                if ti >= len(self.table):
                    self._grow_table(ti + 1)
                blk = self._block(ti)
                if blk is None:
                    blk = self._new_block(ti)
                w = self.bits // 8
                blk[i * w:(i + k) * w] = value.to_bytes(w, "big") * k
                self.dirty.add(ti)
            c += k

    def _new_block(self, ti):
        blk = bytearray(self.cs)
        self.blocks[ti] = blk
        where = self.end
        self.end += 1
        if self.meta is not None:
            self.meta.add(where * self.cs, self.cs, "refcount block %d" % ti)
        self.table[ti] = where * self.cs
        self.table_dirty = True
        self.dirty.add(ti)
        self.set(where, 1)           # in this block or another (appended) one
        return blk

    def free(self, offset, n):
        for c in range(offset // self.cs, offset // self.cs + n):
            self.set(c, max(0, self.get(c) - 1))

    def _grow_table(self, min_entries):
        """Move the table to a larger run at the end; blocks and table are
        written and synced before the header switches to it."""
        per_cluster = self.cs // 8
        entries = max(min_entries, 2 * len(self.table))
        clusters = ceil_div(entries, per_cluster)
        if clusters * self.cs > MAX_REFTABLE_BYTES:
            raise FormatError("the refcount table would exceed QEMU's size limit",
                              field="refcount table")
        old_off, old_clusters = self.hdr.refcount_table_offset, self.hdr.refcount_table_clusters
        self.table.extend([0] * (clusters * per_cluster - len(self.table)))
        start = self.end
        self.end += clusters
        if self.meta is not None:
            # The old table stays in the map: nothing may be written there.
            self.meta.add(start * self.cs, clusters * self.cs, "refcount table")
        for c in range(start, start + clusters):
            self.set(c, 1)
        self.flush_blocks()
        self.st.pwrite(start * self.cs, self._table_bytes())
        self.st.sync()
        self.hdr.refcount_table_offset = start * self.cs
        self.hdr.refcount_table_clusters = clusters
        self._write_header()
        self.st.sync()
        self.table_dirty = False
        self.free(old_off, old_clusters)       # a leak if we crash before the next flush

    def _table_bytes(self):
        return struct.pack(">%dQ" % len(self.table), *self.table)

    # ---- write-back -------------------------------------------------------------------
    def flush_blocks(self):
        for ti in sorted(self.dirty):
            self.st.pwrite(self.table[ti], self.blocks[ti])
        self.dirty.clear()

    def flush(self):
        """Write dirty blocks, then (after a sync) changed table entries.
        The caller syncs afterwards."""
        self.flush_blocks()
        if self.table_dirty:
            self.st.sync()
            self.st.pwrite(self.hdr.refcount_table_offset, self._table_bytes())
            self.table_dirty = False

    @property
    def has_dirty(self):
        return bool(self.dirty) or self.table_dirty
