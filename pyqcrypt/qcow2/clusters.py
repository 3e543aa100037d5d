# SPDX-License-Identifier: LGPL-2.1-or-later
"""Reads, writes and zeroing of a qcow2 image with standard (8-byte) L2
entries, a cluster at a time: the loops of QEMU's qcow2.c preadv/pwritev
and qcow2-cluster.c's zeroize and discard.  subclusters.py does the same
per subcluster for extended L2 entries; Qcow2Image (image.py) checks each
call and picks one of the two.

Reads follow L1 -> L2 -> host cluster (unallocated and zero clusters read
as zeros or from the backing image, compressed clusters are decoded),
extended over runs of clusters contiguous on the host.  Writes go in place
to allocated clusters (into a copy when a snapshot shares the cluster,
snapshot_cow.py), or to newly allocated ones, a run at a time, the rest of
a new cluster filled with what the guest saw there.  ``Clusters`` is mixed
into Qcow2Image.
"""

import struct

from ..pipeline import Piece
from ..storage import zero_fill
from ..units import ceil_div
from .entries import (COMPRESSED_KIND, COPIED, NORMAL, OFFSET_MASK, UNALLOCATED, ZERO, ZEROED,
                      entry_kind)

MAX_RUN = 8 << 20           # bytes of contiguous clusters read at once


class Clusters:
    """The standard-entry half of Qcow2Image (see the module docstring)."""

    def _read_clusters(self, offset, view, jobs):
        """Fill *view* from guest *offset* (see ``Qcow2Image.readinto``)."""
        cs, length = self.cluster_size, len(view)
        pos = 0
        while pos < length:
            goff = offset + pos
            gcl, within = divmod(goff, cs)
            take = min(cs - within, length - pos)
            entry = self._entry(gcl)
            kind = entry_kind(entry, self.has_data_file)
            if kind == COMPRESSED_KIND:
                if take == cs:
                    self._read_compressed(gcl, entry, view[pos:pos + take], jobs)
                else:
                    view[pos:pos + take] = self._read_compressed(gcl, entry)[within:within + take]
            elif kind == UNALLOCATED and self.backing is not None:
                # Fall through to the backing image, a run of clusters at once.
                nxt = gcl + 1
                while pos + take < length and take < MAX_RUN and \
                        entry_kind(self._entry(nxt), self.has_data_file) == UNALLOCATED:
                    take += min(cs, length - pos - take)
                    nxt += 1
                self._read_backing(goff, view[pos:pos + take])
            elif kind != NORMAL:
                view[pos:pos + take] = bytes(take)
            else:
                host = self._host_offset(gcl, entry)
                # Extend over following clusters that are contiguous on the host.
                nxt = gcl + 1
                while pos + take < length and take < MAX_RUN:
                    e2 = self._entry(nxt)
                    if entry_kind(e2, self.has_data_file) != NORMAL or \
                            (e2 & OFFSET_MASK) != host + (nxt - gcl) * cs:
                        break
                    take += min(cs, length - pos - take)
                    nxt += 1
                self._read_host_into(host + within, goff, view[pos:pos + take], jobs)
            pos += take

    def _write_clusters(self, offset, data):
        """Write *data* at guest *offset* (see ``Qcow2Image.write``)."""
        pos = 0
        while pos < len(data):
            gcl, within = divmod(offset + pos, self.cluster_size)
            entry = self._entry(gcl)
            kind = entry_kind(entry, self.has_data_file)
            if kind == NORMAL or (kind == ZEROED and entry & OFFSET_MASK):
                take = min(self.cluster_size - within, len(data) - pos)
                self._write_allocated(gcl, within, entry, data[pos:pos + take])
            else:
                take = self._write_new_run(gcl, within, entry, data[pos:])
            pos += take
            if self._l2_overfull():
                self.flush()

    def _write_allocated(self, gcl, within, entry, piece):
        """Write *piece* at *within* of the allocated guest cluster *gcl*:
        in place, or into a copy when a snapshot shares the cluster, or
        (a preallocated zero cluster) the whole cluster, then mapped."""
        cs = self.cluster_size
        host = self._host_offset(gcl, entry)
        if self._data_shared(entry):
            self._copy_on_write(gcl, entry, within, piece)
            return
        self._check_write_target(gcl, host, cs)
        if entry & ZERO:
            whole = bytearray(cs)
            whole[within:within + len(piece)] = piece
            self._write_host(host, gcl * cs, whole)
            self._set_entry(gcl, host | COPIED)
        else:
            self._write_host(host + within, gcl * cs + within, piece)

    def _write_new_run(self, gcl, within, entry, rest):
        """Write the start of *rest* (from *within* of guest cluster *gcl*,
        which is not allocated) into newly allocated clusters, one run for
        as many consecutive unallocated clusters as it covers (at most
        512); returns how many bytes of *rest* it wrote."""
        cs = self.cluster_size
        kind_of_first = entry_kind(entry, self.has_data_file)
        n = 1
        while (within + len(rest) > n * cs and n < 512
               and entry_kind(self._entry(gcl + n), self.has_data_file) == UNALLOCATED):
            n += 1
        host = self._alloc_data(gcl, n)
        self._check_write_target(gcl, host, n * cs)
        span = self._scratch(n * cs)
        take = min(n * cs - within, len(rest))
        if within or take < n * cs:
            span[:cs] = self._old_cluster(gcl, entry)
            if n > 1:
                last_entry = self._entry(gcl + n - 1)
                span[-cs:] = self._old_cluster(gcl + n - 1, last_entry)
        span[within:within + take] = rest[:take]
        # Whole new clusters: encrypt the scratch copy in place.
        if self.crypt is not None:
            self.crypt.encrypt(span, host, gcl * cs)
        self.data.pwrite(host, span)
        for i in range(n):
            self._set_entry(gcl + i, (host + i * cs) | COPIED)
        if kind_of_first == COMPRESSED_KIND:       # the rest of the run was unallocated
            self._deferred_free.extend(self._compressed_hosts(entry))   # after the new entry is on disk
        return take

    def _scratch(self, n):
        """A reusable buffer of n bytes (avoids a fresh allocation, zero
        fill and page faults per write)."""
        buf = getattr(self, "_scratch_buf", None)
        if buf is None or len(buf) < n:
            buf = self._scratch_buf = bytearray(max(n, 4 << 20))
        return memoryview(buf)[:n]

    def _plan_clusters(self, first, data):
        """The Pieces that put *data*, whole clusters, at guest cluster
        *first*, the clusters mapped (see ``Qcow2Image.plan_write``); None
        when one of them is neither unallocated nor an unshared data
        cluster."""
        cs, count = self.cluster_size, len(data) // self.cluster_size
        entries = self._entries(first, count)
        if entries is None:
            return None
        fresh = []
        for e in entries:
            kind = entry_kind(e, self.has_data_file)
            if kind == UNALLOCATED:
                fresh.append(True)
            elif kind == NORMAL and not self._data_shared(e):
                fresh.append(False)
            else:
                return None
        pieces = []
        i = 0
        while i < count:
            j = i + 1
            if fresh[i]:
                while j < count and fresh[j]:
                    j += 1
                host = self._alloc_data(first + i, j - i)
                self._check_write_target(first + i, host, (j - i) * cs)
                self._set_run(first + i, host, j - i)
            else:
                host = self._host_offset(first + i, entries[i])
                while j < count and not fresh[j] and \
                        entries[j] & OFFSET_MASK == host + (j - i) * cs:
                    j += 1
                self._check_write_target(first + i, host, (j - i) * cs)
            view = data[i * cs:j * cs]
            guest = (first + i) * cs
            if self.crypt is None:
                pieces.append(Piece(self.data, host, view))
            else:
                pieces.append(Piece(self.data, host, view, self.crypt.cipher,
                                    self.crypt.sector(host, guest)))
            i = j
        return pieces

    def _zero_clusters(self, offset, length, unmap, discard):
        """write_zeroes / discard where clusters can be zero clusters (see
        ``Qcow2Image.write_zeroes``): whole clusters become zero clusters
        or (*unmap*, *discard*) are freed; the bytes of partial clusters
        are written as zeros (not for discard, which is advice)."""
        cs = self.cluster_size
        first = ceil_div(offset, cs)
        last = (offset + length) // cs                    # whole clusters [first, last)
        if offset + length == self.size:
            last = ceil_div(self.size, cs)                # the image's last, short cluster
        if first >= last:
            if not discard:
                zero_fill(self.write, offset, length)
            return
        if not discard:
            zero_fill(self.write, offset, first * cs - offset)
            zero_fill(self.write, last * cs, max(0, offset + length - last * cs))
        freed = []
        for gcl in range(first, last):
            entry = self._entry(gcl)
            kind = entry_kind(entry, self.has_data_file)
            if kind == ZEROED and not entry & OFFSET_MASK or \
                    kind == UNALLOCATED and not self.header.backing_file:
                continue                                  # reads as zeros already
            host = entry & OFFSET_MASK if kind in (NORMAL, ZEROED) else 0
            if host and not (unmap or discard):
                # Keep the cluster (and its COPIED flag only when not shared).
                copied = 0 if self._data_shared(entry) else COPIED
                self._set_entry(gcl, host | copied | ZERO)
                continue
            # Over a backing file an unallocated cluster would show the
            # backing's data: a zero cluster hides it, as QEMU does.
            self._set_entry(gcl, 0 if discard and not self.header.backing_file else ZERO)
            if host and not self.has_data_file:
                freed.append(host)     # a shared cluster's refcount only drops
            elif kind == COMPRESSED_KIND:
                freed += self._compressed_hosts(entry)
        self._free_after_flush(freed)

    def _zero_runs_clusters(self):
        """``Qcow2Image.zero_runs`` from standard entries."""
        cs, n_entries = self.cluster_size, self.l2_entries
        nclusters = ceil_div(self.size, cs)
        start = None
        for l1i in range(len(self.l1)):
            first = l1i * n_entries
            if first >= nclusters:
                break
            n = min(n_entries, nclusters - first)
            tbl = self._l2(l1i)
            entries = struct.unpack_from(">%dQ" % n, tbl) if tbl is not None else (0,) * n
            for i, e in enumerate(entries):
                zero = entry_kind(e, self.has_data_file) in (UNALLOCATED, ZEROED)
                if zero and start is None:
                    start = (first + i) * cs
                elif not zero and start is not None:
                    yield start, (first + i) * cs
                    start = None
        if start is not None:
            yield start, self.size
        elif len(self.l1) * n_entries < nclusters:        # past a short L1: unallocated
            yield len(self.l1) * n_entries * cs, self.size
