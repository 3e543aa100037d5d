# SPDX-License-Identifier: LGPL-2.1-or-later
"""Changing a qcow2 image's virtual size, as ``qemu-img resize`` does.

Growing needs, at most, a larger L1 table.  The new table is written
into new clusters and synced with its refcounts before the header names
it; the header (size, L1 offset and L1 entry count, all in its first
sector) is then written in one piece and synced; only then is the old
table's cluster given back.  A crash at any write leaves the old image or
the new one, at worst with a leaked cluster (``qemu-img check -r leaks``
reclaims it).

Over a backing file the grown range must read as zeros, not as the
backing file's data: it is zeroed (zero clusters on version 3) once the
header has the new size, as QEMU does.

Shrinking gives back every whole cluster past the new end (qcow2's
discard, with copy-on-write for clusters snapshots share) before the
header takes the smaller size: a crash in between leaves the old size
with zeros where the discarded clusters were, which the user asked to
lose anyway.  Images with an external data file or version 2 images
cannot give clusters back, so they are not shrunk.
"""

import struct

from ..errors import Error
from ..units import ceil_div, round_up


def resize_qcow2(img, new_size):
    """Make the writable Qcow2Image *img* *new_size* bytes (a multiple of
    512; the caller has checked a shrink was asked for, and refused an
    image with persistent bitmaps before opening it for writing)."""
    old = img.size
    if new_size < old:
        _shrink(img, new_size)
    elif new_size > old:
        _grow(img, new_size)
    img.flush()


def _grow(img, new_size):
    old = img.size
    needed = ceil_div(new_size, img.cluster_size * img.l2_entries)
    img.flush()
    if needed > len(img.l1):
        _grow_l1(img, needed, new_size)
    else:
        img.header.size = new_size
        img._write_header()
        img.st.sync()
    img.size = new_size
    if img.has_data_file and img.header.data_file_raw:
        # a raw data file is the guest's disk: it covers the whole size
        if img.data.size() < new_size and not img.data.is_block_device:
            img.data.truncate(new_size)
    if img.backing is not None:
        # what the backing file holds past the old end must not show through
        img.write_zeroes(old, new_size - old)


def _grow_l1(img, entries, new_size):
    h, cs = img.header, img.cluster_size
    table = img.l1 + [0] * (entries - len(img.l1))
    clusters = ceil_div(entries * 8, cs)
    new_off = img._allocate(clusters)
    if img.meta is not None:
        img.meta.add(new_off, clusters * cs, "L1 table")
    body = struct.pack(">%dQ" % entries, *table)
    img.st.pwrite(new_off, body + bytes(clusters * cs - len(body)))
    img.refcounts.flush()
    img.st.sync()
    old_off, old_entries = h.l1_table_offset, h.l1_size
    h.l1_table_offset, h.l1_size, h.size = new_off, entries, new_size
    img._write_header()
    img.st.sync()
    img.l1 = table
    if old_entries:
        img.refcounts.free(old_off, ceil_div(old_entries * 8, cs))
        img.refcounts.flush()
        img.st.sync()


def _shrink(img, new_size):
    if img.header.version < 3 or img.has_data_file:
        raise Error("%s cannot be shrunk by pyqcrypt: %s" % (
            img.path, "a version 2 image cannot give clusters back" if img.header.version < 3
            else "its external data file's clusters cannot be given back"))
    start = round_up(new_size, img.cluster_size)
    if start < img.size:
        img.discard(start, img.size - start)
    img.flush()
    img.header.size = img.size = new_size
    img._write_header()
    img.st.sync()
