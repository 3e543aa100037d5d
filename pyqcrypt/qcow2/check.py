# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 consistency check, as qemu-img check (7.2, without -r) does it.

This module owns the check itself: it builds an in-memory count of the
references to every host cluster (header, active and snapshot L1 tables
and the L2 tables and clusters they reach, snapshot table, refcount table
and blocks, the LUKS header region, persistent bitmaps), compares it with
the stored refcounts, then checks the COPIED flags of the active tables.
Counts, messages and statistics are qemu-img's, found in the same order.
With a writer, the comparison and the COPIED check also repair what
qemu-img check -r would (``repair.py`` drives that run and does the writes).
Reading the image as QEMU does in check mode (only what qemu-img refuses
to open is an Error here; the snapshot table read leniently, zeros past
the end of the file) is ``check_read.py``'s job; how the findings are
printed (summary on stdout, per-item lines on stderr, exit codes 0 clean,
2 corruptions, 3 leaks only, 1 the check could not complete) is
``check_report.py``'s.
"""

from ..storage import Storage
from .check_read import (ALL_ALLOC, BME_TABLE_RESERVED, COMPRESSED_T, COPIED, L1E_OFFSET_MASK,
                         L1E_RESERVED_MASK, L2E_OFFSET_MASK, L2E_STD_RESERVED_MASK, MAX_L1_ENTRIES,
                         NORMAL, REFT_OFFSET_MASK, REFT_RESERVED_MASK, UNALLOCATED, ZERO, ZERO_ALLOC,
                         Abort, CheckedImage, ReadEIO, RefcountEIO, hex_or_zero)
from .check_report import CheckResult
from .header import CRYPT_LUKS


def check_qcow2(path):
    """Check the qcow2 image at *path*.  Returns a CheckResult; raises an
    Error (FormatError for bad metadata) only when qemu-img would not open
    the image at all."""
    with Storage(path) as st:
        return _Check(st, path).run()


FIX_LEAKS, FIX_ERRORS = 1, 2          # qemu-img check -r leaks: FIX_LEAKS; -r all: both


class _Check:
    """One run of the check: the references counted per host cluster
    (``imrt``, as QEMU calls its in-memory refcount table) as the walk of
    the image's metadata finds them, then compared with what it stores.
    *writer* (repair.py's) applies the repairs a repairing run decides;
    None for a plain check."""

    def __init__(self, st, path, writer=None):
        self.writer = writer
        self.rebuild = False        # a stored refcount of 0 on a used cluster
        self.res = CheckResult(path)
        self.image = image = CheckedImage(st, path, self.res)
        self.h = image.h
        self.cs = image.cs
        self.bits = image.bits
        self.data_file = image.data_file
        self.rc_max = (1 << image.rc_bits) - 1
        self.imrt = {}
        self.nb_clusters = -(-image.file_len // self.cs)

    def inc(self, offset, size):
        """Count one reference to every cluster of [offset, offset+size)."""
        if size <= 0:
            return
        if offset + size - self.image.file_len >= self.cs:
            self.res.corrupt("ERROR: counting reference for region exceeding the end of the file "
                             "by one cluster or more: offset 0x%x size 0x%x" % (offset, size))
            return
        first, last = offset >> self.bits, (offset + size - 1) >> self.bits
        self.nb_clusters = max(self.nb_clusters, last + 1)
        imrt = self.imrt
        for c in range(first, last + 1):
            n = imrt.get(c, 0)
            if n == self.rc_max:
                self.res.corrupt("ERROR: overflow cluster offset=0x%x" % (c << self.bits),
                                 "Use qemu-img amend to increase the refcount entry width or "
                                 "qemu-img convert to create a clean copy if the image cannot be "
                                 "opened for writing")
                continue
            imrt[c] = n + 1

    def run(self):
        res, h = self.res, self.h
        res.total_clusters = -(-(h.size // 512 * 512) // self.cs)
        try:
            snapshots, snapshots_size = self.image.read_snapshots()
            self._calculate(snapshots, snapshots_size)
            highest = self._compare()
            self._check_copied()
            res.image_end_offset = (highest + 1) * self.cs
        except Abort as exc:
            res.failed = str(exc)
        except ReadEIO:             # a read QEMU would fail (offsets near 2**63)
            res.failed = "Input/output error"
        return res

    def _calculate(self, snapshots, snapshots_size):
        """QEMU's calculate_refcounts: every reference, in its order
        (*snapshots_size*: the snapshot table's length in bytes)."""
        h, res = self.h, self.res
        self.inc(0, self.cs)
        self._check_l1(h.l1_table_offset, h.l1_size, active=True)
        if self.data_file and snapshots:
            res.corrupt("ERROR %d snapshots in image with data file" % len(snapshots))
        for ident, name, l1_off, l1_size, _ in snapshots:
            if l1_off % self.cs:
                res.corrupt("ERROR snapshot %s (%s) l1_offset=%s: L1 table is not cluster aligned; "
                            "snapshot table entry corrupted" % (ident, name, hex_or_zero(l1_off)))
            elif l1_size > MAX_L1_ENTRIES:
                res.corrupt("ERROR snapshot %s (%s) l1_size=%s: L1 table is too large; snapshot "
                            "table entry corrupted" % (ident, name, hex_or_zero(l1_size)))
            else:
                self._check_l1(l1_off, l1_size, active=False)
        self.inc(h.snapshots_offset, snapshots_size)
        self.inc(h.refcount_table_offset, len(self.image.reftable) * 8)
        if h.crypt_method == CRYPT_LUKS and h.fde is not None:
            self.inc(*h.fde)
        self._check_bitmaps()
        self._check_refblocks()

    def _check_l1(self, l1_offset, l1_size, active):
        if not l1_size:
            return
        self.inc(l1_offset, l1_size * 8)
        try:
            l1 = self.image.qwords(l1_offset, l1_size)
        except ReadEIO:
            self.res.error("ERROR: I/O error in check_refcounts_l1")
            raise Abort("Input/output error") from None
        for entry in l1:
            if not entry:
                continue
            if entry & L1E_RESERVED_MASK:
                self.res.corrupt("ERROR found L1 entry with reserved bits set: %x" % entry)
            l2_offset = entry & L1E_OFFSET_MASK
            self.inc(l2_offset, self.cs)
            if l2_offset % self.cs:
                self.res.corrupt("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry "
                                 "corrupted" % l2_offset)
            self._check_l2(l2_offset, active)

    def _check_l2(self, l2_offset, active):
        res, cs = self.res, self.cs
        next_contiguous = 0
        entries, bitmaps = self.image.l2_table(l2_offset)
        for i, entry in enumerate(entries):
            bitmap = bitmaps[i]
            kind = self.image.cluster_type(entry)
            if kind != COMPRESSED_T and entry & L2E_STD_RESERVED_MASK:
                res.corrupt("ERROR found l2 entry with reserved bits set: %x" % entry)
            if kind == COMPRESSED_T:
                coffset_mask = (1 << (70 - self.bits)) - 1
                if entry & COPIED:
                    res.corrupt("ERROR: coffset=0x%x: copied flag must never be set for compressed "
                                "clusters" % (entry & coffset_mask))
                    entry &= ~COPIED
                if self.data_file:
                    res.corrupt("ERROR compressed cluster %d with data file, entry=0x%x" % (i, entry))
                    continue
                if bitmap:
                    res.corrupt("ERROR compressed cluster %d with non-zero subcluster allocation "
                                "bitmap, entry=0x%x" % (i, entry))
                    continue
                coffset = entry & coffset_mask
                nsect = ((entry >> (70 - self.bits)) & ((1 << (self.bits - 8)) - 1)) + 1
                self.inc(coffset, nsect * 512 - (coffset & 511))
                if active:
                    res.allocated_clusters += 1
                    res.compressed_clusters += 1
                    res.fragmented_clusters += 1
            elif kind in (NORMAL, ZERO_ALLOC):
                offset = entry & L2E_OFFSET_MASK
                if (bitmap >> 32) & bitmap:
                    res.corrupt("ERROR offset=%x: Allocated cluster has corrupted subcluster "
                                "allocation bitmap" % offset)
                if offset % cs:
                    data = bitmap & ALL_ALLOC if self.image.ext_l2 else not entry & ZERO
                    if data:
                        res.corrupt("ERROR offset=%x: Data cluster is not properly aligned; L2 entry "
                                    "corrupted." % offset)
                    else:
                        res.corrupt("ERROR offset=%x: Preallocated cluster is not properly aligned; "
                                    "L2 entry corrupted." % offset)
                if active:
                    res.allocated_clusters += 1
                    if next_contiguous and offset != next_contiguous:
                        res.fragmented_clusters += 1
                    next_contiguous = offset + cs
                if not self.data_file:
                    self.inc(offset, cs)
            elif kind == UNALLOCATED and bitmap & ALL_ALLOC:
                res.corrupt("ERROR: Unallocated cluster has non-zero subcluster allocation map")

    def _check_bitmaps(self):
        if self.image.bitmaps is None:
            return
        dir_off, dir_size, _ = self.image.bitmaps
        self.inc(dir_off, dir_size)
        for t_off, t_size in self.image.bitmap_tables:
            self.inc(t_off, t_size * 8)
            table = self.image.qwords(t_off, t_size)
            for e in table:
                off = e & L2E_OFFSET_MASK
                if e & BME_TABLE_RESERVED or (off and (e & 1 or off % self.cs)):
                    self.res.corrupt()
                    raise Abort("Invalid argument")
            for e in table:
                if e & L2E_OFFSET_MASK:
                    self.inc(e & L2E_OFFSET_MASK, self.cs)

    def _check_refblocks(self):
        res = self.res
        for i, entry in enumerate(self.image.reftable):
            offset = entry & REFT_OFFSET_MASK
            cluster = offset >> self.bits
            if entry & REFT_RESERVED_MASK:
                res.corrupt("ERROR refcount table entry %d has reserved bits set" % i)
            elif offset % self.cs:
                res.corrupt("ERROR refcount block %d is not cluster aligned; refcount table entry "
                            "corrupted" % i)
            elif cluster >= self.nb_clusters:
                res.corrupt("ERROR refcount block %d is outside image" % i)
            elif offset:
                self.inc(offset, self.cs)
                if self.imrt.get(cluster, 0) != 1:
                    res.corrupt("ERROR refcount block %d refcount=%d"
                                % (i, self.imrt.get(cluster, 0)))

    def _compare(self, fix=0):
        """Stored against counted refcounts, repairing what *fix* allows
        (FIX_LEAKS: lower a refcount above its references; FIX_ERRORS: raise
        one below them, unless it is 0: that needs a rebuild); returns the
        highest cluster either calls used."""
        res, imrt, highest = self.res, self.imrt, 0
        stored_refcount = self.image.stored
        for c in range(self.nb_clusters):
            try:
                stored = stored_refcount(c)
            except RefcountEIO:
                res.error("Can't get refcount for cluster %d: Input/output error" % c)
                continue
            counted = imrt.get(c, 0)
            if stored or counted:
                highest = c
            if stored == counted:
                continue
            kind = None
            if not stored:
                self.rebuild = True
            elif stored > counted and fix & FIX_LEAKS:
                kind = "leak"
            elif stored < counted and fix & FIX_ERRORS:
                kind = "corruption"
            line = "%s cluster %d refcount=%d reference=%d" % (
                "Repairing" if kind else "ERROR" if stored < counted else "Leaked", c, stored,
                counted)
            if kind:
                res.repaired(line, kind)
                self.writer.refcount(c, counted)
            elif stored < counted:
                res.corrupt(line)
            else:
                res.leak(line)
        return highest

    def _check_copied(self, repair=False):
        """The COPIED flag of active L1 and L2 entries against refcount 1
        (set or cleared to match it when *repair*)."""
        res = self.res
        for i, l1e in enumerate(self.image.l1):
            l2_offset = l1e & L1E_OFFSET_MASK
            if not l2_offset:
                continue
            try:
                refcount = self.image.stored(l2_offset >> self.bits)
            except RefcountEIO:
                continue
            if (refcount == 1) != bool(l1e & COPIED):
                line = "%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d" % (
                    "Repairing" if repair else "ERROR", i, l1e, refcount)
                if repair:
                    res.repaired(line, "corruption")
                    self.writer.l1_entry(i, l1e ^ COPIED)
                else:
                    res.corrupt(line)
            entries, _ = self.image.l2_table(l2_offset)
            for j, entry in enumerate(entries):
                if self.image.cluster_type(entry) not in (NORMAL, ZERO_ALLOC):
                    continue
                if self.data_file:
                    refcount = 1
                else:
                    try:
                        refcount = self.image.stored((entry & L2E_OFFSET_MASK) >> self.bits)
                    except RefcountEIO:
                        continue
                if (refcount == 1) != bool(entry & COPIED):
                    line = "%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d" % (
                        "Repairing" if repair else "ERROR", entry, refcount)
                    if repair:
                        res.repaired(line, "corruption")
                        self.writer.l2_entry(l2_offset, j, entry ^ COPIED)
                    else:
                        res.corrupt(line)
