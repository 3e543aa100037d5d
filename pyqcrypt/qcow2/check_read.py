# SPDX-License-Identifier: LGPL-2.1-or-later
"""The image as qemu-img check (7.2) reads it, for ``check.py``.

This module owns the reading side of the check: opening the header as
QEMU's open does in check mode (only what qemu-img refuses to open is an
Error), the refcount table, the active L1 table and the persistent bitmap
directory read up front, the snapshot table read leniently, L2 tables and
the stored refcount of any cluster read on demand, and the type of an L2
entry.  Counting references and comparing them is ``check.py``'s job.

Reads past the end of the file return zeros, as QEMU's block layer does,
so damaged tables are followed exactly as far as qemu-img follows them;
reads beyond the largest offset that layer allows fail (``ReadEIO``).
"""

import os
import struct

from ..errors import Error, FormatError
from .header import AUTOCLEAR_BITMAPS, EXT_BITMAPS, Qcow2Header
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


class Abort(Exception):
    """The check stops (qemu-img: "Check failed: <errno text>")."""


class RefcountEIO(Exception):
    """A stored refcount cannot be read (misaligned refcount block, or
    past the largest offset QEMU's block layer reads: ReadEIO)."""


class ReadEIO(Exception):
    pass


def hex_or_zero(value):
    """C's %#x: 0x-prefixed, but plain 0 for zero."""
    return "0x%x" % value if value else "0"


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


class CheckedImage:
    """The image under check: its header and the tables read when it is
    opened (``reftable``, ``l1``, ``bitmaps`` and ``bitmap_tables``), and
    reads of the rest as the check reaches it.  What QEMU's open prints or
    signals on the way goes into *res* (a CheckResult)."""

    def __init__(self, st, path, res):
        self.st = st
        self.res = res
        self.file_len = st.size()
        self.h = h = _open_header(st, path, self.file_len)
        self.cs = h.cluster_size
        self.bits = h.cluster_bits
        self.ext_l2 = h.extended_l2
        self.data_file = h.has_data_file
        self.rc_bits = h.refcount_bits
        self.rb_bits = self.bits + 3 - h.refcount_order        # refcounts per block, log2
        try:
            self.reftable = self.qwords(h.refcount_table_offset,
                                        h.refcount_table_clusters * self.cs // 8)
            self.l1 = self.qwords(h.l1_table_offset, h.l1_size)
            self.bitmaps = self._bitmap_extension()
            self.bitmap_tables = self._bitmap_list() if self.bitmaps else ()
        except ReadEIO:
            raise FormatError("Could not read the refcount table, L1 table or bitmap directory: "
                              "Input/output error", path=path) from None
        self.blocks = {}
        self.signaled = False

    def read(self, offset, length):
        """*length* bytes at *offset*, zeros past the end of the file."""
        if offset + length > MAX_IO_END:
            raise ReadEIO()
        n = max(0, min(length, self.file_len - offset))
        data = self.st.pread(offset, n, "qcow2 metadata") if n else b""
        return data + bytes(length - n)

    def qwords(self, offset, count):
        return struct.unpack(">%dQ" % count, self.read(offset, count * 8)) if count else ()

    def l2_table(self, offset):
        """(entries, subcluster bitmaps) of the L2 table at *offset* (none
        past the end of the file, where it would read as all zeros)."""
        if offset >= self.file_len:
            return (), ()
        words = self.qwords(offset, self.cs // 8)
        if self.ext_l2:
            return words[0::2], words[1::2]
        return words, (0,) * len(words)

    def stored(self, cluster):
        """The refcount the image stores for *cluster* (RefcountEIO when
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
                    "further non-fatal corruption events will be suppressed"
                    % (hex_or_zero(off), hex_or_zero(ti)))
            raise RefcountEIO()
        if off + self.cs > MAX_IO_END:
            raise RefcountEIO()
        if off >= self.file_len:
            return 0                    # all zeros (and not cached: a table may list many)
        block = self.blocks.get(off)
        if block is None:
            block = self.blocks[off] = self.read(off, self.cs)
        return get_refcount(block, cluster & ((1 << self.rb_bits) - 1), self.rc_bits)

    def cluster_type(self, entry):
        if entry & COMPRESSED:
            return COMPRESSED_T
        if entry & ZERO and not self.ext_l2:
            return ZERO_ALLOC if entry & L2E_OFFSET_MASK else ZERO_PLAIN
        if not entry & L2E_OFFSET_MASK:
            return NORMAL if self.data_file and entry & COPIED else UNALLOCATED
        return NORMAL

    def read_snapshots(self):
        """((id, name, l1 offset, l1 size, extra data size) of each
        snapshot, the table's size in bytes), read as QEMU's check does (no
        bounds against the file: past its end are zeros)."""
        h, res = self.h, self.res
        offset = start = h.snapshots_offset

        def fail(msg, hint, errno_text):
            res.error("qemu-img: ERROR " + msg)
            res.messages.extend([hint] if hint else [])
            raise Abort(errno_text)

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
                    ">QIHHIIQII", self.read(offset, 40))
                if extra > MAX_SNAPSHOT_EXTRA:
                    fail(read_failed + "Too much extra metadata in snapshot table entry %d" % i,
                         "You can force-remove this extra metadata with qemu-img check -r all",
                         "File too large")
                offset += 40 + extra
                ident = self.read(offset, id_len).split(b"\0", 1)[0]
                name = self.read(offset + id_len, name_len).split(b"\0", 1)[0]
            except ReadEIO:
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
        return out, offset - start if out else 0

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
        raw = self.read(dir_off, dir_size)
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
