# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 repair, as qemu-img check -r leaks|all (7.2) does it.

This module owns the repairing run and its writes.  The run is the check
of ``check.py`` in qemu-img's order for a repair: count the references,
compare without repairing (printing what is found), then, when anything
differs, compare again repairing (lower a refcount above its references
with -r leaks, raise one below them with -r all), fix the COPIED flags
(always with -r all; with -r leaks only when nothing else is left), and
clear the dirty and corrupt header bits when no corruption remains.  When
anything was repaired the caller checks the image again, as qemu-img
does, and prints that second result.

What qemu-img repairs by rebuilding the refcount structure (a used
cluster with refcount 0, a damaged refcount table or block), by growing
the file (a refcount block past its end), by rewriting L2 entries or the
snapshot table, and images with persistent bitmaps (which qemu-img
rewrites when it opens them for writing), are refused before anything is
written.  With -r leaks an image that needs a rebuild fails as qemu-img's
does ("ERROR need to rebuild refcount structures").

Write order, so that a process killed after any write leaves an image no
worse than before: refcounts first (each write moves one refcount to the
number of references the walk counted, so none ever drops below its
references: a lowered refcount belongs to a leaked reference), then a
sync, then the zeroing of clusters freed (qemu-img discards them; they are
unreferenced, so their bytes cannot matter; pyqcrypt writes zeros where
they hold data, so the file's bytes match qemu-img's result but the space
is not given back to the file system), then the COPIED flags (after
the sync, a cleared flag never meets a refcount still at 1 on a shared
cluster), a sync, and the header's dirty/corrupt bits last.
"""

import struct

from ..errors import Error
from .check import FIX_ERRORS, FIX_LEAKS, _Check
from .check_read import REFT_OFFSET_MASK, Abort, ReadEIO
from .header import INCOMPAT_CORRUPT, INCOMPAT_DIRTY
from .refcounts import set_refcount

INCOMPAT_OFFSET = 72        # the incompatible features field of a version 3 header

# Findings of the counting pass that qemu-img -r all repairs in ways this
# module does not (rewriting L2 entries or the snapshot table, growing the file)
_NOT_REPAIRED = ("Preallocated cluster is not properly aligned", "is outside image",
                 "snapshot table entry")
# Findings after which qemu-img rebuilds the refcount structure
_REBUILD = ("ERROR refcount table entry", "refcount table entry corrupted",
            "ERROR refcount block")


def parse_fix(text):
    """-r's argument: FIX_LEAKS for "leaks", both bits for "all"."""
    if text == "leaks":
        return FIX_LEAKS
    if text == "all":
        return FIX_LEAKS | FIX_ERRORS
    raise Error("Unknown option value for -r (expecting 'leaks' or 'all'): %s" % text)


def repair_qcow2(st, path, fix):
    """Check and repair the qcow2 image open for writing in *st* (locked
    by the caller).  Returns (the repairing run's CheckResult, the second
    check's or None when nothing was repaired)."""
    writer = _Writer(st)
    first = _RepairRun(st, path, writer, fix).run()
    if not (first.leaks_fixed or first.corruptions_fixed):
        return first, None
    second = _Check(st, path).run()
    return first, second


class _Writer:
    """The repair's writes, in the order the module docstring gives."""

    def __init__(self, st):
        self.st = st
        self.image = None
        self.freed = []

    def refcount(self, cluster, value):
        """Store *value* as *cluster*'s refcount (its block exists: the
        stored refcount was not 0)."""
        image = self.image
        off = image.reftable[cluster >> image.rb_bits] & REFT_OFFSET_MASK
        block = bytearray(image.blocks.get(off) or image.read(off, image.cs))
        index = cluster & ((1 << image.rb_bits) - 1)
        set_refcount(block, index, value, image.rc_bits)
        first = index * image.rc_bits // 8
        last = first + max(1, image.rc_bits // 8)
        self.st.pwrite(off + first, bytes(block[first:last]))
        image.blocks[off] = bytes(block)
        if not value:
            self.freed.append(cluster)

    def settle_refcounts(self):
        """Make the refcounts durable, then zero the clusters freed where
        they hold data (qemu-img punches holes there; Storage cannot, so
        the bytes match but the space is not given back; a hole is left
        as it is, never filled)."""
        self.st.sync()
        image = self.image
        for cluster in self.freed:
            start = cluster * image.cs
            for begin, end in self.st.data_runs(start, min(image.cs, image.file_len - start)):
                self.st.pwrite(start + begin, bytes(end - begin))
        if self.freed:
            self.st.sync()

    def l1_entry(self, index, value):
        self.st.pwrite(self.image.h.l1_table_offset + 8 * index, struct.pack(">Q", value))

    def l2_entry(self, l2_offset, index, value):
        width = 16 if self.image.ext_l2 else 8
        self.st.pwrite(l2_offset + width * index, struct.pack(">Q", value))

    def mark_clean(self):
        """Clear the dirty and corrupt bits (qemu's mark_clean and
        mark_consistent), after everything else is durable."""
        h = self.image.h
        bits = h.incompatible_features
        if h.version >= 3 and bits & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT):
            self.st.sync()
            self.st.pwrite(INCOMPAT_OFFSET,
                           struct.pack(">Q", bits & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT)))
            self.st.sync()


class _RepairRun(_Check):
    """qcow2_check_refcounts with a repair mode, over check.py's passes."""

    def __init__(self, st, path, writer, fix):
        super().__init__(st, path, writer)
        writer.image = self.image
        self.fix = fix
        if self.h.has_bitmaps:
            raise Error("%s has persistent bitmaps; pyqcrypt does not repair such images "
                        "(nothing was written)" % path)

    def run(self):
        res, h = self.res, self.h
        res.total_clusters = -(-(h.size // 512 * 512) // self.cs)
        try:
            snapshots, snapshots_size = self.image.read_snapshots()
            self._calculate(snapshots, snapshots_size)
            self._refuse_unsupported()
            counts = (len(res.corruptions), len(res.leaks), len(res.check_errors))
            highest = self._compare()
            if self.rebuild:
                self._need_rebuild()
            if res.leaks or res.corruptions:
                del res.corruptions[counts[0]:], res.leaks[counts[1]:]
                del res.check_errors[counts[2]:]
                highest = self._compare(self.fix)
            self.writer.settle_refcounts()
            self._check_copied(bool(self.fix & FIX_ERRORS) or not (
                res.check_errors or res.corruptions or res.leaks))
            self.writer.st.sync()
            res.image_end_offset = (highest + 1) * self.cs
        except Abort as exc:
            res.failed = str(exc)
        except ReadEIO:
            res.failed = "Input/output error"
        if res.failed is None and not (res.check_errors or res.corruptions):
            self.writer.mark_clean()
        return res

    def _refuse_unsupported(self):
        """Before any write: what this module does not repair."""
        if any(text in line for line in self.res.corruptions for text in _REBUILD):
            self.rebuild = True
        if self.fix & FIX_ERRORS:
            for line in self.res.corruptions:
                if any(text in line for text in _NOT_REPAIRED):
                    raise Error("%s: qemu-img check -r all would repair this by rewriting "
                                "metadata, which pyqcrypt does not do (%s); nothing was written"
                                % (self.res.path, line))
            if self.rebuild:
                self._need_rebuild()

    def _need_rebuild(self):
        if self.fix & FIX_ERRORS:
            raise Error("%s: repairing this image needs its refcount structure rebuilt, which "
                        "pyqcrypt does not do (qemu-img check -r all does); nothing was written"
                        % self.res.path)
        self.res.error("ERROR need to rebuild refcount structures")
        raise Abort("Input/output error")
