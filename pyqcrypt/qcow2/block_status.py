# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a qcow2 image's own L2 entries say about a guest range, in QEMU
7.2's terms (qcow2-cluster.c's qcow2_get_host_offset, as block status
uses it): the subcluster type at an offset, how many bytes from there
share that type (and, for clusters with a host offset, lie contiguously
on the host), and the host offset.  Read only; ``BlockStatusQuery`` is
mixed into Qcow2Image; pyqcrypt.block_status builds map and compare on it.

Types: NORMAL (data at a host offset), COMPRESSED (data, no offset),
ZERO_PLAIN / ZERO_ALLOC (reads as zeros, without / with a host cluster),
UNALLOCATED_PLAIN / UNALLOCATED_ALLOC (falls through to the backing file;
the latter only in extended L2 entries, which keep a host cluster).
"""

import os

from ..units import ceil_div
from .entries import COMPRESSED_KIND, NORMAL, OFFSET_MASK, UNALLOCATED, ZEROED, entry_kind

(SC_NORMAL, SC_COMPRESSED, SC_ZERO_PLAIN, SC_ZERO_ALLOC, SC_UNALLOCATED_PLAIN,
 SC_UNALLOCATED_ALLOC) = ("normal", "compressed", "zero-plain", "zero-alloc",
                          "unallocated-plain", "unallocated-alloc")
WITH_OFFSET = (SC_NORMAL, SC_ZERO_ALLOC, SC_UNALLOCATED_ALLOC)
INT_MAX = (1 << 31) - 1         # QEMU asks qcow2 about at most this many bytes at once


class BlockStatusQuery:
    """The block-status query of Qcow2Image (see the module docstring)."""

    def _sc_types(self, gcl):
        """(type of subcluster i as a function of i, host cluster offset)
        of guest cluster *gcl*; one type for every subcluster of a
        standard entry."""
        entry = self._entry(gcl)
        host = entry & OFFSET_MASK
        if not self.extended_l2:
            kind = entry_kind(entry, self.has_data_file)
            if kind == ZEROED:
                kind = SC_ZERO_ALLOC if host else SC_ZERO_PLAIN
            else:
                kind = {NORMAL: SC_NORMAL, COMPRESSED_KIND: SC_COMPRESSED,
                        UNALLOCATED: SC_UNALLOCATED_PLAIN}[kind]
            return (lambda i: kind), host
        bitmap = self._bitmap(gcl)
        kind = self._sub_kind(gcl, entry, bitmap)         # checks the bitmap
        if kind == COMPRESSED_KIND:
            return (lambda i: SC_COMPRESSED), host
        if kind == NORMAL:
            return (lambda i: SC_ZERO_ALLOC if bitmap >> (32 + i) & 1 else
                    SC_NORMAL if bitmap >> i & 1 else SC_UNALLOCATED_ALLOC), host
        return (lambda i: SC_ZERO_PLAIN if bitmap >> (32 + i) & 1 else SC_UNALLOCATED_PLAIN), host

    def block_status_run(self, offset, length):
        """(type, byte count, host offset or None) of the run at guest
        *offset*, at most *length* (and INT_MAX) bytes and at most to the
        end of the L2 table: QEMU's unit of block status for qcow2 (the
        same subcluster type and, with a host offset, contiguous there)."""
        with self._lock:
            self._check_open()
            length = min(length, INT_MAX)
            run = getattr(self, "_last_run", None)
            if run is None or not run[0] <= offset < run[1] or self.writable:
                # The whole run, to the end of its L2 table: a walk that
                # asks again from inside it (compare, 2 MiB at a time) is
                # answered from here.  Read-only images only: writes would
                # change it.
                kind, count, host = self._status_run(offset)
                run = self._last_run = (offset, offset + count, kind, host)
            start, end, kind, host = run
            where = None if host is None else host + offset - start
            return kind, min(end, offset + length) - offset, where

    def _status_run(self, offset):
        """The run at *offset* to the end of its L2 table at most."""
        cs, scs = self.cluster_size, self.subcluster_size
        per_cluster = cs // scs
        gcl, in_cluster = divmod(offset, cs)
        l1i, l2i = divmod(gcl, self.l2_entries)
        needed = (self.l2_entries - l2i) * cs
        if l1i >= len(self.l1) or not self.l1[l1i] & OFFSET_MASK:
            return SC_UNALLOCATED_PLAIN, needed - in_cluster, None
        nclusters = -(-needed // cs)
        first_sc = in_cluster // scs
        types, host = self._sc_types(gcl)
        kind = types(first_sc)
        count = self._same_type(types, first_sc, per_cluster)
        if kind != SC_COMPRESSED and first_sc + count == per_cluster:
            expected = host
            for i in range(1, nclusters):
                types2, host2 = self._sc_types(gcl + i)
                if types2(0) != kind:
                    break
                expected += cs
                if kind in WITH_OFFSET and host2 != expected:
                    break
                n = self._same_type(types2, 0, per_cluster)
                count += n
                if n < per_cluster:
                    break
        avail = min((first_sc + count) * scs, needed)
        where = host + in_cluster if kind in WITH_OFFSET else None
        return kind, avail - in_cluster, where

    def metadata_preallocated(self):
        """QEMU's guess that the image was made with preallocation=metadata
        (qcow2_detect_metadata_preallocation): clearly more clusters have
        a refcount than the file has blocks allocated.  Then block status
        also asks the file holding the data where its holes are."""
        with self._lock:
            known = getattr(self, "_preallocated", None)
            if known is None:
                known = self._preallocated = self._detect_preallocation()
            return known

    def _detect_preallocation(self):
        from .refcounts import Refcounts
        cs = self.cluster_size
        real_clusters = os.fstat(self.st.fd).st_blocks * 512 // cs
        threshold = max(real_clusters * 10 // 9, real_clusters + 2)
        refcounts = Refcounts(self.st, self.header, lambda: None)
        return refcounts.count_in_use(ceil_div(self.st.size(), cs), threshold) >= threshold

    def data_file_storage(self):
        """The Storage that holds the guest data (the data file, or the
        image itself)."""
        return self.data

    @staticmethod
    def _same_type(types, first, per_cluster):
        """How many subclusters from *first* have the type of *first*."""
        kind = types(first)
        n = 1
        while first + n < per_cluster and types(first + n) == kind:
            n += 1
        return n
