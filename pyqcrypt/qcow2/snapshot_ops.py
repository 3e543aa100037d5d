# SPDX-License-Identifier: LGPL-2.1-or-later
"""Creating, deleting and applying qcow2 internal snapshots, as ``qemu-img
snapshot -c / -d / -a`` do: only metadata changes, so no key is needed.

A snapshot is an L1 table plus an entry in the snapshot table.  A cluster's
refcount is the number of paths to it: an L2 table counts the L1 entries
(active and snapshots') naming it, a data cluster the L1-entry/L2-entry
paths reaching it.  Every operation is computed as a new state (active L1,
snapshot list) and the refcount change between the old and the new one.

Crash safety: nothing the current header reaches is written in place.
Everything that changes goes into new clusters past the end of the file: a
new active L1 table, copies of the active L2 tables whose COPIED flags
change (COPIED: refcount exactly 1), the new snapshot's L1 table, the new
snapshot table, new copies of every refcount block that changes and a new
refcount table.  They are synced, then one header write switches L1,
refcount table and snapshot table at once, and is synced.  Killed before
that write, the image is the old one (with unreferenced bytes past its
end); after it, the new one, whose refcounts already give back what the
old state alone used (old tables, replaced refcount blocks).
"""

import struct
import time
from collections import Counter

from ..errors import Error, FormatError
from ..units import ceil_div, round_up
from .entries import COMPRESSED, COPIED, OFFSET_MASK, compressed_clusters
from .header import MAX_REFTABLE_BYTES, MAX_SNAPSHOTS
from .refcounts import get_refcount, set_refcount
from .snapshots import ENTRY_HEADER, read_l1

NAME_BYTES = 255            # QEMUSnapshotInfo.name holds 256 bytes with the NUL


class _Entry:
    """A snapshot table entry of the new state: its bytes (header, extra
    data, id, name) and L1 entries; *l1_offset* None until written."""

    __slots__ = ("raw", "l1", "l1_offset")

    def __init__(self, raw, l1, l1_offset):
        self.raw = bytearray(raw)
        self.l1 = list(l1)
        self.l1_offset = l1_offset


def _existing(img):
    out = []
    for sn in img.snapshots:
        raw = img.st.pread(sn.entry_offset, sn.entry_end - sn.entry_offset, "snapshot table")
        out.append(_Entry(raw, read_l1(img.st, sn), sn.l1_table_offset))
    return out


def _new_id(snapshots):
    """qcow2's next snapshot id: one more than the largest numeric id."""
    top = 0
    for sn in snapshots:
        digits = ""
        for ch in sn.id:
            if not ch.isdigit():
                break
            digits += ch
        top = max(top, int(digits or 0))
    return str(top + 1)


def create_snapshot(img, name, now=None):
    """Add snapshot *name* of the active layer of the writable Qcow2Image
    *img* (names may repeat, as qemu-img allows)."""
    if len(img.snapshots) >= MAX_SNAPSHOTS:
        raise Error("Could not create snapshot '%s': Too many snapshots" % name)
    now = time.time() if now is None else now
    ident = _new_id(img.snapshots).encode()
    label = name.encode("utf-8", "surrogateescape")[:NAME_BYTES]
    sec = int(now)
    extra = struct.pack(">QQQ", 0, img.size, 0)     # vm state size, disk size, icount
    head = struct.pack(">QIHHIIQII", 0, len(img.l1), len(ident), len(label), sec,
                       int((now - sec) * 1000000) * 1000, 0, 0, len(extra))
    entries = _existing(img)
    entries.append(_Entry(head + extra + ident + label, [e & OFFSET_MASK for e in img.l1], None))
    _commit(img, list(img.l1), entries)


def delete_snapshot(img, name):
    """Remove the first snapshot named *name* (qemu-img -d looks by name only)."""
    for i, sn in enumerate(img.snapshots):
        if sn.name == name:
            entries = _existing(img)
            del entries[i]
            _commit(img, list(img.l1), entries)
            return
    raise Error("Could not delete snapshot '%s': snapshot not found" % name)


def apply_snapshot(img, name):
    """Make the active layer a copy of the snapshot whose id, else whose
    name, is *name* (qemu-img -a)."""
    found = [sn for sn in img.snapshots if sn.id == name] or \
        [sn for sn in img.snapshots if sn.name == name]
    if not found:
        raise Error("Could not apply snapshot '%s': Failed to load snapshot: No such file or "
                    "directory" % name)
    sn = found[0]
    size = img.size if sn.disk_size is None else sn.disk_size
    if size != img.size and img.header.backing_file:
        raise Error("Could not apply snapshot '%s': its disk size (%d) differs from the image's "
                    "(%d), which pyqcrypt does not change over a backing file; use qemu-img "
                    "snapshot -a" % (name, size, img.size))
    l1 = [e & OFFSET_MASK for e in read_l1(img.st, sn)]
    l1 += [0] * (len(img.l1) - len(l1))
    if size % 512 or ceil_div(size, img.cluster_size * img.l2_entries) > len(l1):
        raise FormatError("snapshot %s: its disk size %d is not a whole number of sectors or "
                          "lies past what its L1 table maps" % (sn.id, size), field="disk_size",
                          offset=sn.entry_offset + ENTRY_HEADER + 8, path=img.path)
    _commit(img, l1, _existing(img), size)


class _Plan:
    """The new clusters of one commit, laid out from *start* (a cluster
    index); ``put`` reserves clusters for bytes to write."""

    def __init__(self, img):
        self.img = img
        self.cs = img.cluster_size
        self.start = img.refcounts.end
        self.next = self.start
        self.writes = []            # (byte offset, bytes)

    def put(self, data):
        n = max(1, ceil_div(len(data), self.cs))
        off = self.next * self.cs
        self.next += n
        self.writes.append((off, bytes(data) + bytes(n * self.cs - len(data))))
        return off


def _commit(img, active_l1, entries, size=None):
    """Switch *img* to the active L1 *active_l1* (L2 offsets; flags are
    recomputed), the snapshot table *entries* and the virtual *size* (None:
    unchanged); see the module docstring."""
    img.flush()
    if img.has_data_file:
        raise Error("%s: internal snapshots with an external data file are not supported" % img.path)
    if not img._mappings_checked:
        img._check_mappings()
    cs, h = img.cluster_size, img.header
    tables = _Tables(img)
    old_l1s = [img.l1] + [read_l1(img.st, sn) for sn in img.snapshots]
    delta = tables.path_delta(old_l1s, [active_l1] + [e.l1 for e in entries])
    plan = _Plan(img)
    new_l1 = tables.active_copies(active_l1, delta, plan)
    for e in entries:
        if e.l1_offset is None:
            e.l1_offset = plan.put(struct.pack(">%dQ" % len(e.l1), *e.l1)) if e.l1 else 0
            struct.pack_into(">Q", e.raw, 0, e.l1_offset)
    l1_offset = plan.put(struct.pack(">%dQ" % len(new_l1), *new_l1))
    table = b"".join(bytes(e.raw) + bytes(round_up(len(e.raw), 8) - len(e.raw)) for e in entries)
    table_offset = plan.put(table) if entries else 0
    # what only the old state uses is given back by the new refcounts
    old_uses = [(h.l1_table_offset, h.l1_size * 8)]
    kept = {e.l1_offset for e in entries}
    old_uses += [(sn.l1_table_offset, sn.l1_size * 8) for sn in img.snapshots
                 if sn.l1_size and sn.l1_table_offset not in kept]
    if img.snapshots:
        old_uses.append((h.snapshots_offset, img.snapshots[-1].entry_end - h.snapshots_offset))
    old_uses.append((h.refcount_table_offset, h.refcount_table_clusters * cs))
    for off, length in old_uses:
        for c in range(off // cs, ceil_div(off + length, cs)):
            delta[c] -= 1
    reftable = _new_refcounts(img, plan, delta)
    for off, data in plan.writes:
        img.st.pwrite(off, data)
    img.st.sync()
    h.l1_table_offset, h.l1_size = l1_offset, len(new_l1)
    h.refcount_table_offset, h.refcount_table_clusters = reftable
    h.nb_snapshots, h.snapshots_offset = len(entries), table_offset
    if size is not None:
        h.size = size
    img._write_header()
    img.st.sync()


class _Tables:
    """The L2 tables of one commit, read once, and the paths through them."""

    def __init__(self, img):
        self.img = img
        self.cs = img.cluster_size
        self.step = img.esize // 8
        self._read = {}

    def entries(self, off):
        t = self._read.get(off)
        if t is None:
            raw = self.img.st.pread(off, self.cs, "L2 table")
            t = self._read[off] = list(struct.unpack(">%dQ" % (self.cs // 8), raw))
        return t

    def data_clusters(self, off):
        """Counter of the clusters the entries of the L2 table at *off* name."""
        bits = self.img.header.cluster_bits
        words = self.entries(off)[::self.step]
        # one comprehension per kind: the per-entry work stays in C loops
        found = Counter([(e & OFFSET_MASK) >> bits for e in words
                         if e & OFFSET_MASK and not e & COMPRESSED])
        for e in [e for e in words if e & COMPRESSED]:
            found.update(compressed_clusters(e, bits))
        return found

    def path_delta(self, old_l1s, new_l1s):
        """Refcount changes (cluster index -> delta) from the paths of
        *old_l1s* to those of *new_l1s*."""
        def paths(l1s):
            return Counter(e & OFFSET_MASK for l1 in l1s for e in l1 if e & OFFSET_MASK)
        old, new = paths(old_l1s), paths(new_l1s)
        delta = Counter()
        for off in set(old) | set(new):
            d = new[off] - old[off]
            if d:
                delta[off // self.cs] += d
                for c, k in self.data_clusters(off).items():
                    delta[c] += d * k
        return delta

    def _flagged(self, entry, delta):
        """An active L2 entry with COPIED set when its cluster's refcount will be 1."""
        c = (entry & OFFSET_MASK) // self.cs
        return entry | COPIED if self.img.refcounts.get(c) + delta[c] == 1 else entry & ~COPIED

    def active_copies(self, active_l1, delta, plan):
        """The new active L1 entries: each L2 table whose COPIED flags
        change is copied (its old cluster loses the active path), and an
        L1 entry has COPIED when its table's refcount will be 1."""
        rc, cs = self.img.refcounts, self.cs
        out = []
        for e in active_l1:
            off = e & OFFSET_MASK
            if not off:
                out.append(0)
                continue
            old = self.entries(off)
            words = old[::self.step]
            fixed = [self._flagged(x, delta) if x & OFFSET_MASK and not x & COMPRESSED else x
                     for x in words]
            if fixed != words:
                new = list(old)
                new[::self.step] = fixed
                delta[off // cs] -= 1
                out.append(plan.put(struct.pack(">%dQ" % len(new), *new)) | COPIED)
            else:
                out.append(off | COPIED if rc.get(off // cs) + delta[off // cs] == 1 else off)
        return out


def _layout_refcounts(img, plan, delta):
    """The refcount blocks to rewrite and the new table's cluster count:
    blocks holding a changed refcount, the new clusters (themselves
    included) or a replaced block; found by iterating to a fixed point."""
    rc, cs = img.refcounts, img.cluster_size
    per = rc.per_block
    changed = {c // per for c, d in delta.items() if d}
    blocks, table_clusters = set(), 0
    while True:
        end = plan.next + len(blocks) + table_clusters
        touched = changed | set(range(plan.start // per, (end - 1) // per + 1))
        touched |= {rc.table[ti] // cs // per for ti in touched if ti < len(rc.table) and rc.table[ti]}
        need = ceil_div(max(len(rc.table), max(touched) + 1) * 8, cs)
        if touched == blocks and need == table_clusters:
            return sorted(blocks), table_clusters
        blocks, table_clusters = touched, max(need, table_clusters)


def _new_refcounts(img, plan, delta):
    """Lay out and fill the new refcount blocks and table (appended to
    *plan*); returns the table's (offset, clusters)."""
    rc, cs = img.refcounts, img.cluster_size
    per = rc.per_block
    beyond = [c for c, d in delta.items() if d and c >= plan.start]
    if beyond:      # an entry naming clusters past the refcounted end (a hostile image)
        raise FormatError("cluster %d is referenced but lies past the clusters the refcounts "
                          "cover (repair the image with qemu-img check -r all)" % min(beyond),
                          field="refcount", path=img.path)
    blocks, table_clusters = _layout_refcounts(img, plan, delta)
    if table_clusters * cs > MAX_REFTABLE_BYTES:
        raise FormatError("the refcount table would exceed QEMU's size limit", field="refcount table")
    table = list(rc.table) + [0] * (table_clusters * cs // 8 - len(rc.table))
    for ti in blocks:
        if ti < len(rc.table) and rc.table[ti]:
            delta[rc.table[ti] // cs] -= 1          # the old block, once replaced
    first_block = plan.next
    table_offset = (first_block + len(blocks)) * cs
    new_end = first_block + len(blocks) + table_clusters
    for c in range(plan.start, new_end):
        delta[c] += 1
    by_block = {}
    for c, d in delta.items():
        if d:
            by_block.setdefault(c // per, []).append((c, d))
    for ti in blocks:
        old = rc._block(ti) if ti < len(rc.table) else None
        blk = bytearray(cs) if old is None else bytearray(old)
        for c, d in by_block.get(ti, ()):
            value = get_refcount(blk, c - ti * per, rc.bits) + d
            if value < 0:
                raise FormatError("cluster %d would get a negative refcount (repair the image with "
                                  "qemu-img check -r all)" % c, field="refcount", path=img.path)
            if value >= 1 << rc.bits:
                raise Error("%s: cluster %d's refcount would overflow %d-bit refcounts"
                            % (img.path, c, rc.bits))
            set_refcount(blk, c - ti * per, value, rc.bits)
        table[ti] = plan.put(blk)
    plan.put(struct.pack(">%dQ" % len(table), *table))
    return table_offset, table_clusters


def change_snapshots(path, action, name, passphrase=None):
    """Run *action* ("create", "delete" or "apply") with snapshot *name*
    on the qcow2 image at *path*.  No data moves, so no key is needed; a
    *passphrase* given is checked, as qemu-img checks it."""
    from ..storage import Storage
    from .open import open_qcow2, read_header
    with Storage(path) as st:
        head = read_header(st)
    if head.has_bitmaps:           # opening for writing would already invalidate them
        raise Error("%s has persistent bitmaps, which pyqcrypt cannot keep; use qemu-img snapshot"
                    % path)
    run = {"create": create_snapshot, "delete": delete_snapshot, "apply": apply_snapshot}[action]
    img = open_qcow2(path, passphrase, writable=True, keyless=True)
    try:
        run(img, name)
    finally:
        img.close()
