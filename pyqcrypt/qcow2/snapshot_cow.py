# SPDX-License-Identifier: LGPL-2.1-or-later
"""Copy-on-write of data clusters that internal snapshots share (what
QEMU's qcow2-cluster.c does for clusters without the COPIED flag).

Snapshots are read by snapshots.py and created, applied and deleted by
snapshot_ops.py; writes to the active layer keep every snapshot intact:
a write into a data cluster a snapshot shares (no COPIED flag, or a refcount above 1)
goes to a new copy, re-encrypted for its new host offset, and the old
cluster's refcount drops only after the new pointers are on disk
(``_deferred_free``, emptied at the end of ``Qcow2Image.flush``).  L2
tables a snapshot shares are copied the same way (mapping.py).
``SnapshotCow`` is mixed into Qcow2Image.
"""

from .entries import COPIED, OFFSET_MASK, ZERO


class SnapshotCow:
    """Copy-on-write of Qcow2Image's shared clusters (see the module docstring)."""

    def _data_shared(self, entry):
        """A standard data cluster another L2 entry (a snapshot's) also
        names: no COPIED flag, or (with snapshots) a refcount above 1."""
        if self.has_data_file or not entry & OFFSET_MASK:
            return False
        if not entry & COPIED:
            return True
        return bool(self.snapshots) and \
            self.refcounts.get((entry & OFFSET_MASK) // self.cluster_size) > 1

    def _copy_on_write(self, gcl, entry, within, data):
        """Write *data* at *within* of guest cluster *gcl*, whose host
        cluster is shared: a new cluster gets the old contents (decrypted,
        re-encrypted for its own host offset) with *data* over them; the
        old cluster's refcount drops after the new mapping is on disk."""
        cs = self.cluster_size
        old = entry & OFFSET_MASK
        new = self._alloc_data(gcl, 1)
        self._check_write_target(gcl, new, cs)
        buf = bytearray(cs)
        if not entry & ZERO and (within or len(data) < cs):
            n = min(cs, self.size - gcl * cs)
            self.readinto(gcl * cs, memoryview(buf)[:n])
        buf[within:within + len(data)] = data
        if self.crypt is not None:
            self.crypt.encrypt(buf, new, gcl * cs)
        self.data.pwrite(new, buf)
        self._set_entry(gcl, new | COPIED)
        self._deferred_free.append(old)

    def _free_deferred(self):
        """After a flush put the new references on disk: drop the refcounts
        of the clusters the active layer no longer names (a crash before
        this leaks them, never more)."""
        if self._deferred_free:
            freed, self._deferred_free = self._deferred_free, []
            for host in freed:
                self.refcounts.free(host, 1)
            self.refcounts.flush()
            self.st.sync()
