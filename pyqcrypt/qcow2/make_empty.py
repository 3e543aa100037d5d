# SPDX-License-Identifier: LGPL-2.1-or-later
"""Emptying a qcow2 image over its backing file (QEMU's make_empty, what
``qemu-img commit`` does to the committed image): every cluster of the
active table is given back and its entry left unallocated, so the guest
reads the backing file there.

This is a discard whose freed clusters read through to the backing file
rather than as zeros.  The L2 entries are written (flushed) before the
clusters' refcounts drop, as for any discard: a crash leaves leaked
clusters at worst.  Clusters internal snapshots share only lose a
reference.  A version 2 image (no zero clusters) has its entries cleared
the same way.  An image with an external data file is left as it is (its
clusters' places are fixed).
"""


def make_empty(img):
    """Empty the writable Qcow2Image *img* (see the module docstring);
    the caller flushes."""
    from .block_status import SC_COMPRESSED, SC_NORMAL, SC_ZERO_PLAIN
    if img.has_data_file:
        return
    header = img.header
    with img._lock:
        if header.version < 3:              # no zero clusters: entries simply cleared
            _unmap(img, (SC_NORMAL, SC_COMPRESSED))
            return
        # Discard makes a cluster unallocated only where no backing file
        # would show through; here showing through is the point.
        name = header.backing_file
        header.backing_file = None
        try:
            img.discard(0, img.size)
        finally:
            header.backing_file = name
        if not img.extended_l2:
            _unmap(img, (SC_ZERO_PLAIN,))


def _unmap(img, kinds):
    """Entries of the *kinds* (block status types; standard L2 entries)
    become unallocated; the data clusters they named are freed once the
    entries are on disk (a compressed cluster's, each host cluster its
    bytes touch)."""
    from .block_status import SC_COMPRESSED, SC_NORMAL
    from .entries import OFFSET_MASK
    cs, offset, freed = img.cluster_size, 0, []
    while offset < img.size:
        kind, count, _ = img.block_status_run(offset, img.size - offset)
        if kind in kinds:
            for gcl in range(offset // cs, (offset + count - 1) // cs + 1):
                entry = img._entry(gcl)
                img._set_entry(gcl, 0)
                if kind == SC_NORMAL:
                    freed.append(entry & OFFSET_MASK)
                elif kind == SC_COMPRESSED:
                    freed += img._compressed_hosts(entry)
        offset += count
    img._free_after_flush(freed)
