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
from .image import COMPRESSED, L1_OFFSET_MASK, NORMAL, entry_kind
from .open import read_header
from .refcounts import OFFSET_MASK, Refcounts
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
        h = read_header(st)
        cs = h.cluster_size
        size = st.size()
        nclusters = -(-size // cs)
        counts = {}

        def use(offset, length, what):
            if offset % cs:
                res.corruptions.append("ERROR %s at 0x%x is not cluster-aligned" % (what, offset))
                return
            if offset + length > size and what != "data cluster":
                res.corruptions.append("ERROR %s at 0x%x lies past the end of the file" % (what, offset))
                return
            for c in range(offset // cs, -(-(offset + length) // cs)):
                counts[c] = counts.get(c, 0) + 1

        use(0, cs, "header")
        use(h.refcount_table_offset, h.refcount_table_clusters * cs, "refcount table")
        refs = Refcounts(st, h, lambda: None)
        snapshots = read_snapshots(st, h, size)
        if snapshots:
            use(h.snapshots_offset, snapshots[-1].entry_end - h.snapshots_offset, "snapshot table")
        blocks_seen = set()
        for i, off in enumerate(refs.table):
            if off:
                if off in blocks_seen:
                    res.corruptions.append("ERROR refcount block %d at 0x%x is listed twice" % (i, off))
                    continue
                blocks_seen.add(off)
                use(off, cs, "refcount block %d" % i)
        if h.l1_size:
            use(h.l1_table_offset, h.l1_size * 8, "L1 table")
        if h.fde is not None:
            use(h.fde[0], h.fde[1], "FDE region")
        l1 = struct.unpack(">%dQ" % h.l1_size, st.pread(h.l1_table_offset, h.l1_size * 8)) if h.l1_size else ()
        expected_next = None
        x = 62 - (h.cluster_bits - 8)
        # The active L1 table, then every snapshot's: QEMU counts one
        # reference per L1 table that reaches a cluster (shared L2 tables too).
        layers = [(l1, "", True)]
        for sn in snapshots:
            use(sn.l1_table_offset, sn.l1_size * 8, "L1 table of snapshot %s" % sn.id)
            layers.append((read_snapshot_l1(st, sn), "snapshot %s " % sn.id, False))
        for l1, label, active in layers:
            l2_seen = set()
            for l1i, l1e in enumerate(l1):
                l2off = l1e & L1_OFFSET_MASK
                if not l2off:
                    continue
                if l2off % cs or l2off + cs > size:
                    res.corruptions.append("ERROR %sL1 entry %d: L2 table at 0x%x is outside the file "
                                           "or misaligned" % (label, l1i, l2off))
                    continue
                if l2off in l2_seen:
                    res.corruptions.append("ERROR %sL1 entry %d: L2 table at 0x%x is referenced twice"
                                           % (label, l1i, l2off))
                    continue
                l2_seen.add(l2off)
                use(l2off, cs, "L2 table")
                tbl = st.pread(l2off, cs)
                for l2i in range(h.l2_entries):
                    e = struct.unpack_from(">Q", tbl, l2i * h.l2_entry_size)[0]
                    if h.extended_l2:
                        e &= ~1             # reserved there: zeros are in the bitmap
                    if not e:
                        continue
                    if e & COMPRESSED:
                        off = e & ((1 << x) - 1)
                        nsect = ((e >> x) & ((1 << (62 - x)) - 1)) + 1
                        first, last = off // cs, (off + nsect * 512 - (off % 512) - 1) // cs
                        if off + 1 > size:
                            res.corruptions.append("ERROR compressed cluster at 0x%x is past the end "
                                                   "of the file" % off)
                            continue
                        for c in range(first, last + 1):
                            counts[c] = counts.get(c, 0) + 1
                        if active:
                            res.allocated_clusters += 1
                            res.compressed_clusters += 1
                        continue
                    host = e & OFFSET_MASK
                    if entry_kind(e, h.has_data_file) != NORMAL and not host:
                        continue            # unallocated or zero cluster
                    if active:
                        res.allocated_clusters += 1
                        if expected_next is not None and host != expected_next:
                            res.fragmented_clusters += 1
                        expected_next = host + cs
                    if h.has_data_file:
                        continue            # data lives in the external file
                    if host % cs or host >= size:
                        res.corruptions.append("ERROR %sL2 entry %d/%d points to 0x%x, outside the file "
                                               "or misaligned" % (label, l1i, l2i, host))
                        continue
                    use(host, cs, "data cluster")
        max_c = max([nclusters - 1] + list(counts))
        last_used = -1
        for c in range(max_c + 1):
            stored = refs.get(c)
            ref = counts.get(c, 0)
            if stored or ref:
                last_used = c
            if stored < ref:
                res.corruptions.append("ERROR cluster %d refcount=%d reference=%d" % (c, stored, ref))
            elif stored > ref:
                res.leaks.append((c, stored, ref))
        res.total_clusters = -(-h.size // cs)
        res.image_end_offset = (last_used + 1) * cs if last_used >= 0 else size
    return res

