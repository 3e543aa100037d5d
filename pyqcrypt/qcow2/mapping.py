# SPDX-License-Identifier: LGPL-2.1-or-later
"""The guest-to-host mapping of a qcow2 image: L1 and L2 tables (the table
half of QEMU's qcow2-cluster.c, with qcow2-cache.c's L2 cache).

Owns the active L1 table (read and checked once, at open), the L2 cache
(``l2_cache``, L1 index -> table; clean tables are dropped when it holds
``L2_CACHE_TABLES``, dirty ones stay until ``Qcow2Image.flush`` writes them
back, L2 tables first, then the L1 entries that name them), the codecs of
L2 entries (standard 8-byte entries, extended 16-byte ones with their
subcluster bitmap), the check of a standard entry's host offset, and
copy-on-write of an L2 table a snapshot shares: the first change to it
gives its L1 entry a copy of its own.

``L2Tables`` is mixed into Qcow2Image; new tables come from its allocator
(allocation.py).
"""

import struct

from ..errors import FormatError
from .entries import COPIED, OFFSET_MASK

L2_CACHE_TABLES = 64


def l2_tables(l1, cluster_size, file_size, table_offset, path, owner="", field="L1 table"):
    """(L1 index, L2 table offset) of each allocated entry of the L1 table
    *l1* (at *table_offset* in the file), each checked to name a
    cluster-aligned table inside the file and past the header cluster;
    a snapshot's table is named in the error by *owner* (" of snapshot
    ID") and *field*."""
    tables = []
    for i, e in enumerate(l1):
        off = e & OFFSET_MASK
        if not off:
            continue
        if off % cluster_size or off < cluster_size or off + cluster_size > file_size:
            raise FormatError("L1 entry %d%s points to 0x%x, outside the file or misaligned"
                              % (i, owner, off), field=field, offset=table_offset + 8 * i, path=path)
        tables.append((i, off))
    return tables


class L2Tables:
    """The L1/L2 half of Qcow2Image (see the module docstring)."""

    def _read_l1(self, storage, h, file_size):
        """The L1 table, each entry checked (see ``l2_tables``)."""
        raw = storage.pread(h.l1_table_offset, h.l1_size * 8, "L1 table") if h.l1_size else b""
        l1 = list(struct.unpack(">%dQ" % h.l1_size, raw))
        l2_tables(l1, self.cluster_size, file_size, h.l1_table_offset, self.path)
        return l1

    def _l2(self, l1i, create=False):
        """The cached L2 table of L1 entry *l1i*, read on first use; None
        when the entry is unallocated, unless *create* allocates one."""
        tbl = self.l2_cache.get(l1i)
        if tbl is not None:
            return tbl
        off = self.l1[l1i] & OFFSET_MASK
        if not off:
            if not create:
                return None
            off = self._allocate(1)
            if self.meta is not None:
                self.meta.add(off, self.cluster_size, "L2 table of L1 entry %d" % l1i)
            tbl = bytearray(self.cluster_size)
            self.l1[l1i] = off | COPIED
            self.l1_dirty.add(l1i)
            self.l2_dirty.add(l1i)
        else:
            tbl = bytearray(self.st.pread(off, self.cluster_size, "L2 table"))
        if len(self.l2_cache) >= L2_CACHE_TABLES and not self.l2_dirty:
            self.l2_cache.clear()
        self.l2_cache[l1i] = tbl
        return tbl

    def _l2_overfull(self):
        """More dirty L2 tables than the cache holds: time to flush."""
        return len(self.l2_dirty) > L2_CACHE_TABLES

    def _entry(self, gcluster):
        l1i, l2i = divmod(gcluster, self.l2_entries)
        if l1i >= len(self.l1):
            raise FormatError("guest cluster %d is beyond the L1 table" % gcluster, field="L1 table")
        tbl = self._l2(l1i)
        return 0 if tbl is None else struct.unpack_from(">Q", tbl, l2i * self.esize)[0]

    def _bitmap(self, gcluster):
        """The subcluster bitmap of an extended L2 entry (0 otherwise)."""
        if not self.extended_l2:
            return 0
        l1i, l2i = divmod(gcluster, self.l2_entries)
        tbl = self._l2(l1i) if l1i < len(self.l1) else None
        return 0 if tbl is None else struct.unpack_from(">Q", tbl, l2i * 16 + 8)[0]

    def _entries(self, first, count):
        """The L2 entries of guest clusters [first, first+count), read a
        table at a time; None past the L1 table."""
        out = []
        gcl, end = first, first + count
        while gcl < end:
            l1i, l2i = divmod(gcl, self.l2_entries)
            if l1i >= len(self.l1):
                return None
            k = min(end - gcl, self.l2_entries - l2i)
            tbl = self._l2(l1i)
            if tbl is None:
                out.extend([0] * k)
            else:
                out.extend(struct.unpack_from(">%dQ" % k, tbl, l2i * 8))
            gcl += k
        return out

    def _l2_to_change(self, l1i):
        """The L2 table of L1 entry *l1i*, ready to be changed: allocated
        when there is none, copied when a snapshot shares it, and marked
        dirty."""
        tbl = self._l2(l1i, create=True)
        if self._l2_shared(l1i):
            self._copy_l2(l1i)
        self.l2_dirty.add(l1i)
        return tbl

    def _set_entry(self, gcluster, value, bitmap=None):
        l1i, l2i = divmod(gcluster, self.l2_entries)
        tbl = self._l2_to_change(l1i)
        struct.pack_into(">Q", tbl, l2i * self.esize, value)
        if self.extended_l2 and bitmap is not None:
            struct.pack_into(">Q", tbl, l2i * 16 + 8, bitmap)

    def _set_run(self, gcl, host, n):
        """Map guest clusters [gcl, gcl+n) to the contiguous host clusters
        from *host*: one slice of each L2 table, not an entry at a time."""
        cs = self.cluster_size
        end = gcl + n
        while gcl < end:
            l1i, l2i = divmod(gcl, self.l2_entries)
            k = min(end - gcl, self.l2_entries - l2i)
            tbl = self._l2_to_change(l1i)
            first = host | COPIED
            struct.pack_into(">%dQ" % k, tbl, l2i * 8, *range(first, first + k * cs, cs))
            gcl += k
            host += k * cs

    def _l2_shared(self, l1i):
        """The L2 table of L1 entry *l1i* is shared (with a snapshot): its
        L1 entry lacks COPIED, or a snapshot's L1 table names it."""
        e = self.l1[l1i]
        off = e & OFFSET_MASK
        return bool(off) and (not e & COPIED or off in self._snap_l2)

    def _copy_l2(self, l1i):
        """Give L1 entry *l1i* its own copy of its shared L2 table (the
        cached contents move to a new cluster; the data clusters it names
        keep their refcounts, as every L1 path counts them once).  The old
        table's refcount drops only after the new L1 entry is on disk."""
        old = self.l1[l1i] & OFFSET_MASK
        new = self._allocate(1)
        if self.meta is not None:
            self.meta.add(new, self.cluster_size, "L2 table of L1 entry %d" % l1i)
        self.l1[l1i] = new | COPIED
        self.l1_dirty.add(l1i)
        self.l2_dirty.add(l1i)
        self._deferred_free.append(old)

    def _store_tables(self):
        """Write the dirty L2 tables back, sync, then the dirty L1 entries,
        sync: no L1 entry reaches the disk before the table it names."""
        for l1i in sorted(self.l2_dirty):
            self.st.pwrite(self.l1[l1i] & OFFSET_MASK, self.l2_cache[l1i])
        if self.l2_dirty:
            self.st.sync()
        self.l2_dirty.clear()
        for l1i in sorted(self.l1_dirty):
            self.st.pwrite(self.header.l1_table_offset + 8 * l1i, struct.pack(">Q", self.l1[l1i]))
        if self.l1_dirty:
            self.st.sync()
        self.l1_dirty.clear()

    def _host_offset(self, gcluster, entry):
        """Host offset of a standard cluster entry, validated."""
        cs = self.cluster_size
        off = entry & OFFSET_MASK
        if off % cs:
            raise FormatError("L2 entry for guest cluster %d (0x%x) is not cluster-aligned"
                              % (gcluster, entry), field="L2 entry", path=self.path)
        if self.has_data_file:
            if off != gcluster * cs:
                raise FormatError("external data file: guest cluster %d maps to 0x%x, not its own "
                                  "offset" % (gcluster, off), field="L2 entry", path=self.path)
        elif off < cs or off >= self.st.size():
            raise FormatError("L2 entry for guest cluster %d points to 0x%x, outside the file"
                              % (gcluster, off), field="L2 entry", path=self.path)
        return off
