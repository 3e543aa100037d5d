# SPDX-License-Identifier: LGPL-2.1-or-later
"""The checks a qcow2 header passes before any of its fields is used:
cluster and refcount widths, feature bits and compression type; the
virtual size and the L1, refcount and snapshot tables (sizes QEMU accepts,
aligned, inside the file, apart); the backing file and data file names;
the LUKS FDE region.  Each failure is a ``FormatError`` naming the field
and its offset.  ``Qcow2Header.parse`` runs them in order."""

from ..units import ceil_div
from .header import (COMPRESSION_TYPES, CRYPT_AES, CRYPT_LUKS, CRYPT_NONE,
                     EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FDE, FEATURE_NAMES, INCOMPAT_COMPRESSION,
                     KNOWN_INCOMPAT, MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_REFTABLE_BYTES, MAX_SNAPSHOTS,
                     MIN_CLUSTER_BITS, MIN_EXTL2_CLUSTER_BITS, V3_HEADER_LENGTH, field_error)


def check_features(hdr, path):
    """Cluster and refcount widths, encryption method, feature bits and
    the compression type."""
    cbits = hdr.cluster_bits
    if not MIN_CLUSTER_BITS <= cbits <= MAX_CLUSTER_BITS:
        field_error("cluster_bits %d is out of range (%d..%d)" % (cbits, MIN_CLUSTER_BITS,
                                                           MAX_CLUSTER_BITS),
             "cluster_bits", 20, path)
    if hdr.refcount_order > 6:
        field_error("refcount_order %d is out of range (0..6)" % hdr.refcount_order,
             "refcount_order", 96, path)
    if hdr.crypt_method not in (CRYPT_NONE, CRYPT_AES, CRYPT_LUKS):
        field_error("unknown encryption method %d" % hdr.crypt_method, "crypt_method", 32, path)
    unknown = hdr.incompatible_features & ~KNOWN_INCOMPAT
    if unknown:
        field_error("unsupported incompatible feature(s) %s" % _feature_names(unknown),
             "incompatible_features", 72, path)
    # QEMU's rule: zlib (0) is the default and must not set the
    # compression-type feature bit; any other type must set it.
    ctype = hdr.compression_type
    if ctype not in COMPRESSION_TYPES:
        field_error("unknown compression type %d (known: %s)" % (
            ctype, ", ".join("%d %s" % kv for kv in sorted(COMPRESSION_TYPES.items()))),
            "compression_type", V3_HEADER_LENGTH, path)
    if hdr.extended_l2 and cbits < MIN_EXTL2_CLUSTER_BITS:
        field_error("extended L2 entries need clusters of at least %d bytes, not %d"
             % (1 << MIN_EXTL2_CLUSTER_BITS, 1 << cbits), "cluster_bits", 20, path)
    if bool(hdr.incompatible_features & INCOMPAT_COMPRESSION) != (ctype != 0):
        field_error("compression type %d (%s) with the compression-type feature bit %s" % (
            ctype, COMPRESSION_TYPES[ctype],
            "set: zlib must not set it" if ctype == 0 else "clear: it must be set"),
            "incompatible_features", 72, path)


def check_tables(hdr, file_size, path):
    """Virtual size, L1 table, refcount table and snapshot table: sizes
    QEMU accepts, aligned, inside the file, not overlapping."""
    cs, size = hdr.cluster_size, hdr.size
    l1_size, l1_off = hdr.l1_size, hdr.l1_table_offset
    rt_off, rt_clusters = hdr.refcount_table_offset, hdr.refcount_table_clusters
    nsnap, snap_off = hdr.nb_snapshots, hdr.snapshots_offset
    if size > (1 << 62):
        field_error("virtual size %d is absurd" % size, "size", 24, path)
    if l1_size * 8 > MAX_L1_BYTES:
        field_error("l1_size %d is larger than QEMU allows" % l1_size, "l1_size", 36, path)
    if l1_size < ceil_div(size, cs * hdr.l2_entries):
        field_error("l1_size %d cannot map the %d-byte virtual size" % (l1_size, size),
             "l1_size", 36, path)
    for fld, off, val in (("l1_table_offset", 40, l1_off),
                          ("refcount_table_offset", 48, rt_off)):
        if val % cs:
            field_error("%s 0x%x is not cluster-aligned" % (fld, val), fld, off, path)
    if l1_size and (l1_off < cs or l1_off + l1_size * 8 > file_size):
        field_error("L1 table (0x%x, %d entries) lies outside the file" % (l1_off, l1_size),
             "l1_table_offset", 40, path)
    if rt_clusters == 0 or rt_clusters * cs > MAX_REFTABLE_BYTES:
        field_error("refcount_table_clusters %d is out of range" % rt_clusters,
             "refcount_table_clusters", 56, path)
    if rt_off < cs or rt_off + rt_clusters * cs > file_size:
        field_error("refcount table (0x%x, %d clusters) overlaps the header or lies outside the file"
             % (rt_off, rt_clusters), "refcount_table_offset", 48, path)
    if l1_size and _overlap(l1_off, l1_size * 8, rt_off, rt_clusters * cs):
        field_error("L1 table overlaps the refcount table", "l1_table_offset", 40, path)
    if nsnap > MAX_SNAPSHOTS:
        field_error("nb_snapshots %d is more than QEMU allows (%d)" % (nsnap, MAX_SNAPSHOTS),
             "nb_snapshots", 60, path)
    if nsnap and (snap_off % cs or snap_off < cs or snap_off + nsnap * 40 > file_size):
        field_error("snapshot table (0x%x, %d entries) is not cluster-aligned, lies on the header or "
             "outside the file" % (snap_off, nsnap), "snapshots_offset", 64, path)


def parse_names(hdr, data, path):
    """The backing file name and format, and the external data file's
    name: present where the bits say, bounded, UTF-8 without NUL."""
    bf_off, bf_size = hdr.backing_file_offset, hdr.backing_file_size
    if bf_off:
        if not 0 < bf_size <= 1023 or bf_off + bf_size > min(len(data), hdr.cluster_size):
            field_error("backing file name (%d bytes at %d) lies outside the first cluster or is too "
                 "long" % (bf_size, bf_off), "backing_file_offset", 8, path)
        try:
            hdr.backing_file = bytes(data[bf_off:bf_off + bf_size]).decode("utf-8")
        except UnicodeDecodeError:
            hdr.backing_file = None
        if hdr.backing_file is None or "\0" in hdr.backing_file:
            field_error("backing file name is not UTF-8 or holds a NUL byte",
                 "backing_file_offset", 8, path)
    fmt = hdr.extension(EXT_BACKING_FORMAT)
    if fmt is not None and (not fmt or len(fmt) > 64 or not fmt.rstrip(b"\0").isascii()):
        field_error("backing format extension is empty, too long or not ASCII", "backing format",
             hdr.header_length, path)
    name = hdr.extension(EXT_DATA_FILE)
    if hdr.has_data_file and name is None:
        field_error("external data file bit set but no data file name extension",
             "incompatible_features", 72, path)
    if name is not None:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if not name or text is None or "\0" in text or len(name) > 4096:
            field_error("external data file name is empty, not UTF-8, too long or holds a NUL byte",
                 "data file extension", hdr.extension_offset(EXT_DATA_FILE), path)
    if hdr.data_file_raw and not hdr.has_data_file:
        field_error("data_file_raw set without an external data file", "autoclear_features", 88, path)


def check_encryption(hdr, file_size, path):
    """A LUKS image has a valid FDE region; nothing else has one."""
    cs = hdr.cluster_size
    if hdr.crypt_method == CRYPT_LUKS:
        fde = hdr.fde
        if fde is None:
            field_error("LUKS encryption without a full-disk-encryption header extension",
                 "crypt_method", 32, path)
        off, length = fde
        if off % cs or off < cs or length < 592 or off + length > file_size:
            field_error("FDE header region (0x%x, %d bytes) is invalid" % (off, length), "fde", off,
                 path)
    elif hdr.extension(EXT_FDE) is not None:
        field_error("FDE header extension present but the image is not LUKS-encrypted", "fde", 0, path)


def _overlap(a, alen, b, blen):
    return a < b + blen and b < a + alen


def _feature_names(bits, kind=0):
    """Incompatible (kind 0) feature bits in words, as QEMU names them."""
    known = {b: n for t, b, n in FEATURE_NAMES if t == kind}
    return ", ".join("%s (bit %d)" % (known[i], i) if i in known else "unknown bit %d" % i
                     for i in range(64) if bits >> i & 1)
