# SPDX-License-Identifier: LGPL-2.1-or-later
"""The qcow2 header (versions 2 and 3) and its header extensions.

Parsing treats the file as untrusted: sizes and offsets are range-checked
before anything is allocated or followed, and every failure is a
``FormatError`` naming the field.  Unknown header extensions are kept and
written back unchanged; the feature-name table is regenerated.
"""

import struct
from typing import TYPE_CHECKING, List, Optional, Tuple

from ..errors import FormatError

if TYPE_CHECKING:       # checked as the dataclasses they behave as
    from dataclasses import dataclass, field
else:                   # no inspect/ast import at start-up (see _record)
    from .._record import dataclass, field

# The most of a file read to parse a header and its extensions.
MAX_HEADER_READ = 1 << 20

MAGIC = b"QFI\xfb"
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_FDE = 0x0537BE77
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
KNOWN_INCOMPAT = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION
                  | INCOMPAT_EXTL2)
SUBCLUSTERS = 32                # per cluster with extended L2 entries
MIN_EXTL2_CLUSTER_BITS = 14     # QEMU: subclusters of at least 512 bytes
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2
COMPRESSION_TYPES = {0: "zlib", 1: "zstd"}     # header byte 104 (v3, header_length > 104)

MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104          # 112 with the compression type byte and padding
QEMU_V3_HEADER_LENGTH = 112     # what qemu-img 7.2 writes: the compression type, padded to 8
MAX_L1_BYTES = 32 << 20         # QEMU's QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20    # QEMU's QCOW_MAX_REFTABLE_SIZE
MAX_EXTENSIONS_BYTES = 1 << 20
MAX_SNAPSHOTS = 65536           # QEMU's QCOW_MAX_SNAPSHOTS

# The feature-name table QEMU writes: (type, bit, name); type 0 incompatible,
# 1 compatible, 2 autoclear.
FEATURE_NAMES = (
    (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"),
    (0, 3, "compression type"), (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"),
)

_V2 = ">4sIQIIQIIQQIIQ"


@dataclass
class Qcow2Header:
    version: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    backing_file_offset: int = 0
    backing_file_size: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = QEMU_V3_HEADER_LENGTH
    compression_type: int = 0
    extensions: List[Tuple[int, bytes]] = field(default_factory=list)
    # Where each parsed extension (its type field) is in the file, for messages.
    extension_offsets: dict = field(default_factory=dict, repr=False, compare=False)
    backing_file: Optional[str] = None

    # ---- derived ------------------------------------------------------------
    @property
    def cluster_size(self):
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self):
        return 1 << self.refcount_order

    @property
    def extended_l2(self):
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def l2_entry_size(self):
        """8 bytes, or 16 with extended L2 entries (entry + subcluster bitmap)."""
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self):
        return self.cluster_size // self.l2_entry_size

    @property
    def subcluster_size(self):
        return self.cluster_size // SUBCLUSTERS if self.extended_l2 else self.cluster_size

    @property
    def backing_format(self):
        """The backing file's format name from its header extension, or None."""
        fmt = self.extension(EXT_BACKING_FORMAT)
        return None if fmt is None else fmt.rstrip(b"\0").decode("ascii")

    def extension_offset(self, ext_type):
        """File offset of a parsed extension (the end of the fixed header
        for one that was not parsed from a file)."""
        return self.extension_offsets.get(ext_type, self.header_length)

    def extension(self, ext_type):
        for t, data in self.extensions:
            if t == ext_type:
                return data
        return None

    def set_extension(self, ext_type, data):
        """Replace (or add, before unknown ones) the extension *ext_type*."""
        for i, (t, _) in enumerate(self.extensions):
            if t == ext_type:
                if data is None:
                    del self.extensions[i]
                else:
                    self.extensions[i] = (ext_type, data)
                return
        if data is not None:
            self.extensions.append((ext_type, data))

    @property
    def fde(self):
        """(offset, length) of the full-disk-encryption region, or None."""
        data = self.extension(EXT_FDE)
        return struct.unpack(">QQ", data) if data is not None and len(data) == 16 else None

    @property
    def data_file(self):
        data = self.extension(EXT_DATA_FILE)
        return data.decode("utf-8", "replace") if data is not None else None

    @property
    def has_data_file(self):
        return bool(self.incompatible_features & INCOMPAT_DATA_FILE)

    @property
    def has_bitmaps(self):
        """Persistent dirty bitmaps (opening the image for writing would
        invalidate them: verbs that write check this before opening)."""
        return self.extension(EXT_BITMAPS) is not None

    @property
    def data_file_raw(self):
        return bool(self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW)

    # ---- parsing --------------------------------------------------------------
    @classmethod
    def parse(cls, data, file_size, path=None):
        """Parse the first cluster-or-so of a qcow2 file (*data* holds at
        least the header and its extensions when they fit in 1 MiB).  Every
        field is checked before it is used: a FormatError names the first
        one that is wrong, with its offset."""
        from . import header_checks as checks
        hdr = cls._parse_fields(data, path)
        checks.check_features(hdr, path)
        checks.check_tables(hdr, file_size, path)
        hdr._parse_extensions(data, path)
        checks.parse_names(hdr, data, path)
        checks.check_encryption(hdr, file_size, path)
        return hdr

    @classmethod
    def _parse_fields(cls, data, path):
        """The fixed v2/v3 fields, version and header length checked."""
        if len(data) < 4 or data[:4] != MAGIC:
            field_error("not a qcow2 image (bad magic)", "magic", 0, path)
        if len(data) < V2_HEADER_LENGTH:
            field_error("qcow2 header truncated", "header", len(data), path)
        (_, version, bf_off, bf_size, cbits, size, crypt, l1_size, l1_off, rt_off, rt_clusters,
         nsnap, snap_off) = struct.unpack_from(_V2, data, 0)
        if version not in (2, 3):
            field_error("unsupported qcow2 version %d" % version, "version", 4, path)
        hdr = cls(version, cbits, size, crypt, l1_size, l1_off, rt_off, rt_clusters, nsnap,
                  snap_off, bf_off, bf_size)
        if version == 2:
            hdr.refcount_order, hdr.header_length = 4, V2_HEADER_LENGTH
            return hdr
        if len(data) < V3_HEADER_LENGTH:
            field_error("qcow2 v3 header truncated", "header", len(data), path)
        (hdr.incompatible_features, hdr.compatible_features, hdr.autoclear_features,
         hdr.refcount_order, hdr.header_length) = struct.unpack_from(">QQQII", data, 72)
        if hdr.header_length < V3_HEADER_LENGTH or \
                hdr.header_length % 8 and hdr.header_length != V3_HEADER_LENGTH:
            field_error("header length %d is invalid" % hdr.header_length, "header_length", 100, path)
        if hdr.header_length > len(data):
            field_error("header length %d runs past the data read" % hdr.header_length,
                 "header_length", 100, path)
        if hdr.header_length > V3_HEADER_LENGTH:
            hdr.compression_type = data[V3_HEADER_LENGTH]
        return hdr

    def _parse_extensions(self, data, path):
        off = self.header_length
        end = min(len(data), self.cluster_size, MAX_EXTENSIONS_BYTES)
        while True:
            if off + 8 > end:
                raise FormatError("header extensions run past the first cluster", field="extensions",
                                  offset=off, path=path)
            ext_type, length = struct.unpack_from(">II", data, off)
            if ext_type == EXT_END:
                return
            if off + 8 + length > end:
                raise FormatError("header extension 0x%08x (%d bytes) runs past the first cluster"
                                  % (ext_type, length), field="extensions", offset=off, path=path)
            body = bytes(data[off + 8:off + 8 + length])
            if ext_type != EXT_FEATURE_TABLE:
                self.extensions.append((ext_type, body))
                self.extension_offsets.setdefault(ext_type, off)
            off += 8 + (length + 7) // 8 * 8

    # ---- serialization -------------------------------------------------------------
    def pack(self):
        """The header, its extensions and the feature table (< 1 cluster)."""
        out = bytearray(struct.pack(
            _V2, MAGIC, self.version, self.backing_file_offset, self.backing_file_size,
            self.cluster_bits, self.size, self.crypt_method, self.l1_size, self.l1_table_offset,
            self.refcount_table_offset, self.refcount_table_clusters, self.nb_snapshots,
            self.snapshots_offset))
        if self.version == 3:
            out += struct.pack(">QQQII", self.incompatible_features, self.compatible_features,
                               self.autoclear_features, self.refcount_order, self.header_length)
            out += bytes(self.header_length - len(out))
            if self.header_length > V3_HEADER_LENGTH:
                out[V3_HEADER_LENGTH] = self.compression_type
        exts = list(self.extensions)
        if self.version == 3:
            table = b"".join(struct.pack(">BB46s", t, b, n.encode()) for t, b, n in FEATURE_NAMES)
            exts.append((EXT_FEATURE_TABLE, table))
        for ext_type, body in _ordered(exts):
            out += struct.pack(">II", ext_type, len(body)) + body
            out += bytes((8 - len(body) % 8) % 8)
        out += struct.pack(">II", EXT_END, 0)
        if self.backing_file:
            # The name follows the extensions, as qemu-img lays it out.
            name = self.backing_file.encode("utf-8")
            self.backing_file_offset, self.backing_file_size = len(out), len(name)
            struct.pack_into(">QI", out, 8, len(out), len(name))
            out += name
        else:
            self.backing_file_offset = self.backing_file_size = 0
            struct.pack_into(">QI", out, 8, 0, 0)
        if len(out) > self.cluster_size:
            raise FormatError("header and extensions do not fit in one %d-byte cluster"
                              % self.cluster_size, field="extensions")
        return bytes(out)


def _ordered(exts):
    """QEMU's order: backing format, data file, FDE, feature table, then the rest."""
    rank = {EXT_BACKING_FORMAT: 0, EXT_DATA_FILE: 1, EXT_FDE: 2, EXT_FEATURE_TABLE: 3}
    return sorted(exts, key=lambda e: rank.get(e[0], 4))


def field_error(msg, fld, off, path):
    raise FormatError(msg, field=fld, offset=off, path=path)
