# SPDX-License-Identifier: LGPL-2.1-or-later
"""How many bytes a new image needs: ``qemu-img measure``'s figures.

``measure(request, source=None)`` answers for an output format (raw,
qcow2 with or without LUKS encryption, luks = LUKS1, and pyqcrypt's own
luks2) and either a virtual size or an open source image, whose allocated
data decides the "required" figure.  The arithmetic follows QEMU 7.2:

- raw: the size rounded up to 512-byte sectors, required = fully allocated.
- luks (LUKS1 as QEMU lays it out): the header and eight keyslot areas
  (``plan_layout(..., style="qemu")``) plus the payload, unrounded; every
  block is encrypted, so required = fully allocated.
- qcow2: a header cluster, L2 tables for every cluster, the L1 table, and
  the refcount table and blocks that count all of those (found by
  iterating until the count stops growing), plus the data clusters; with
  encrypt.format=luks also the LUKS header rounded up to a cluster.
  "required" keeps the metadata of the fully allocated image and counts
  only the clusters of the target that would receive data.  From a qcow2
  v3 source (and a v3 target) also "bitmaps size": the room its
  persistent dirty bitmaps would take.
- luks2 (pyqcrypt's, not QEMU's): cryptsetup's default LUKS2 header area
  (16 MiB: two metadata copies and the keyslots area; the data segment
  starts there) plus the payload rounded up to the sector size, which is
  what ``pyqcrypt create -f luks2`` writes.
"""

from .errors import Error
from .units import round_up

SECTOR = 512
MIN_CLUSTER = 512
MAX_CLUSTER = 2 << 20
MAX_L1_BYTES = 32 << 20          # QEMU's QCOW_MAX_L1_SIZE
MAX_IMAGE_SIZE = (1 << 63) - 1
L1_ENTRY = 8
REFTABLE_ENTRY = 8
EXTL2_SUBCLUSTERS = 32
PREALLOCATION_MODES = ("off", "metadata", "falloc", "full")


class MeasureRequest:
    """What to measure: *out_format* (raw, qcow2, luks, luks2); *size* in
    bytes when there is no source; qcow2's *cluster_size*,
    *refcount_bits*, *extended_l2*, *compat* ("0.10" or "1.1"),
    *preallocation*, *has_backing_file* (the new image would have one);
    *luks_key_bytes*: the master key length when the new image is LUKS
    encrypted (qcow2 encrypt.format=luks, or luks); *luks2_sector_size*."""

    def __init__(self, out_format="raw", size=None):
        self.out_format = out_format
        self.size = size
        self.cluster_size = 65536
        self.refcount_bits = 16
        self.extended_l2 = False
        self.compat = "1.1"
        self.preallocation = "off"
        self.has_backing_file = False
        self.luks_key_bytes = None
        self.luks2_sector_size = 0


class Measurement:
    """The answer: *required*, *fully_allocated*, and *bitmaps* (None when
    qemu-img would not show the figure)."""

    def __init__(self, required, fully_allocated, bitmaps=None):
        self.required = required
        self.fully_allocated = fully_allocated
        self.bitmaps = bitmaps

    def human(self):
        text = "required size: %d\nfully allocated size: %d\n" % (self.required, self.fully_allocated)
        if self.bitmaps is not None:
            text += "bitmaps size: %d\n" % self.bitmaps
        return text

    def json(self):
        """qemu-img's JSON, its key order included."""
        lines = []
        if self.bitmaps is not None:
            lines.append('    "bitmaps": %d' % self.bitmaps)
        lines.append('    "required": %d' % self.required)
        lines.append('    "fully-allocated": %d' % self.fully_allocated)
        return "{\n" + ",\n".join(lines) + "\n}\n"


def refcount_metadata_size(clusters, cluster_size, refcount_bits):
    """Bytes of refcount blocks and table that count *clusters* clusters
    and themselves (a fixed point: the refcount clusters need counting too)."""
    per_block = cluster_size * 8 // refcount_bits
    per_table_cluster = cluster_size // REFTABLE_ENTRY
    blocks = table = 0
    total = -1
    while True:
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table_cluster)
        if clusters + blocks + table == total:
            return (blocks + table) * cluster_size
        total = clusters + blocks + table


def qcow2_fully_allocated(virtual_size, cluster_size, refcount_bits, extended_l2):
    """A qcow2 image's size with every cluster of *virtual_size* allocated:
    header cluster, L2 tables, L1 table, refcounts, data."""
    data = round_up(virtual_size, cluster_size)
    l2_entry = 16 if extended_l2 else 8
    meta = cluster_size
    l2_entries = round_up(data // cluster_size, cluster_size // l2_entry)
    meta += l2_entries * l2_entry
    l1_entries = round_up(l2_entries * l2_entry // cluster_size, cluster_size // L1_ENTRY)
    meta += l1_entries * L1_ENTRY
    meta += refcount_metadata_size((meta + data) // cluster_size, cluster_size, refcount_bits)
    return meta + data


def luks1_header_bytes(key_bytes):
    """Where QEMU's LUKS1 payload starts: header, then eight keyslot areas
    of 4000 stripes each, 4 KiB aligned (2068480 bytes for a 512-bit key)."""
    from .luks.format import plan_layout
    return plan_layout(key_bytes, style="qemu").payload_offset * SECTOR


def check_qcow2_request(request):
    """qcow2's option checks, qemu-img's order and reasons."""
    cs = request.cluster_size
    if cs < MIN_CLUSTER or cs > MAX_CLUSTER or cs & (cs - 1):
        raise Error("Cluster size must be a power of two between 512 and 2048k")
    if request.extended_l2 and cs < MIN_CLUSTER * EXTL2_SUBCLUSTERS:
        raise Error("Extended L2 entries are only supported with cluster sizes of at least "
                    "%d bytes" % (MIN_CLUSTER * EXTL2_SUBCLUSTERS))
    if request.compat not in ("0.10", "1.1", "v2", "v3"):
        raise Error("Invalid parameter value for compat: %s (0.10 or 1.1)" % request.compat)
    bits = request.refcount_bits
    if bits < 1 or bits > 64 or bits & (bits - 1):
        raise Error("Refcount width must be a power of two and may not exceed 64 bits")
    if request.compat in ("0.10", "v2") and bits != 16:
        raise Error("Different refcount widths than 16 bits require compatibility level 1.1 "
                    "or above (use compat=1.1 or greater)")
    if request.preallocation not in PREALLOCATION_MODES:
        raise Error("invalid parameter value: %s" % request.preallocation)


def measure(request, source=None):
    """The Measurement of *request*; *source*, an open image (pyqcrypt.image.open_image),
    replaces request.size by its virtual size and its allocation."""
    if source is None and request.size is None:
        raise Error("Either --size N or one filename must be specified.")
    if source is None and not 0 <= request.size <= MAX_IMAGE_SIZE:
        raise Error("Invalid image size specified. Must be between 0 and %d." % MAX_IMAGE_SIZE)
    # qemu reads a source's length in whole sectors
    size = request.size if source is None else round_up(source.size, SECTOR)
    fmt = request.out_format
    if fmt == "raw":
        return Measurement(round_up(size, SECTOR), round_up(size, SECTOR))
    if fmt == "luks":
        total = luks1_header_bytes(_key_bytes(request)) + size
        return Measurement(total, total)
    if fmt == "luks2":
        unit = request.luks2_sector_size or SECTOR
        from .luks.luks2_format import DEFAULT_HEADER_BYTES
        total = DEFAULT_HEADER_BYTES + round_up(size, unit)
        return Measurement(total, total)
    if fmt == "qcow2":
        return _measure_qcow2(request, size, source)
    raise Error("Block driver '%s' does not support size measurement" % fmt)


def _key_bytes(request):
    if request.luks_key_bytes is None:
        raise Error("Parameter 'key-secret' is required for cipher")
    return request.luks_key_bytes


def _measure_qcow2(request, size, source):
    check_qcow2_request(request)
    cs = request.cluster_size
    luks_bytes = 0
    if request.luks_key_bytes is not None:
        luks_bytes = round_up(luks1_header_bytes(request.luks_key_bytes), cs)
    virtual = round_up(size, cs)
    l2_entry = 16 if request.extended_l2 else 8
    l2_tables = -(-(virtual // cs) // (cs // l2_entry))
    if l2_tables * L1_ENTRY > MAX_L1_BYTES:
        raise Error("The image size is too large (try using a larger cluster size)")
    data = 0
    bitmaps = None
    if source is not None:
        data = virtual if request.has_backing_file else allocated_bytes(source, cs)
        if request.compat in ("1.1", "v3"):
            bitmaps = _bitmaps_size(source, cs)
    if request.preallocation in ("falloc", "full"):
        data = virtual
    full = luks_bytes + qcow2_fully_allocated(virtual, cs, request.refcount_bits,
                                              request.extended_l2)
    return Measurement(full - virtual + data, full, bitmaps)


def _bitmaps_size(source, cluster_size):
    """None unless *source* is a qcow2 v3 image (qemu-img shows the figure
    only then); else the room its persistent bitmaps would take in the
    target, as QEMU reserves it: per bitmap its data clusters (one bit per
    granule of the virtual size) and its table's clusters, plus the
    directory rounded up to a cluster."""
    from .qcow2.image import Qcow2Image
    if not isinstance(source, Qcow2Image) or source.header.version < 3:
        return None
    total = directory = 0
    for granularity_bits, name_size in _bitmap_entries(source):
        bits = -(-source.size // (1 << granularity_bits))
        clusters = -(-(-(-bits // 8)) // cluster_size)
        total += clusters * cluster_size + round_up(clusters * BITMAP_TABLE_ENTRY, cluster_size)
        directory += round_up(BITMAP_ENTRY_FIXED + name_size, 8)
    return total + round_up(directory, cluster_size)


BITMAP_TABLE_ENTRY = 8
BITMAP_ENTRY_FIXED = 24
MAX_BITMAPS = 65535
MAX_BITMAP_DIRECTORY = 64 << 20


def _bitmap_entries(source):
    """(granularity_bits, name_size) of each bitmap in the directory of the
    bitmaps extension (an untrusted header: sizes bounded as QEMU bounds
    them, a bad one is an Error)."""
    import struct
    from .qcow2.header import EXT_BITMAPS
    ext = next((data for kind, data in source.header.extensions if kind == EXT_BITMAPS), None)
    if ext is None:
        return []
    if len(ext) < 24:
        raise Error("%s: bitmaps extension too short" % source.path)
    count, _, dir_size, dir_offset = struct.unpack(">IIQQ", ext[:24])
    if count > MAX_BITMAPS or dir_size > MAX_BITMAP_DIRECTORY:
        raise Error("%s: bitmap directory too large (%d bitmaps, %d bytes)"
                    % (source.path, count, dir_size))
    raw = source.st.pread(dir_offset, dir_size, "bitmap directory")
    entries, pos = [], 0
    for _ in range(count):
        if pos + BITMAP_ENTRY_FIXED > len(raw):
            raise Error("%s: bitmap directory ends inside an entry" % source.path)
        granularity, name_size, extra = struct.unpack(">17xBHI", raw[pos:pos + BITMAP_ENTRY_FIXED])
        if not 9 <= granularity <= 31:
            raise Error("%s: bitmap granularity 2^%d is out of range" % (source.path, granularity))
        entries.append((granularity, name_size))
        pos += round_up(BITMAP_ENTRY_FIXED + extra + name_size, 8)
    if pos > len(raw):
        raise Error("%s: bitmap directory ends inside an entry" % source.path)
    return entries


def allocated_bytes(source, cluster_size):
    """Bytes of the target's clusters (of *cluster_size*) that hold any
    allocated, non-zero data of *source* (through its backing chain), as
    QEMU counts them: a cluster is counted whole as soon as one byte in it
    is data.  Ranges known to be unallocated are skipped whole (bisection;
    a qcow2 layer's unallocated L2 tables are never walked), so a large,
    mostly empty source costs few look-ups."""
    total = round_up(source.size, cluster_size)
    probe = _DataProbe()
    counted = 0
    pending = [(0, total)]
    while pending:
        start, end = pending.pop()
        if start >= source.size or not probe.maybe_data(source, start, min(end, source.size) - start):
            continue
        if end - start <= cluster_size:
            counted += end - start
            continue
        middle = start + round_up((end - start) // 2, cluster_size)
        pending.append((middle, end))
        pending.append((start, middle))
    return counted


class _DataProbe:
    """Whether a range of an image may hold data, per layer of a chain:
    images without an allocation map (a LUKS payload) hold data
    everywhere; a qcow2 layer is asked only about its allocated L2 tables'
    spans, the rest goes to the layer below."""

    def __init__(self):
        self._tables = {}               # id(qcow2 layer) -> sorted L1 indices with an L2 table

    def maybe_data(self, img, start, length):
        from .qcow2.image import Qcow2Image
        if not isinstance(img, Qcow2Image):
            check = getattr(img, "is_allocated", None)
            return True if check is None else check(start, length)
        import bisect
        from .qcow2.entries import OFFSET_MASK
        tables = self._tables.get(id(img))
        if tables is None:
            tables = self._tables[id(img)] = [i for i, e in enumerate(img.l1) if e & OFFSET_MASK]
        span = img.cluster_size * img.l2_entries
        end = start + length
        pos = start
        first = bisect.bisect_left(tables, start // span)
        last = bisect.bisect_right(tables, (end - 1) // span)
        for index in tables[first:last]:
            lo, hi = max(start, index * span), min(end, (index + 1) * span)
            if (pos < lo and self._below(img, pos, lo)) or img.is_allocated(lo, hi - lo):
                return True
            pos = hi
        return pos < end and self._below(img, pos, end)

    def _below(self, img, start, end):
        """Data in [start, end) of the layer under *img* (none past its end)."""
        lower = img.backing
        if lower is None or start >= lower.size:
            return False
        return self.maybe_data(lower, start, min(end, lower.size) - start)
