# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 consistency check, as qemu-img check (7.2, without -r) does it.

This module owns the check itself: it opens the image as QEMU does in
check mode (only what qemu-img refuses to open is an Error here), reads the
snapshot table leniently, builds an in-memory count of the references to
every host cluster (header, active and snapshot L1 tables and the L2
tables and clusters they reach, snapshot table, refcount table and blocks,
the LUKS header region, persistent bitmaps), compares it with the stored
refcounts, then checks the COPIED flags of the active tables.  Counts,
messages and statistics are qemu-img's, found in the same order; how they
are printed (summary on stdout, per-item lines on stderr, exit codes 0
clean, 2 corruptions, 3 leaks only, 1 the check could not complete) is
``check_report.py``'s job.

Reads past the end of the file return zeros, as QEMU's block layer does,
so damaged tables are followed exactly as far as qemu-img follows them.
"""

import os
import struct

from ..errors import Error, FormatError
from ..storage import Storage
from .check_report import CheckResult
from .header import AUTOCLEAR_BITMAPS, CRYPT_LUKS, EXT_BITMAPS, Qcow2Header
from .header import MAX_HEADER_READ
from .open import backing_path, data_file_path
from .refcounts import get_refcount

L1E_OFFSET_MASK = L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
REFT_RESERVED_MASK = 0x1FF
COPIED, COMPRESSED, ZERO = 1 << 63, 1 << 62, 1
ALL_ALLOC = 0xFFFFFFFF
MAX_L1_ENTRIES = (32 << 20) // 8             # QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20                 # QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOT_EXTRA = 1024
MAX_SNAPSHOT_TABLE = 1024 * 65536
MAX_BITMAPS, MAX_BITMAP_DIR = 65535, 1024 * 65535
BME_TABLE_RESERVED = 0xFF000000000001FE
LARGE = 1 << 62                              # "file size" for the header parser: no EOF checks
MAX_IO_END = (1 << 63) - (1 << 30)           # BDRV_MAX_LENGTH: reads beyond it fail with EIO

NORMAL, ZERO_ALLOC, ZERO_PLAIN, UNALLOCATED, COMPRESSED_T = range(5)


class _Abort(Exception):
    """The check stops (qemu-img: "Check failed: <errno text>")."""


class _RefcountEIO(Exception):
    """A stored refcount cannot be read (misaligned refcount block, or
    past the largest offset QEMU's block layer reads: _ReadEIO)."""


class _ReadEIO(Exception):
    pass


def _x(value):
    """C's %#x: 0x-prefixed, but plain 0 for zero."""
    return "0x%x" % value if value else "0"


def check_qcow2(path):
    """Check the qcow2 image at *path*.  Returns a CheckResult; raises an
    Error (FormatError for bad metadata) only when qemu-img would not open
    the image at all."""
    with Storage(path) as st:
        return _Check(st, path).run()


def _open_header(st, path, size):
    """The header, validated as QEMU's open in check mode does: the
    features, extensions and names by pyqcrypt's parser, the tables only
    for size and alignment (not where they lie: the check reports that)."""
    raw = st.pread(0, min(size, MAX_HEADER_READ), "qcow2 header")
    tables = None
    if len(raw) >= 72:          # neutral tables for the parser; QEMU's rules below
        tables = struct.unpack_from(">Q", raw, 24) + struct.unpack_from(">IQQIIQ", raw, 36)
        raw = bytearray(raw)
        struct.pack_into(">Q", raw, 24, 0)
        struct.pack_into(">IQQIIQ", raw, 36, 0, 0, 1 << min(63, raw[23]), 1, 0, 0)
    h = Qcow2Header.parse(bytes(raw), LARGE, path=path)
    (h.size, h.l1_size, h.l1_table_offset, h.refcount_table_offset, h.refcount_table_clusters,
     h.nb_snapshots, h.snapshots_offset) = tables
    cs = h.cluster_size

    def bad(msg, fld, off):
        raise FormatError(msg, field=fld, offset=off, path=path)

    for name, fld, off, entries, entry_len, limit, where in (
            ("Reference count table", "refcount_table_offset", 48, h.refcount_table_clusters, cs,
             MAX_REFTABLE_BYTES, h.refcount_table_offset),
            ("Active L1 table", "l1_table_offset", 40, h.l1_size, 8, MAX_L1_ENTRIES * 8,
             h.l1_table_offset)):
        if entries > limit // entry_len:
            bad("%s too large" % name, fld, off)
        if (1 << 63) - 1 - entries * entry_len < where or where % cs:
            bad("%s offset invalid" % name, fld, off)
    l1_needed = -(-h.size // (cs * h.l2_entries))
    if l1_needed > 0x7FFFFFFF:
        bad("Image is too big", "size", 24)
    if h.l1_size < l1_needed:
        bad("L1 table is too small", "l1_size", 36)
    if h.has_data_file:
        name = data_file_path(path, h)
        if not os.path.exists(name):
            raise Error("Could not open '%s': Could not open '%s': No such file or directory"
                        % (path, name))
    if h.backing_file and not os.path.exists(backing_path(path, h.backing_file)):
        raise Error("Could not open backing file '%s': No such file or directory"
                    % backing_path(path, h.backing_file))
    return h


class _Check:
    def __init__(self, st, path):
        self.st = st
        self.res = CheckResult(path)
        self.file_len = st.size()
        self.h = h = _open_header(st, path, self.file_len)
        self.cs = h.cluster_size
        self.bits = h.cluster_bits
        self.ext_l2 = h.extended_l2
        self.data_file = h.has_data_file
        self.rc_bits = h.refcount_bits
        self.rc_max = (1 << self.rc_bits) - 1
        self.rb_bits = self.bits + 3 - h.refcount_order        # refcounts per block, log2
        try:
            self.reftable = self._qwords(h.refcount_table_offset,
                                         h.refcount_table_clusters * self.cs // 8)
            self.l1 = self._qwords(h.l1_table_offset, h.l1_size)
            self.bitmaps = self._bitmap_extension()
            self.bitmap_tables = self._bitmap_list() if self.bitmaps else ()
        except _ReadEIO:
            raise FormatError("Could not read the refcount table, L1 table or bitmap directory: "
                              "Input/output error", path=path) from None
        self.imrt = {}
        self.nb_clusters = -(-self.file_len // self.cs)
        self.blocks = {}
        self.signaled = False

    def _read(self, offset, length):
        """*length* bytes at *offset*, zeros past the end of the file."""
        if offset + length > MAX_IO_END:
            raise _ReadEIO()
        n = max(0, min(length, self.file_len - offset))
        data = self.st.pread(offset, n, "qcow2 metadata") if n else b""
        return data + bytes(length - n)

    def _qwords(self, offset, count):
        return struct.unpack(">%dQ" % count, self._read(offset, count * 8)) if count else ()

    def _l2_table(self, offset):
        """(entries, subcluster bitmaps) of the L2 table at *offset* (none
        past the end of the file, where it would read as all zeros)."""
        if offset >= self.file_len:
            return (), ()
        words = self._qwords(offset, self.cs // 8)
        if self.ext_l2:
            return words[0::2], words[1::2]
        return words, (0,) * len(words)

    def _stored(self, cluster):
        """The refcount the image stores for *cluster* (_RefcountEIO when
        its refcount block is misaligned, signalled once as QEMU does)."""
        ti = cluster >> self.rb_bits
        if ti >= len(self.reftable):
            return 0
        off = self.reftable[ti] & REFT_OFFSET_MASK
        if not off:
            return 0
        if off % self.cs:
            if not self.signaled:
                self.signaled = True
                self.res.messages.append(
                    "qcow2: Image is corrupt: Refblock offset %s unaligned (reftable index: %s); "
                    "further non-fatal corruption events will be suppressed" % (_x(off), _x(ti)))
            raise _RefcountEIO()
        if off + self.cs > MAX_IO_END:
            raise _RefcountEIO()
        if off >= self.file_len:
            return 0                    # all zeros (and not cached: a table may list many)
        block = self.blocks.get(off)
        if block is None:
            block = self.blocks[off] = self._read(off, self.cs)
        return get_refcount(block, cluster & ((1 << self.rb_bits) - 1), self.rc_bits)

    def _cluster_type(self, entry):
        if entry & COMPRESSED:
            return COMPRESSED_T
        if entry & ZERO and not self.ext_l2:
            return ZERO_ALLOC if entry & L2E_OFFSET_MASK else ZERO_PLAIN
        if not entry & L2E_OFFSET_MASK:
            return NORMAL if self.data_file and entry & COPIED else UNALLOCATED
        return NORMAL

    def inc(self, offset, size):
        """Count one reference to every cluster of [offset, offset+size)."""
        if size <= 0:
            return
        if offset + size - self.file_len >= self.cs:
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
            snapshots = self._read_snapshots()
            self._calculate(snapshots)
            highest = self._compare()
            self._check_copied()
            res.image_end_offset = (highest + 1) * self.cs
        except _Abort as exc:
            res.failed = str(exc)
        except _ReadEIO:            # a read QEMU would fail (offsets near 2**63)
            res.failed = "Input/output error"
        return res

    def _read_snapshots(self):
        """(id, name, l1 offset, l1 size, extra data size) of each snapshot,
        read as QEMU's check does (no bounds against the file: past its end
        are zeros); sets the table's size."""
        h, res = self.h, self.res
        offset = start = h.snapshots_offset

        def fail(msg, hint, errno_text):
            res.error("qemu-img: ERROR " + msg)
            res.messages.extend([hint] if hint else [])
            raise _Abort(errno_text)

        if h.nb_snapshots > 65536:
            fail("snapshot table too large", "You can force-remove all %d overhanging snapshots "
                 "with qemu-img check -r all" % (h.nb_snapshots - 65536), "File too large")
        if (1 << 63) - 1 - h.nb_snapshots * 40 < start or start % self.cs:
            fail("snapshot table offset invalid", None, "Invalid argument")
        out, table_len = [], 0
        read_failed = "failed to read the snapshot table: "
        for i in range(h.nb_snapshots):
            table_len = -(-table_len // 8) * 8
            offset = -(-offset // 8) * 8
            try:
                l1_off, l1_size, id_len, name_len, _, _, _, _, extra = struct.unpack(
                    ">QIHHIIQII", self._read(offset, 40))
                if extra > MAX_SNAPSHOT_EXTRA:
                    fail(read_failed + "Too much extra metadata in snapshot table entry %d" % i,
                         "You can force-remove this extra metadata with qemu-img check -r all",
                         "File too large")
                offset += 40 + extra
                ident = self._read(offset, id_len).split(b"\0", 1)[0]
                name = self._read(offset + id_len, name_len).split(b"\0", 1)[0]
            except _ReadEIO:
                fail(read_failed + "Failed to read snapshot table: Input/output error", None,
                     "Input/output error")
            offset += id_len + name_len
            table_len += 40 + extra + id_len + name_len
            if table_len > MAX_SNAPSHOT_TABLE or offset - start > 0x7FFFFFFF:
                fail(read_failed + "Snapshot table is too big", "You can force-remove all %d "
                     "overhanging snapshots with qemu-img check -r all" % (h.nb_snapshots - i),
                     "File too large")
            out.append((ident.decode("utf-8", "surrogateescape"),
                        name.decode("utf-8", "surrogateescape"), l1_off, l1_size, extra))
        for i, sn in enumerate(out if h.version >= 3 else ()):
            if sn[4] < 16:
                res.corrupt("ERROR snapshot table entry %d is incomplete" % i)
        self.snapshots_size = offset - start if out else 0
        return out

    def _calculate(self, snapshots):
        """QEMU's calculate_refcounts: every reference, in its order."""
        h, res = self.h, self.res
        self.inc(0, self.cs)
        self._check_l1(h.l1_table_offset, h.l1_size, active=True)
        if self.data_file and snapshots:
            res.corrupt("ERROR %d snapshots in image with data file" % len(snapshots))
        for ident, name, l1_off, l1_size, _ in snapshots:
            if l1_off % self.cs:
                res.corrupt("ERROR snapshot %s (%s) l1_offset=%s: L1 table is not cluster aligned; "
                            "snapshot table entry corrupted" % (ident, name, _x(l1_off)))
            elif l1_size > MAX_L1_ENTRIES:
                res.corrupt("ERROR snapshot %s (%s) l1_size=%s: L1 table is too large; snapshot "
                            "table entry corrupted" % (ident, name, _x(l1_size)))
            else:
                self._check_l1(l1_off, l1_size, active=False)
        self.inc(h.snapshots_offset, self.snapshots_size)
        self.inc(h.refcount_table_offset, len(self.reftable) * 8)
        if h.crypt_method == CRYPT_LUKS and h.fde is not None:
            self.inc(*h.fde)
        self._check_bitmaps()
        self._check_refblocks()

    def _check_l1(self, l1_offset, l1_size, active):
        if not l1_size:
            return
        self.inc(l1_offset, l1_size * 8)
        try:
            l1 = self._qwords(l1_offset, l1_size)
        except _ReadEIO:
            self.res.error("ERROR: I/O error in check_refcounts_l1")
            raise _Abort("Input/output error") from None
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
        entries, bitmaps = self._l2_table(l2_offset)
        for i, entry in enumerate(entries):
            bitmap = bitmaps[i]
            kind = self._cluster_type(entry)
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
                    data = bitmap & ALL_ALLOC if self.ext_l2 else not entry & ZERO
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

    def _bitmap_extension(self):
        """(directory offset, size, number of bitmaps) when the image has
        persistent bitmaps QEMU loads, else None; FormatError where QEMU's
        open fails on the extension."""
        h = self.h
        ext = h.extension(EXT_BITMAPS)
        if ext is None:
            return None
        if not h.autoclear_features & AUTOCLEAR_BITMAPS:
            self.res.preamble = "qemu-img: warning: %s\nSome clusters may be leaked, run 'qemu-img " \
                "check -r' on the image file to fix." % (
                    "This qcow2 v2 image contains bitmaps, but they may have been modified by a "
                    "program without persistent bitmap support; so now they must all be considered "
                    "inconsistent" if h.version < 3 else "a program lacking bitmap support modified "
                    "this file, so all bitmaps are now considered inconsistent")
            return None
        if len(ext) < 24:
            raise FormatError("bitmaps extension: Invalid extension length", field="bitmaps",
                              path=self.res.path)
        nb, reserved, dir_size, dir_off = struct.unpack_from(">IIQQ", ext)
        if (not 0 < nb <= MAX_BITMAPS or reserved or dir_size > MAX_BITMAP_DIR
                or dir_off % self.cs or not dir_size):
            raise FormatError("bitmaps extension is invalid", field="bitmaps", path=self.res.path)
        return dir_off, dir_size, nb

    def _bitmap_list(self):
        """(table offset, table size) of every bitmap in the directory."""
        dir_off, dir_size, nb = self.bitmaps
        raw = self._read(dir_off, dir_size)
        pos, out = 0, []
        while pos < dir_size:
            if pos + 24 > dir_size or len(out) >= nb:
                raise FormatError("Broken bitmap directory", field="bitmaps", path=self.res.path)
            t_off, t_size, flags, typ, gran, name_len, extra = struct.unpack_from(
                ">QIIBBHI", raw, pos)
            pos += -(-(24 + name_len + extra) // 8) * 8
            if (pos > dir_size or extra or not t_size or not t_off or t_off % self.cs
                    or t_size > 0x8000000 or not 9 <= gran <= 31 or flags & 0xFFFFFFFC
                    or name_len > 1023 or typ != 1):
                raise FormatError("Bitmap directory entry %d is invalid" % len(out),
                                  field="bitmaps", path=self.res.path)
            out.append((t_off, t_size))
        if len(out) != nb:
            raise FormatError("Less bitmaps found than specified in header extension",
                              field="bitmaps", path=self.res.path)
        return out

    def _check_bitmaps(self):
        if self.bitmaps is None:
            return
        dir_off, dir_size, _ = self.bitmaps
        self.inc(dir_off, dir_size)
        for t_off, t_size in self.bitmap_tables:
            self.inc(t_off, t_size * 8)
            table = self._qwords(t_off, t_size)
            for e in table:
                off = e & L2E_OFFSET_MASK
                if e & BME_TABLE_RESERVED or (off and (e & 1 or off % self.cs)):
                    self.res.corrupt()
                    raise _Abort("Invalid argument")
            for e in table:
                if e & L2E_OFFSET_MASK:
                    self.inc(e & L2E_OFFSET_MASK, self.cs)

    def _check_refblocks(self):
        res = self.res
        for i, entry in enumerate(self.reftable):
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

    def _compare(self):
        """Stored against counted refcounts; returns the highest cluster
        either calls used."""
        res, imrt, highest = self.res, self.imrt, 0
        for c in range(self.nb_clusters):
            try:
                stored = self._stored(c)
            except _RefcountEIO:
                res.error("Can't get refcount for cluster %d: Input/output error" % c)
                continue
            counted = imrt.get(c, 0)
            if stored or counted:
                highest = c
            if stored < counted:
                res.corrupt("ERROR cluster %d refcount=%d reference=%d" % (c, stored, counted))
            elif stored > counted:
                res.leak("Leaked cluster %d refcount=%d reference=%d" % (c, stored, counted))
        return highest

    def _check_copied(self):
        """The COPIED flag of active L1 and L2 entries against refcount 1."""
        res = self.res
        for i, l1e in enumerate(self.l1):
            l2_offset = l1e & L1E_OFFSET_MASK
            if not l2_offset:
                continue
            try:
                refcount = self._stored(l2_offset >> self.bits)
            except _RefcountEIO:
                continue
            if (refcount == 1) != bool(l1e & COPIED):
                res.corrupt("ERROR OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d"
                            % (i, l1e, refcount))
            entries, _ = self._l2_table(l2_offset)
            for entry in entries:
                if self._cluster_type(entry) not in (NORMAL, ZERO_ALLOC):
                    continue
                if self.data_file:
                    refcount = 1
                else:
                    try:
                        refcount = self._stored((entry & L2E_OFFSET_MASK) >> self.bits)
                    except _RefcountEIO:
                        continue
                if (refcount == 1) != bool(entry & COPIED):
                    res.corrupt("ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=%d"
                                % (entry, refcount))

