# SPDX-License-Identifier: LGPL-2.1-or-later
"""Opening a qcow2 image for writing, allocating its clusters, and the
metadata-overlap guard (QEMU's qcow2-refcount.c: qcow2_alloc_clusters and
qcow2_check_metadata_overlap).

Images QEMU would not write (marked corrupt or dirty, LUKS in a v2
header) are refused.  Opened for writing, the image is untrusted as QEMU's qcow2 driver treats
it: the metadata (header cluster, L1 table, L2 tables, refcount table and
blocks, FDE region, snapshot table and snapshots' L1 and L2 tables) is
mapped once and must be disjoint (no two L1 entries naming one L2 table, no
refcount table entries naming one block, nothing on the header or the L1
table), or the open is refused.  Every in-place data write and every
allocation is checked against that map (one bisection per run); a write
that would land on metadata is refused and the image marked corrupt, as
QEMU's overlap check does.  Before the first allocation (new clusters go
at the end of the file) one pass over the L2 tables makes sure no entry
points at or past that end: a new cluster would otherwise be mapped twice.

In an external data file a data cluster is not allocated: QEMU keeps it at
its guest offset.  ``Allocation`` is mixed into Qcow2Image.
"""

import struct
import sys
from array import array

from ..errors import FormatError
from .entries import COMPRESSED, OFFSET_MASK, UNALLOCATED, compressed_clusters, compressed_extent, entry_kind
from .header import AUTOCLEAR_DATA_FILE_RAW, CRYPT_LUKS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY
from .mapping import l2_tables
from .refcounts import MetadataMap
from . import snapshots as snapshot_table


class Allocation:
    """The write preparation, allocator and overlap guard of Qcow2Image (see the module docstring)."""

    _corrupt = None             # why writes are refused, once an overlap was caught
    _mappings_checked = False   # L2 entries checked against the end of the file
    meta = None                 # MetadataMap, when writable

    def _refuse_unwritable(self, h):
        """Images QEMU would not write either: marked corrupt or dirty, or
        LUKS in a v2 header."""
        if h.incompatible_features & INCOMPAT_CORRUPT:
            raise FormatError("image is marked corrupt; only read-only access is allowed "
                              "(repair it with qemu-img check -r all)", field="incompatible_features",
                              path=self.path)
        if h.incompatible_features & INCOMPAT_DIRTY:
            raise FormatError("image is marked dirty (refcounts may be stale); repair it with "
                              "qemu-img check -r all before writing", field="incompatible_features",
                              path=self.path)
        if h.version == 2 and h.crypt_method == CRYPT_LUKS:
            raise FormatError("qcow2 v2 images cannot hold LUKS encryption", field="version")

    def _prepare_writes(self, h, file_size):
        """Before the first write: the tables snapshots share, the metadata
        map every write is checked against, the refcount checks, and the
        autoclear bits we do not maintain cleared."""
        if self.snapshots:
            if self.has_data_file:
                raise FormatError("internal snapshots with an external data file cannot be "
                                  "written (their clusters cannot be copied)", field="nb_snapshots",
                                  offset=60, path=self.path)
            self._snap_l2 = self._snapshot_l2_tables(file_size)
        self.meta = self._metadata_map(file_size)
        self.refcounts.meta = self.meta
        self.refcounts.check_writable(file_size)
        if h.autoclear_features & ~AUTOCLEAR_DATA_FILE_RAW:
            # Autoclear bits we do not maintain (e.g. bitmaps) must be cleared
            # before the first modification, as the specification requires.
            h.autoclear_features &= AUTOCLEAR_DATA_FILE_RAW
            self._write_header()
            self.st.sync()

    def _metadata_map(self, file_size):
        """Map (and validate) every cluster that holds metadata; a
        FormatError naming the pointer when two structures share a
        cluster or one lies outside the file."""
        h, cs = self.header, self.cluster_size
        ranges = [(0, cs, "header", "header", 0)]
        if h.l1_size:
            ranges.append((h.l1_table_offset, h.l1_size * 8, "L1 table", "l1_table_offset", 40))
        ranges.extend(self.refcounts.metadata_ranges())
        if h.fde is not None:
            ranges.append((h.fde[0], h.fde[1], "FDE (LUKS header) region", "fde", h.fde[0]))
        active = set()
        for i, e in enumerate(self.l1):
            off = e & OFFSET_MASK
            if off:
                active.add(off)
                ranges.append((off, cs, "L2 table of L1 entry %d" % i, "L1 table",
                               h.l1_table_offset + 8 * i))
        ranges.extend(snapshot_table.metadata_ranges(self.snapshots, h))
        for off, (sn, i) in sorted(self._snap_l2.items()):
            if off not in active:           # shared tables are in the map once
                ranges.append((off, cs, "L2 table of snapshot %s, L1 entry %d" % (sn.id, i),
                               "l1_table_offset", sn.l1_table_offset + 8 * i))
        for off, length, what, fld, where in ranges:
            if off + length > max(file_size, cs):
                raise FormatError("%s (0x%x, %d bytes) lies past the end of the file"
                                  % (what, off, length), field=fld, offset=where, path=self.path)
        return MetadataMap.build(cs, ranges, path=self.path)

    def _snapshot_l2_tables(self, file_size):
        """{L2 table offset: (snapshot, L1 index)} over every snapshot's L1
        table, each entry checked as the active L1's are."""
        tables = {}
        for sn in self.snapshots:
            l1 = snapshot_table.read_l1(self.st, sn)
            for i, off in l2_tables(l1, self.cluster_size, file_size, sn.l1_table_offset, self.path,
                                    owner=" of snapshot %s" % sn.id, field="snapshot L1 table"):
                tables.setdefault(off, (sn, i))
        return tables

    def _refuse_overlap(self, gcl, host, length, hit):
        """A data write to guest cluster *gcl* would land on metadata: mark
        the image corrupt (as QEMU does), refuse this and every later write."""
        l1i, l2i = divmod(gcl, self.l2_entries)
        where = (self.l1[l1i] & OFFSET_MASK) + 8 * l2i if l1i < len(self.l1) else None
        msg = ("write to guest cluster %d refused: its host cluster(s) at 0x%x (%d bytes) overlap "
               "the %s at 0x%x; the image is marked corrupt (repair it with qemu-img check -r all)"
               % (gcl, host, length, hit[2], hit[0]))
        self._corrupt = msg
        try:
            self.flush()            # what was written before is consistent: keep it
        finally:
            if self.header.version >= 3:       # v2 has no feature bits
                self.header.incompatible_features |= INCOMPAT_CORRUPT
                # Only the feature field: the rest of the header stays as it is.
                self.st.pwrite(72, struct.pack(">Q", self.header.incompatible_features))
                self.st.sync()
        raise FormatError(msg, field="L2 entry", offset=where, path=self.path)

    def _check_write_target(self, gcl, host, length):
        if self.meta is not None and not self.has_data_file:
            hit = self.meta.find(host, length)
            if hit is not None:
                self._refuse_overlap(gcl, host, length, hit)

    def _allocate(self, n):
        """*n* new contiguous clusters at the end of the file."""
        if not self._mappings_checked:
            self._check_mappings()
        return self.refcounts.alloc(n)

    def _alloc_data(self, gcl, n):
        """Host clusters for the *n* data clusters from guest cluster *gcl*."""
        if not self.has_data_file:
            return self._allocate(n)
        # QEMU requires every external data file cluster at its guest offset.
        return gcl * self.cluster_size

    def _free_after_flush(self, hosts):
        """Drop the refcounts of the clusters at *hosts* that entries no
        longer name: no reference may point at a cluster whose refcount is
        0, so the entries reach the disk first, the refcounts drop after."""
        if hosts:
            self.flush()
            for host in hosts:
                self.refcounts.free(host, 1)

    def _compressed_hosts(self, entry):
        """The host offsets of the clusters the compressed L2 *entry*
        references (``entries.compressed_clusters``): its going drops each
        refcount by one."""
        return [c * self.cluster_size for c in compressed_clusters(entry, self.header.cluster_bits)]

    def _old_cluster(self, gcl, entry):
        """What the guest sees in cluster *gcl* now (for a partial write
        into a cluster that is being allocated)."""
        cs = self.cluster_size
        if entry & COMPRESSED:
            return self._read_compressed(gcl, entry)
        old = bytearray(cs)
        if self.backing is not None and entry_kind(entry, self.has_data_file) == UNALLOCATED:
            n = min(cs, self.size - gcl * cs)
            self._read_backing(gcl * cs, memoryview(old)[:n])
        return old

    def _check_mappings(self):
        """No L2 entry may point at or past the end of the file, where new
        clusters go.  Once, before the first allocation: a few big-integer
        operations per L2 table (the per-entry loop runs only for tables
        with compressed clusters or a bad entry)."""
        eof, cs, n = self.st.size(), self.cluster_size, self.l2_entries
        pad = bytes(self.esize - 8)         # the subcluster bitmap, when there is one
        offsets = int.from_bytes((struct.pack(">Q", OFFSET_MASK) + pad) * n, "big")
        compressed = int.from_bytes((struct.pack(">Q", COMPRESSED) + pad) * n, "big")
        active = [(l1i, l1e & OFFSET_MASK, True) for l1i, l1e in enumerate(self.l1)]
        seen = {off for _, off, _ in active}
        # Tables only a snapshot uses: new clusters must not land on their data either.
        others = [(sn_i, off, False) for off, (_, sn_i) in sorted(self._snap_l2.items())
                  if off not in seen]
        for l1i, l2off, is_active in active + others:
            if not l2off:
                continue
            tbl = self.l2_cache.get(l1i) if is_active else None
            if tbl is None:
                tbl = self.st.pread(l2off, cs, "L2 table")
            t = int.from_bytes(tbl, "big")
            if not t & compressed:
                hosts = array("Q", (t & offsets).to_bytes(cs, "big"))
                if sys.byteorder == "little":
                    hosts.byteswap()
                if max(hosts) < eof:
                    continue
            self._check_table_mappings(l1i, l2off, tbl, eof)
        self._mappings_checked = True

    def _check_table_mappings(self, l1i, l2off, tbl, eof):
        """The per-entry check of one L2 table (see ``_check_mappings``)."""
        cbits = self.header.cluster_bits
        for i, e in enumerate(struct.unpack(">%dQ" % (self.cluster_size // 8), tbl)[::self.esize // 8]):
            host = compressed_extent(e, cbits)[0] if e & COMPRESSED else e & OFFSET_MASK
            if host >= eof:
                gcl = l1i * self.l2_entries + i
                raise FormatError(
                    "guest cluster %d maps to 0x%x, at or past the end of the file (0x%x), "
                    "where new clusters go; it would be mapped twice (repair the image with "
                    "qemu-img check -r all)" % (gcl, host, eof),
                    field="L2 entry", offset=l2off + self.esize * i, path=self.path)
