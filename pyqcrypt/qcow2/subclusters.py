# SPDX-License-Identifier: LGPL-2.1-or-later
"""Extended L2 entries (qcow2 incompatible bit 4): reads, writes and
zeroing per subcluster, as QEMU 7.2 does them.

Each L2 entry carries a 64-bit bitmap: 32 "allocated" bits, then 32 "reads
as zero" bits, one per subcluster (cluster_size / 32).  A subcluster with
neither bit reads from the backing file (zeros without one); a partial
write completes its subclusters from what the guest sees there (QEMU's
copy-on-write).  ``Subclusters`` is mixed into Qcow2Image and works on its
L2 cache (mapping.py), allocator (allocation.py) and host I/O
(crypt_io.py); clusters.py does the same for standard L2 entries.
"""

from ..errors import FormatError
from ..storage import zero_fill
from ..units import ceil_div
from .entries import (ALL_ALLOC, ALL_ZERO, COMPRESSED_KIND, COPIED, NORMAL, OFFSET_MASK,
                      UNALLOCATED, ZERO, entry_kind, sub_mask)

SUB_DATA, SUB_ZERO, SUB_BACKING = "data", "zero", "backing"


class Subclusters:
    """The subcluster half of Qcow2Image (see the module docstring)."""

    def _sub_kind(self, gcl, entry, bitmap):
        """Classify an extended L2 entry (bit 0 of the entry is reserved
        there); a bitmap QEMU calls invalid is a FormatError."""
        kind = entry_kind(entry & ~ZERO, self.has_data_file)
        if kind == COMPRESSED_KIND:
            return kind
        if (bitmap >> 32) & bitmap or (kind == UNALLOCATED and bitmap & ALL_ALLOC):
            l1i, l2i = divmod(gcl, self.l2_entries)
            raise FormatError("extended L2 entry of guest cluster %d has an invalid subcluster "
                              "bitmap 0x%016x" % (gcl, bitmap), field="L2 bitmap",
                              offset=(self.l1[l1i] & OFFSET_MASK) + 16 * l2i + 8, path=self.path)
        return kind

    def _data_bits(self, gcl):
        """Bitmap of the subclusters of *gcl* that hold data (all 32 for a
        compressed cluster)."""
        entry, bitmap = self._entry(gcl), self._bitmap(gcl)
        kind = self._sub_kind(gcl, entry, bitmap)
        if kind == COMPRESSED_KIND:
            return ALL_ALLOC
        return bitmap & ALL_ALLOC if kind == NORMAL else 0

    def _sub_states(self, gcl, entry, bitmap, kind):
        """Per subcluster of *gcl*, what a read sees: SUB_DATA (host data),
        SUB_BACKING (neither bit: the backing file's data, zeros without
        one) or SUB_ZERO (the zero bit), as a function of the index."""
        data = bitmap & ALL_ALLOC if kind == NORMAL else 0
        zero = (bitmap >> 32) | (0 if self.backing is not None else ALL_ALLOC)
        return lambda i: SUB_DATA if data >> i & 1 else (SUB_ZERO if zero >> i & 1 else SUB_BACKING)

    def _cluster_pieces(self, offset, length):
        """(guest cluster, offset within it, start, end) of each piece of
        [offset, offset+length) that lies in one guest cluster; start and
        end count from *offset*."""
        pos = 0
        while pos < length:
            gcl, within = divmod(offset + pos, self.cluster_size)
            end = pos + min(self.cluster_size - within, length - pos)
            yield gcl, within, pos, end
            pos = end

    def _readinto_subclusters(self, offset, view):
        """Fill *view* from guest *offset*, a cluster at a time (see
        ``Qcow2Image.readinto``)."""
        for gcl, within, start, end in self._cluster_pieces(offset, len(view)):
            self._read_subclusters(gcl, within, view[start:end])

    def _read_subclusters(self, gcl, within, view):
        """Read len(view) bytes at *within* of guest cluster *gcl*: per
        subcluster, allocated -> host data, zero bit -> zeros, neither ->
        the backing file (zeros without one), in runs of equal state."""
        cs, sc, n = self.cluster_size, self.subcluster_size, len(view)
        entry, bitmap = self._entry(gcl), self._bitmap(gcl)
        kind = self._sub_kind(gcl, entry, bitmap)
        if kind == COMPRESSED_KIND:
            view[:] = self._read_compressed(gcl, entry)[within:within + n]
            return
        state = self._sub_states(gcl, entry, bitmap, kind)
        host = self._host_offset(gcl, entry) if kind == NORMAL else None
        pos = 0
        while pos < n:
            i = (within + pos) // sc
            what = state(i)
            j = i + 1
            while j < 32 and j * sc < within + n and state(j) == what:
                j += 1
            end = min(j * sc - within, n)
            if what == SUB_DATA:
                self._read_host_into(host + within + pos, gcl * cs + within + pos, view[pos:end])
            elif what == SUB_BACKING:
                self._read_backing(gcl * cs + within + pos, view[pos:end])
            else:
                view[pos:end] = bytes(end - pos)
            pos = end

    def _write_subclusters(self, offset, data):
        for gcl, within, start, end in self._cluster_pieces(offset, len(data)):
            self._write_subcluster_piece(gcl, within, data[start:end])
            if self._l2_overfull():
                self.flush()

    def _write_subcluster_piece(self, gcl, within, piece):
        """Write *piece* inside guest cluster *gcl*, as QEMU 7.2 does with
        subclusters: the written subclusters become allocated (their zero
        bits cleared); a partial subcluster that held no data is completed
        with zeros; a new cluster is allocated whole but only its written
        subclusters are written; a shared or compressed cluster is copied."""
        cs, sc = self.cluster_size, self.subcluster_size
        entry, bitmap = self._entry(gcl), self._bitmap(gcl)
        kind = self._sub_kind(gcl, entry, bitmap)
        first, end = within // sc, ceil_div(within + len(piece), sc)
        rng = sub_mask(first, end)
        new_bitmap = (bitmap | rng) & ~(rng << 32)
        if kind == NORMAL and not self._data_shared(entry):
            host = self._host_offset(gcl, entry)
            lo, hi = within, within + len(piece)
            if lo % sc and not bitmap >> first & 1:
                lo = first * sc
            if hi % sc and not bitmap >> (end - 1) & 1:
                hi = end * sc
            if (lo, hi) == (within, within + len(piece)):
                buf = piece
            else:
                buf = self._completed(gcl, lo, hi, within, piece)
            self._check_write_target(gcl, host + lo, hi - lo)
            self._write_host(host + lo, gcl * cs + lo, buf)
            if new_bitmap != bitmap:
                self._set_entry(gcl, entry, new_bitmap)
            return
        host = self._alloc_data(gcl, 1)
        self._check_write_target(gcl, host, cs)
        if kind == UNALLOCATED:
            lo, hi = first * sc, end * sc
            buf = self._completed(gcl, lo, hi, within, piece)
        else:
            # Compressed or shared: the whole cluster, old contents under the new.
            lo, hi = 0, cs
            buf = bytearray(cs)
            self.readinto(gcl * cs, memoryview(buf)[:min(cs, self.size - gcl * cs)])
            if kind == COMPRESSED_KIND:
                new_bitmap = ALL_ALLOC
        buf[within - lo:within - lo + len(piece)] = piece
        if self.crypt is not None:
            self.crypt.encrypt(buf, host + lo, gcl * cs + lo)
        self.data.pwrite(host + lo, buf)
        self._set_entry(gcl, host | COPIED, new_bitmap)
        if kind == NORMAL:
            self._deferred_free.append(entry & OFFSET_MASK)     # after the new entry is on disk
        elif kind == COMPRESSED_KIND:
            self._deferred_free.extend(self._compressed_hosts(entry))

    def _completed(self, gcl, lo, hi, within, piece):
        """Bytes [lo, hi) of guest cluster *gcl* with *piece* at *within*
        and, around it, what the guest sees there now (the backing file's
        data for unallocated subclusters, zeros for zero ones): QEMU's
        copy-on-write of a partially written subcluster."""
        base = gcl * self.cluster_size
        buf = bytearray(hi - lo)
        view = memoryview(buf)
        if within > lo:
            self.readinto(base + lo, view[:within - lo])
        tail = within + len(piece)
        if hi > tail:
            stop = min(hi, self.size - base)       # the image may end inside a subcluster
            if stop > tail:
                self.readinto(base + tail, view[tail - lo:stop - lo])
        view[within - lo:tail - lo] = piece
        return buf

    def _zero_subclusters(self, offset, length, unmap, discard):
        """write_zeroes / discard with subclusters: whole subclusters get
        their zero bits (whole clusters become all-zero, or with *unmap* /
        *discard* are freed); the bytes of partial subclusters are written
        as zeros (not for discard, which is advice)."""
        cs, sc = self.cluster_size, self.subcluster_size
        end = offset + length
        pos = offset
        freed = []
        while pos < end:
            gcl, within = divmod(pos, cs)
            base = gcl * cs
            hi = min(cs, end - base)
            whole_hi = cs if base + hi >= self.size else hi     # the image's short last cluster
            first, last = ceil_div(within, sc), whole_hi // sc
            pos = base + hi
            if first >= last:
                if not discard:
                    zero_fill(self.write, base + within, hi - within)
                continue
            if not discard:
                if within < first * sc:
                    zero_fill(self.write, base + within, first * sc - within)
                if last * sc < hi:
                    zero_fill(self.write, base + last * sc, hi - last * sc)
            entry, bitmap = self._entry(gcl), self._bitmap(gcl)
            kind = self._sub_kind(gcl, entry, bitmap)
            whole = first == 0 and last == 32
            host = entry & OFFSET_MASK if kind == NORMAL else 0
            if whole and (discard or unmap):
                # Over a backing file "unallocated" would show the backing's
                # data: a discarded cluster reads as zeros there (QEMU too).
                gone = 0 if discard and not self.header.backing_file else ALL_ZERO
                if entry or bitmap != gone:
                    self._set_entry(gcl, 0, gone)
                if host:
                    freed.append(host)      # a shared cluster's refcount only drops
                elif kind == COMPRESSED_KIND:
                    freed += self._compressed_hosts(entry)
            elif whole:
                if host:
                    copied = 0 if self._data_shared(entry) else COPIED
                    self._set_entry(gcl, host | copied, ALL_ZERO)
                elif entry or bitmap != ALL_ZERO:
                    self._set_entry(gcl, 0, ALL_ZERO)
                    if kind == COMPRESSED_KIND:
                        freed += self._compressed_hosts(entry)
            elif discard:
                continue
            elif kind == COMPRESSED_KIND:
                n = min(last * sc, self.size - base) - first * sc
                zero_fill(self.write, base + first * sc, n)
            else:
                rng = sub_mask(first, last)
                new_bitmap = (bitmap & ~rng) | (rng << 32)
                if new_bitmap != bitmap:
                    self._set_entry(gcl, entry, new_bitmap)
        self._free_after_flush(freed)

    def _zero_runs_subclusters(self):
        nclusters = ceil_div(self.size, self.cluster_size)
        sc, start = self.subcluster_size, None
        for gcl in range(nclusters):
            data = self._data_bits(gcl) if gcl // self.l2_entries < len(self.l1) else 0
            base = gcl * self.cluster_size
            if data == 0 or data == ALL_ALLOC:
                bits = [(0, 32, not data)]
            else:
                bits = [(i, i + 1, not data >> i & 1) for i in range(32)]
            for a, _, zero in bits:
                if zero and start is None:
                    start = base + a * sc
                elif not zero and start is not None:
                    yield start, min(base + a * sc, self.size)
                    start = None
        if start is not None:
            yield start, self.size
