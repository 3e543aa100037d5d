# SPDX-License-Identifier: LGPL-2.1-or-later
"""The layout of qcow2 table entries (QEMU's docs/interop/qcow2.txt).

L1 and L2 entries keep a host offset in bits 9-55 (``OFFSET_MASK``; the
refcount table uses the same bits); an L2 entry's top bits say COPIED
(refcount exactly 1) and COMPRESSED, bit 0 ZERO.  A compressed entry
instead packs a byte offset and a sector count whose widths depend on the
cluster size (``compressed_extent``).  Extended L2 entries add a second
64-bit word: bit i "subcluster i is allocated", bit 32 + i "subcluster i
reads as zeros".  ``entry_kind`` classifies a standard entry as QEMU does.
"""

from ..units import SECTOR

OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1

UNALLOCATED, ZEROED, COMPRESSED_KIND, NORMAL = "unallocated", "zero", "compressed", "normal"

SUBCLUSTERS = 32
ALL_ALLOC = (1 << SUBCLUSTERS) - 1
ALL_ZERO = ALL_ALLOC << SUBCLUSTERS


def sub_mask(first, end):
    """Bitmap bits of subclusters [first, end)."""
    return ((1 << (end - first)) - 1) << first if end > first else 0


def entry_kind(entry, external):
    """Classify an L2 entry as QEMU does.  With an external data file,
    offset 0 is a real offset; the COPIED flag tells it from "unallocated"."""
    if entry & COMPRESSED:
        return COMPRESSED_KIND
    if entry & ZERO:
        return ZEROED
    if entry & OFFSET_MASK or (external and entry & COPIED):
        return NORMAL
    return UNALLOCATED


def compressed_extent(entry, cluster_bits):
    """(host offset, stored length) of a compressed L2 entry: the length
    runs from the offset to the end of the last sector the entry names, so
    it is an upper bound on the compressed data."""
    x = 62 - (cluster_bits - 8)
    off = entry & ((1 << x) - 1)
    nsect = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
    return off, nsect * SECTOR - off % SECTOR


def compressed_clusters(entry, cluster_bits):
    """The host clusters (indices) the bytes of a compressed L2 entry
    touch.  Each holds one reference for the entry: QEMU counts a
    compressed cluster once in every host cluster it spans, however many
    others share it."""
    off, length = compressed_extent(entry, cluster_bits)
    return range(off >> cluster_bits, (off + length + (1 << cluster_bits) - 1) >> cluster_bits)
