# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 consistency check, with qemu-img check's verdicts and exit codes.

Every cluster the metadata uses (header, refcount table and blocks, L1
table, L2 tables, data clusters, compressed runs, the FDE region) is
counted; stored refcounts lower than the count are corruptions, higher ones
are leaks.  Entries pointing outside the file or misaligned are
corruptions.  Exit codes: 0 clean, 2 corruptions, 3 leaks only, 1 the check
itself could not complete.
"""

import struct

from ..storage import Storage
from ..units import ceil_div
from .entries import COMPRESSED, NORMAL, OFFSET_MASK, ZERO, compressed_extent, entry_kind
from .open import read_header
from .refcounts import Refcounts
from .snapshots import read_l1 as read_snapshot_l1, read_snapshots


class CheckResult:
    def __init__(self, path):
        self.path = path
        self.corruptions = []
        self.leaks = []
        self.total_clusters = 0
        self.allocated_clusters = 0
        self.fragmented_clusters = 0
        self.compressed_clusters = 0
        self.image_end_offset = 0

    @property
    def exit_code(self):
        if self.corruptions:
            return 2
        if self.leaks:
            return 3
        return 0

    def as_dict(self):
        out = {"image-end-offset": self.image_end_offset, "total-clusters": self.total_clusters,
               "check-errors": 0, "filename": self.path, "format": "qcow2"}
        if self.leaks:
            out["leaks"] = len(self.leaks)
        if self.corruptions:
            out["corruptions"] = len(self.corruptions)
        out.update({"allocated-clusters": self.allocated_clusters,
                    "fragmented-clusters": self.fragmented_clusters,
                    "compressed-clusters": self.compressed_clusters})
        return out

    def human(self):
        lines = list(self.corruptions)
        lines += ["Leaked cluster %d refcount=%d reference=%d" % leak for leak in self.leaks]
        if lines:
            lines.append("")
        if self.corruptions:
            lines.append("%d errors were found on the image.\nData may be corrupted, or further "
                         "writes to the image may corrupt it." % len(self.corruptions))
        if self.leaks:
            if self.corruptions:
                lines.append("")
            lines.append("%d leaked clusters were found on the image.\nThis means waste of disk "
                         "space, but no harm to data." % len(self.leaks))
        if not self.corruptions and not self.leaks:
            lines.append("No errors were found on the image.")
        if self.total_clusters and self.allocated_clusters:
            lines.append("%d/%d = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed clusters"
                         % (self.allocated_clusters, self.total_clusters,
                            100.0 * self.allocated_clusters / self.total_clusters,
                            100.0 * self.fragmented_clusters / max(1, self.allocated_clusters),
                            100.0 * self.compressed_clusters / max(1, self.allocated_clusters)))
        lines.append("Image end offset: %d" % self.image_end_offset)
        return "\n".join(lines) + "\n"


def check_qcow2(path):
    """Check *path*; returns a CheckResult (FormatError if the header
    itself is unreadable)."""
    res = CheckResult(path)
    with Storage(path) as st:
        checker = _Checker(st, read_header(st), res)
        checker.count_fixed_metadata()
        checker.count_mappings()
        checker.compare_refcounts()
    return res


class _Checker:
    """One check: counts the references to each host cluster, then compares
    them with the stored refcounts."""

    def __init__(self, st, header, res):
        self.st, self.h, self.res = st, header, res
        self.cs = header.cluster_size
        self.size = st.size()
        self.counts = {}
        self.refs = Refcounts(st, header, lambda: None)
        self.snapshots = read_snapshots(st, header, self.size)

    def use(self, offset, length, what):
        """Count one reference to each cluster of [offset, offset+length)."""
        cs, res = self.cs, self.res
        if offset % cs:
            res.corruptions.append("ERROR %s at 0x%x is not cluster-aligned" % (what, offset))
            return
        if offset + length > self.size and what != "data cluster":
            res.corruptions.append("ERROR %s at 0x%x lies past the end of the file" % (what, offset))
            return
        self._count(offset // cs, ceil_div(offset + length, cs))

    def _count(self, first, end):
        for c in range(first, end):
            self.counts[c] = self.counts.get(c, 0) + 1

    def count_fixed_metadata(self):
        """Header, refcount table and blocks, snapshot table, L1 table, FDE."""
        h, cs = self.h, self.cs
        self.use(0, cs, "header")
        self.use(h.refcount_table_offset, h.refcount_table_clusters * cs, "refcount table")
        if self.snapshots:
            self.use(h.snapshots_offset, self.snapshots[-1].entry_end - h.snapshots_offset,
                     "snapshot table")
        blocks_seen = set()
        for i, off in enumerate(self.refs.table):
            if not off:
                continue
            if off in blocks_seen:
                self.res.corruptions.append("ERROR refcount block %d at 0x%x is listed twice"
                                            % (i, off))
                continue
            blocks_seen.add(off)
            self.use(off, cs, "refcount block %d" % i)
        if h.l1_size:
            self.use(h.l1_table_offset, h.l1_size * 8, "L1 table")
        if h.fde is not None:
            self.use(h.fde[0], h.fde[1], "FDE region")

    def count_mappings(self):
        """The active L1 table, then every snapshot's: QEMU counts one
        reference per L1 table that reaches a cluster (shared L2 tables too)."""
        h, st = self.h, self.st
        l1 = struct.unpack(">%dQ" % h.l1_size,
                           st.pread(h.l1_table_offset, h.l1_size * 8)) if h.l1_size else ()
        layers = [(l1, "", True)]
        for sn in self.snapshots:
            self.use(sn.l1_table_offset, sn.l1_size * 8, "L1 table of snapshot %s" % sn.id)
            layers.append((read_snapshot_l1(st, sn), "snapshot %s " % sn.id, False))
        self.expected_next = None
        for table, label, active in layers:
            self._count_l1(table, label, active)

    def _count_l1(self, l1, label, active):
        cs, res = self.cs, self.res
        l2_seen = set()
        for l1i, l1e in enumerate(l1):
            l2off = l1e & OFFSET_MASK
            if not l2off:
                continue
            if l2off % cs or l2off + cs > self.size:
                res.corruptions.append("ERROR %sL1 entry %d: L2 table at 0x%x is outside the file "
                                       "or misaligned" % (label, l1i, l2off))
                continue
            if l2off in l2_seen:
                res.corruptions.append("ERROR %sL1 entry %d: L2 table at 0x%x is referenced twice"
                                       % (label, l1i, l2off))
                continue
            l2_seen.add(l2off)
            self.use(l2off, cs, "L2 table")
            tbl = self.st.pread(l2off, cs)
            for l2i in range(self.h.l2_entries):
                e = struct.unpack_from(">Q", tbl, l2i * self.h.l2_entry_size)[0]
                if self.h.extended_l2:
                    e &= ~ZERO              # reserved there: zeros are in the bitmap
                if e:
                    self._count_entry(e, label, l1i, l2i, active)

    def _count_entry(self, e, label, l1i, l2i, active):
        """References from one non-empty L2 entry."""
        cs, res, h = self.cs, self.res, self.h
        if e & COMPRESSED:
            off, length = compressed_extent(e, h.cluster_bits)
            if off + 1 > self.size:
                res.corruptions.append("ERROR compressed cluster at 0x%x is past the end "
                                       "of the file" % off)
                return
            self._count(off // cs, (off + length - 1) // cs + 1)
            if active:
                res.allocated_clusters += 1
                res.compressed_clusters += 1
            return
        host = e & OFFSET_MASK
        if entry_kind(e, h.has_data_file) != NORMAL and not host:
            return                  # unallocated or zero cluster
        if active:
            res.allocated_clusters += 1
            if self.expected_next is not None and host != self.expected_next:
                res.fragmented_clusters += 1
            self.expected_next = host + cs
        if h.has_data_file:
            return                  # data lives in the external file
        if host % cs or host >= self.size:
            res.corruptions.append("ERROR %sL2 entry %d/%d points to 0x%x, outside the file "
                                   "or misaligned" % (label, l1i, l2i, host))
            return
        self.use(host, cs, "data cluster")

    def compare_refcounts(self):
        """Stored refcounts against the counted references: lower ones are
        corruptions, higher ones leaks; also the image's end offset."""
        cs, res, counts = self.cs, self.res, self.counts
        max_c = max([ceil_div(self.size, cs) - 1] + list(counts))
        last_used = -1
        for c in range(max_c + 1):
            stored = self.refs.get(c)
            ref = counts.get(c, 0)
            if stored or ref:
                last_used = c
            if stored < ref:
                res.corruptions.append("ERROR cluster %d refcount=%d reference=%d" % (c, stored, ref))
            elif stored > ref:
                res.leaks.append((c, stored, ref))
        res.total_clusters = ceil_div(self.h.size, cs)
        res.image_end_offset = (last_used + 1) * cs if last_used >= 0 else self.size
