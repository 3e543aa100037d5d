# SPDX-License-Identifier: LGPL-2.1-or-later
"""Emptying a qcow2 image over its backing file (QEMU's make_empty, what
``qemu-img commit`` does to the committed image): every cluster of the
active table is given back and its entry left unallocated, so the guest
reads the backing file there.

This is a discard whose freed clusters read through to the backing file
rather than as zeros.  The L2 entries are written (flushed) before the
clusters' refcounts drop, as for any discard: a crash leaves leaked
clusters at worst.  Clusters internal snapshots share only lose a
reference.  Version 2 images and images with an external data file cannot
give clusters back: they are left as they are.
"""


def make_empty(img):
    """Empty the writable Qcow2Image *img* (see the module docstring);
    the caller flushes."""
    header = img.header
    with img._lock:
        # Discard makes a cluster unallocated only where no backing file
        # would show through; here showing through is the point.
        name = header.backing_file
        header.backing_file = None
        try:
            img.discard(0, img.size)
        finally:
            header.backing_file = name
        if not img.extended_l2:
            _unzero(img)


def _unzero(img):
    """Zero clusters without a host cluster (which discard leaves as they
    are) become unallocated too."""
    from .block_status import SC_ZERO_PLAIN
    cs, offset = img.cluster_size, 0
    while offset < img.size:
        kind, count, _ = img.block_status_run(offset, img.size - offset)
        if kind == SC_ZERO_PLAIN:
            for gcl in range(offset // cs, (offset + count - 1) // cs + 1):
                img._set_entry(gcl, 0)
        offset += count
