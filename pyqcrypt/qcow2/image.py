# SPDX-License-Identifier: LGPL-2.1-or-later
"""A qcow2 image as a block device: L1/L2 mapping, allocation, encryption.

Reads follow L1 -> L2 -> host cluster (unallocated and zero clusters read
as zeros, compressed clusters are decoded: zlib or zstd, see compress.py).  Writes go in place to
allocated clusters, or to newly allocated ones (appended; in an external
data file the host offset is always the guest offset, which QEMU enforces), filling the rest
of a new cluster with zeros.  Encrypted images encrypt every data sector:
LUKS with the host sector number as IV (in the data file when there is
one), legacy AES with the guest sector number.

Metadata is cached and written back by ``flush()`` in a crash-safe order:
refcount blocks, sync (this also makes new data durable), L2 tables, sync,
L1 entries, sync.  A crash at any point leaves leaked
clusters at worst, never an L1 or L2 entry pointing at unwritten data.

Opened for writing, the image is untrusted as QEMU's qcow2 driver treats
it: the metadata (header cluster, L1 table, L2 tables, refcount table and
blocks, FDE region) is mapped once and must be disjoint (no two L1 entries
naming one L2 table, no refcount table entries naming one block, nothing
on the header or the L1 table), or the open is refused.  Every in-place
data write and every allocation is checked against that map (one bisection
per run); a write that would land on metadata is refused and the image
marked corrupt, as QEMU's overlap check does.  Before the first allocation
(new clusters go at the end of the file) one pass over the L2 tables makes
sure no entry points at or past that end: a new cluster would otherwise be
mapped twice.

Internal snapshots are kept intact: a write into a cluster or an L2 table
that a snapshot shares (no COPIED flag, or a refcount above 1) goes to a
new copy (re-encrypted for its new host offset); the old cluster's
refcount drops only after the new pointers are on disk.

Extended L2 entries (incompatible bit 4) add a 64-bit subcluster bitmap to
each entry; reads, writes and zeroing follow it per subcluster
(subclusters.py, mixed into Qcow2Image).

An image dropped without ``close()`` is closed by the garbage collector,
metadata flushed in the usual order, with a ``ResourceWarning`` (as Python
file objects do).  Any use after ``close()`` is an ``Error``.
"""

import functools
import struct
import sys
import threading
import warnings
from array import array
from typing import Union

from ..errors import Error, FormatError
from ..pipeline import Job, Piece
from ..storage import zero_fill
from .header import (CRYPT_LUKS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, AUTOCLEAR_DATA_FILE_RAW,
                     Qcow2Header)
from ..units import SECTOR, ceil_div, round_up
from .compress import ClusterDecoder
from .entries import (COMPRESSED, COMPRESSED_KIND, COPIED, NORMAL,
                      OFFSET_MASK, UNALLOCATED, ZERO, ZEROED, compressed_extent, entry_kind,
                      sub_mask)
from .refcounts import MetadataMap, Refcounts
from . import snapshots as snapshot_table
from .subclusters import Subclusters

L2_CACHE_TABLES = 64
MAX_HEADER_READ = 1 << 20


def _store_header(storage, header):
    storage.pwrite(0, header.pack())


def _serialized(method):
    """Run *method* under the image's lock: the L2 cache, the refcounts,
    the allocation cursor and the scratch buffer are shared state, so one
    image object may be used from several threads, one call at a time."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


class Qcow2Image(Subclusters):
    """An open qcow2 image; see the module docstring."""

    _lock = threading.RLock()   # replaced per image in __init__
    _closed = True              # until __init__ completes (so __del__ of a failed open is quiet)
    _corrupt = None             # why writes are refused, once an overlap was caught
    _mappings_checked = False   # L2 entries checked against the end of the file
    meta = None                 # MetadataMap, when writable
    size: int                   # the virtual size in bytes

    def __init__(self, storage, writable=False, data_storage=None, owned=()):
        self._lock = threading.RLock()
        self.st = storage
        self.writable = writable
        self.path = storage.path
        size = storage.size()
        head = storage.pread(0, min(size, MAX_HEADER_READ), "qcow2 header")
        self.header = Qcow2Header.parse(head, size, path=storage.path)
        h = self.header
        if writable:
            self._refuse_unwritable(h)
        self.cs = h.cluster_size
        self.size = h.size
        self.decoder = ClusterDecoder(h.compression_type, self.cs, self.path)
        self.l2_entries = h.l2_entries
        self.ext = h.extended_l2            # 128-bit L2 entries, 32 subclusters a cluster
        self.esize = h.l2_entry_size
        self.sc = h.subcluster_size
        self.l1 = self._read_l1(storage, h, size)
        # Internal snapshots: read-only here; writes copy what they share.
        self.snapshots = snapshot_table.read_snapshots(storage, h, size)
        self._snap_l2 = {}              # L2 tables a snapshot's L1 names -> (snapshot, L1 index)
        self._deferred_free = []        # host clusters to decrement after the next flush
        self.l1_dirty = set()
        self.l2_cache = {}          # l1 index -> bytearray
        self.l2_dirty = set()
        self.data = data_storage if data_storage is not None else storage
        self.external = data_storage is not None
        self._owned = list(owned)
        # (The callback holds no reference to self, so an image dropped
        # without close() is collected at once, not by the cycle collector.)
        self.refcounts = Refcounts(storage, h, lambda: _store_header(storage, h)) \
            if writable else None
        self.crypt = None           # set by open_qcow2 for encrypted images
        # The image below, read where this one has unallocated clusters
        # (set by pyqcrypt.image.open, which opens the chain); None reads
        # such clusters as zeros.
        self.backing = None
        if writable:
            self._prepare_writes(h, size)
        self._closed = False

    def _refuse_unwritable(self, h):
        """Images QEMU would not write either: marked corrupt or dirty, or
        LUKS in a v2 header."""
        if h.incompatible_features & INCOMPAT_CORRUPT:
            raise FormatError("image is marked corrupt; only read-only access is allowed "
                              "(repair it with qemu-img check -r all)", field="incompatible_features",
                              path=self.path)
        if h.incompatible_features & INCOMPAT_DIRTY:
            raise FormatError("image is marked dirty (refcounts may be stale); repair it with "
                              "qemu-img check -r all before writing", field="incompatible_features",
                              path=self.path)
        if h.version == 2 and h.crypt_method == CRYPT_LUKS:
            raise FormatError("qcow2 v2 images cannot hold LUKS encryption", field="version")

    def _read_l1(self, storage, h, file_size):
        """The L1 table, each entry checked to name a cluster-aligned L2
        table inside the file and past the header cluster."""
        raw = storage.pread(h.l1_table_offset, h.l1_size * 8, "L1 table") if h.l1_size else b""
        l1 = list(struct.unpack(">%dQ" % h.l1_size, raw))
        for i, e in enumerate(l1):
            off = e & OFFSET_MASK
            if off and (off % self.cs or off + self.cs > file_size or off < self.cs):
                raise FormatError("L1 entry %d points to 0x%x, outside the file or misaligned"
                                  % (i, off), field="L1 table", offset=h.l1_table_offset + 8 * i,
                                  path=self.path)
        return l1

    def _prepare_writes(self, h, file_size):
        """Before the first write: the tables snapshots share, the metadata
        map every write is checked against, the refcount checks, and the
        autoclear bits we do not maintain cleared."""
        if self.snapshots:
            if self.external:
                raise FormatError("internal snapshots with an external data file cannot be "
                                  "written (their clusters cannot be copied)", field="nb_snapshots",
                                  offset=60, path=self.path)
            self._snap_l2 = self._snapshot_l2_tables(file_size)
        self.meta = self._metadata_map(file_size)
        self.refcounts.meta = self.meta
        self.refcounts.check_writable(file_size)
        if h.autoclear_features & ~AUTOCLEAR_DATA_FILE_RAW:
            # Autoclear bits we do not maintain (e.g. bitmaps) must be cleared
            # before the first modification, as the specification requires.
            h.autoclear_features &= AUTOCLEAR_DATA_FILE_RAW
            self._write_header()
            self.st.sync()

    # ---- metadata ---------------------------------------------------------------------
    def _write_header(self):
        _store_header(self.st, self.header)

    def _metadata_map(self, file_size):
        """Map (and validate) every cluster that holds metadata; a
        FormatError naming the pointer when two structures share a
        cluster or one lies outside the file."""
        h, cs = self.header, self.cs
        ranges = [(0, cs, "header", "header", 0)]
        if h.l1_size:
            ranges.append((h.l1_table_offset, h.l1_size * 8, "L1 table", "l1_table_offset", 40))
        ranges.extend(self.refcounts.metadata_ranges())
        if h.fde is not None:
            ranges.append((h.fde[0], h.fde[1], "FDE (LUKS header) region", "fde", h.fde[0]))
        active = set()
        for i, e in enumerate(self.l1):
            off = e & OFFSET_MASK
            if off:
                active.add(off)
                ranges.append((off, cs, "L2 table of L1 entry %d" % i, "L1 table",
                               h.l1_table_offset + 8 * i))
        ranges.extend(snapshot_table.metadata_ranges(self.snapshots, h))
        for off, (sn, i) in sorted(self._snap_l2.items()):
            if off not in active:           # shared tables are in the map once
                ranges.append((off, cs, "L2 table of snapshot %s, L1 entry %d" % (sn.id, i),
                               "l1_table_offset", sn.l1_table_offset + 8 * i))
        for off, length, what, fld, where in ranges:
            if off + length > max(file_size, cs):
                raise FormatError("%s (0x%x, %d bytes) lies past the end of the file"
                                  % (what, off, length), field=fld, offset=where, path=self.path)
        return MetadataMap.build(cs, ranges, path=self.path)

    def _snapshot_l2_tables(self, file_size):
        """{L2 table offset: (snapshot, L1 index)} over every snapshot's L1
        table, each entry checked as the active L1's are."""
        tables = {}
        for sn in self.snapshots:
            for i, e in enumerate(snapshot_table.read_l1(self.st, sn)):
                off = e & OFFSET_MASK
                if not off:
                    continue
                if off % self.cs or off < self.cs or off + self.cs > file_size:
                    raise FormatError("L1 entry %d of snapshot %s points to 0x%x, outside the file "
                                      "or misaligned" % (i, sn.id, off), field="snapshot L1 table",
                                      offset=sn.l1_table_offset + 8 * i, path=self.path)
                tables.setdefault(off, (sn, i))
        return tables

    def _refuse_overlap(self, gcl, host, length, hit):
        """A data write to guest cluster *gcl* would land on metadata: mark
        the image corrupt (as QEMU does), refuse this and every later write."""
        l1i, l2i = divmod(gcl, self.l2_entries)
        where = (self.l1[l1i] & OFFSET_MASK) + 8 * l2i if l1i < len(self.l1) else None
        msg = ("write to guest cluster %d refused: its host cluster(s) at 0x%x (%d bytes) overlap "
               "the %s at 0x%x; the image is marked corrupt (repair it with qemu-img check -r all)"
               % (gcl, host, length, hit[2], hit[0]))
        self._corrupt = msg
        try:
            self.flush()            # what was written before is consistent: keep it
        finally:
            if self.header.version >= 3:       # v2 has no feature bits
                self.header.incompatible_features |= INCOMPAT_CORRUPT
                # Only the feature field: the rest of the header stays as it is.
                self.st.pwrite(72, struct.pack(">Q", self.header.incompatible_features))
                self.st.sync()
        raise FormatError(msg, field="L2 entry", offset=where, path=self.path)

    def _allocate(self, n):
        """*n* new contiguous clusters at the end of the file."""
        if not self._mappings_checked:
            self._check_mappings()
        return self.refcounts.alloc(n)

    def _check_mappings(self):
        """No L2 entry may point at or past the end of the file, where new
        clusters go.  Once, before the first allocation: a few big-integer
        operations per L2 table (the per-entry loop runs only for tables
        with compressed clusters or a bad entry)."""
        eof, cs, n = self.st.size(), self.cs, self.l2_entries
        pad = bytes(self.esize - 8)         # the subcluster bitmap, when there is one
        offsets = int.from_bytes((struct.pack(">Q", OFFSET_MASK) + pad) * n, "big")
        compressed = int.from_bytes((struct.pack(">Q", COMPRESSED) + pad) * n, "big")
        cbits = self.header.cluster_bits
        active = [(l1i, l1e & OFFSET_MASK, True) for l1i, l1e in enumerate(self.l1)]
        seen = {off for _, off, _ in active}
        # Tables only a snapshot uses: new clusters must not land on their data either.
        others = [(sn_i, off, False) for off, (_, sn_i) in sorted(self._snap_l2.items())
                  if off not in seen]
        for l1i, l2off, is_active in active + others:
            if not l2off:
                continue
            tbl = self.l2_cache.get(l1i) if is_active else None
            if tbl is None:
                tbl = self.st.pread(l2off, cs, "L2 table")
            t = int.from_bytes(tbl, "big")
            if not t & compressed:
                hosts = array("Q", (t & offsets).to_bytes(cs, "big"))
                if sys.byteorder == "little":
                    hosts.byteswap()
                if max(hosts) < eof:
                    continue
            for i, e in enumerate(struct.unpack(">%dQ" % (cs // 8), tbl)[::self.esize // 8]):
                host = compressed_extent(e, cbits)[0] if e & COMPRESSED else e & OFFSET_MASK
                if host >= eof:
                    gcl = l1i * n + i
                    raise FormatError(
                        "guest cluster %d maps to 0x%x, at or past the end of the file (0x%x), "
                        "where new clusters go; it would be mapped twice (repair the image with "
                        "qemu-img check -r all)" % (gcl, host, eof),
                        field="L2 entry", offset=l2off + self.esize * i, path=self.path)
        self._mappings_checked = True

    def _check_write_target(self, gcl, host, length):
        if self.meta is not None and not self.external:
            hit = self.meta.find(host, length)
            if hit is not None:
                self._refuse_overlap(gcl, host, length, hit)

    def _l2(self, l1i, create=False):
        tbl = self.l2_cache.get(l1i)
        if tbl is not None:
            return tbl
        off = self.l1[l1i] & OFFSET_MASK
        if not off:
            if not create:
                return None
            off = self._allocate(1)
            if self.meta is not None:
                self.meta.add(off, self.cs, "L2 table of L1 entry %d" % l1i)
            tbl = bytearray(self.cs)
            self.l1[l1i] = off | COPIED
            self.l1_dirty.add(l1i)
            self.l2_dirty.add(l1i)
        else:
            tbl = bytearray(self.st.pread(off, self.cs, "L2 table"))
        if len(self.l2_cache) >= L2_CACHE_TABLES and not self.l2_dirty:
            self.l2_cache.clear()
        self.l2_cache[l1i] = tbl
        return tbl

    def _entry(self, gcluster):
        l1i, l2i = divmod(gcluster, self.l2_entries)
        if l1i >= len(self.l1):
            raise FormatError("guest cluster %d is beyond the L1 table" % gcluster, field="L1 table")
        tbl = self._l2(l1i)
        return 0 if tbl is None else struct.unpack_from(">Q", tbl, l2i * self.esize)[0]

    def _bitmap(self, gcluster):
        """The subcluster bitmap of an extended L2 entry (0 otherwise)."""
        if not self.ext:
            return 0
        l1i, l2i = divmod(gcluster, self.l2_entries)
        tbl = self._l2(l1i) if l1i < len(self.l1) else None
        return 0 if tbl is None else struct.unpack_from(">Q", tbl, l2i * 16 + 8)[0]

    def _set_entry(self, gcluster, value, bitmap=None):
        l1i, l2i = divmod(gcluster, self.l2_entries)
        tbl = self._l2(l1i, create=True)
        if self._l2_shared(l1i):
            self._copy_l2(l1i)
        struct.pack_into(">Q", tbl, l2i * self.esize, value)
        if self.ext and bitmap is not None:
            struct.pack_into(">Q", tbl, l2i * 16 + 8, bitmap)
        self.l2_dirty.add(l1i)

    # ---- copy-on-write (clusters and L2 tables shared with snapshots) --------------
    def _l2_shared(self, l1i):
        """The L2 table of L1 entry *l1i* is shared (with a snapshot): its
        L1 entry lacks COPIED, or a snapshot's L1 table names it."""
        e = self.l1[l1i]
        off = e & OFFSET_MASK
        return bool(off) and (not e & COPIED or off in self._snap_l2)

    def _copy_l2(self, l1i):
        """Give L1 entry *l1i* its own copy of its shared L2 table (the
        cached contents move to a new cluster; the data clusters it names
        keep their refcounts, as every L1 path counts them once).  The old
        table's refcount drops only after the new L1 entry is on disk."""
        old = self.l1[l1i] & OFFSET_MASK
        new = self._allocate(1)
        if self.meta is not None:
            self.meta.add(new, self.cs, "L2 table of L1 entry %d" % l1i)
        self.l1[l1i] = new | COPIED
        self.l1_dirty.add(l1i)
        self.l2_dirty.add(l1i)
        self._deferred_free.append(old)

    def _data_shared(self, entry):
        """A standard data cluster another L2 entry (a snapshot's) also
        names: no COPIED flag, or (with snapshots) a refcount above 1."""
        if self.external or not entry & OFFSET_MASK:
            return False
        if not entry & COPIED:
            return True
        return bool(self.snapshots) and self.refcounts.get((entry & OFFSET_MASK) // self.cs) > 1

    def _copy_on_write(self, gcl, entry, within, data):
        """Write *data* at *within* of guest cluster *gcl*, whose host
        cluster is shared: a new cluster gets the old contents (decrypted,
        re-encrypted for its own host offset) with *data* over them; the
        old cluster's refcount drops after the new mapping is on disk."""
        cs = self.cs
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

    def _host_offset(self, gcluster, entry):
        """Host offset of a standard cluster entry, validated."""
        off = entry & OFFSET_MASK
        if off % self.cs:
            raise FormatError("L2 entry for guest cluster %d (0x%x) is not cluster-aligned"
                              % (gcluster, entry), field="L2 entry", path=self.path)
        if self.external:
            if off != gcluster * self.cs:
                raise FormatError("external data file: guest cluster %d maps to 0x%x, not its own "
                                  "offset" % (gcluster, off), field="L2 entry", path=self.path)
        elif off < self.cs or off >= self.st.size():
            raise FormatError("L2 entry for guest cluster %d points to 0x%x, outside the file"
                              % (gcluster, off), field="L2 entry", path=self.path)
        return off

    # ---- reads ---------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise Error("%s is closed" % self.path)

    def _check_range(self, offset, length):
        if self._closed:
            raise Error("%s is closed" % self.path)
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Error("I/O of %d bytes at %d is outside the %d-byte image" % (length, offset, self.size))

    @_serialized
    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)       # before allocating *length* bytes
        out = bytearray(length)
        self.readinto(offset, out)
        return bytes(out)

    @_serialized
    def readinto(self, offset, buf, jobs=None):
        """Read len(buf) bytes at *offset* into the writable *buf*
        (decrypting in place, no intermediate copies); returns buf.  With
        a list *jobs* (the conversion pipeline), sector-aligned encrypted
        runs are left as ciphertext and their decryption is appended to it
        as pipeline Jobs, and whole compressed clusters are left for their
        decoding jobs, all to be run before *buf* is used."""
        view = memoryview(buf).cast("B")
        length = len(view)
        self._check_range(offset, length)
        pos = 0
        while pos < length:
            goff = offset + pos
            gcl, within = divmod(goff, self.cs)
            take = min(self.cs - within, length - pos)
            if self.ext:
                self._read_subclusters(gcl, within, view[pos:pos + take])
                pos += take
                continue
            entry = self._entry(gcl)
            kind = entry_kind(entry, self.external)
            if kind == COMPRESSED_KIND:
                if take == self.cs:
                    self._read_compressed(gcl, entry, view[pos:pos + take], jobs)
                else:
                    view[pos:pos + take] = self._read_compressed(gcl, entry)[within:within + take]
            elif kind == UNALLOCATED and self.backing is not None:
                # Fall through to the backing image, a run of clusters at once.
                nxt = gcl + 1
                while pos + take < length and take < (8 << 20) and \
                        entry_kind(self._entry(nxt), self.external) == UNALLOCATED:
                    take += min(self.cs, length - pos - take)
                    nxt += 1
                self._read_backing(goff, view[pos:pos + take])
            elif kind != NORMAL:
                view[pos:pos + take] = bytes(take)
            else:
                host = self._host_offset(gcl, entry)
                # Extend over following clusters that are contiguous on the host.
                run, nxt = take, gcl + 1
                while pos + run < length and run < (8 << 20):
                    e2 = self._entry(nxt)
                    if entry_kind(e2, self.external) != NORMAL or \
                            (e2 & OFFSET_MASK) != host + (nxt - gcl) * self.cs:
                        break
                    run += min(self.cs, length - pos - run)
                    nxt += 1
                self._read_host_into(host + within, goff, view[pos:pos + run], jobs)
                take = run
            pos += take
        return buf

    def _read_backing(self, offset, view):
        """Guest bytes from the backing image; past its end, zeros (as QEMU
        reads a backing file shorter than its overlay)."""
        avail = max(0, min(len(view), self.backing.size - offset))
        if avail:
            self.backing.readinto(offset, view[:avail])
        if avail < len(view):
            view[avail:] = bytes(len(view) - avail)

    def _read_host_into(self, host, guest, view, jobs=None):
        length = len(view)
        if self.crypt is None:
            self._pread_padded(view, host)
            return
        if host % SECTOR == 0 and length % SECTOR == 0:
            self._pread_padded(view, host)            # decrypt in place
            if jobs is None:
                self.crypt.decrypt(view, host, guest)
            else:
                jobs.append(self.crypt.job(False, view, host, guest))
            return
        lo = host - host % SECTOR
        hi = round_up(host + length, SECTOR)
        tmp = bytearray(hi - lo)
        self._pread_padded(tmp, lo)
        self.crypt.decrypt(tmp, lo, guest - (host - lo))
        view[:] = tmp[host - lo:host - lo + length]

    def _pread_padded(self, buf, offset):
        """Read into buf; bytes past the end of the file read as zeros."""
        view = memoryview(buf).cast("B")
        size = self.data.size()
        avail = max(0, min(len(view), size - offset))
        if avail:
            self.data.preadinto(view[:avail], offset, "cluster data")
        if avail < len(view):
            view[avail:] = bytes(len(view) - avail)

    def _read_compressed(self, gcl, entry, out=None, jobs=None):
        """Decode the compressed guest cluster *gcl* into *out* (one
        cluster), or into a new buffer that is returned; with a list *jobs*
        (the conversion pipeline) the decoding is left there as a job."""
        off, clen = compressed_extent(entry, self.header.cluster_bits)
        if self.crypt is not None:
            # QEMU writes compressed clusters unencrypted, even into an
            # encrypted image (qemu-io write -c does; qemu-img convert -c
            # refuses encryption); plaintext in an encrypted image is refused.
            raise FormatError("guest cluster %d is stored compressed, which QEMU never encrypts, "
                              "in an encrypted image: refusing unencrypted data" % gcl,
                              field="L2 entry", path=self.path)
        if off < self.cs or off >= self.st.size():
            raise FormatError("compressed cluster for guest cluster %d lies outside the file" % gcl,
                              field="L2 entry", path=self.path)
        clen = min(clen, self.st.size() - off, 2 * self.cs)
        if out is None:
            out = bytearray(self.cs)
        if jobs is not None:
            # The job reads its compressed input when it runs, so a chunk's
            # pending jobs hold no input: memory stays one cluster's worth
            # per worker, however many clusters name large (or hostile) data.
            jobs.append(self.decoder.job((self.st, off, clen), out, gcl))
        else:
            self.decoder.decode_into(self.st.pread(off, clen, "compressed cluster"), out, gcl)
        return out

    # ---- writes ----------------------------------------------------------------------------
    @_serialized
    def write(self, offset: int, data: Union[bytes, bytearray, memoryview]) -> None:
        self._check_open()
        if not self.writable:
            raise Error("%s is open read-only" % self.path)
        if self._corrupt is not None:
            raise FormatError("writes are refused: " + self._corrupt, field="L2 entry", path=self.path)
        data = memoryview(data).cast("B")
        self._check_range(offset, len(data))
        if self.ext:
            self._write_subclusters(offset, data)
            return
        pos = 0
        while pos < len(data):
            goff = offset + pos
            gcl, within = divmod(goff, self.cs)
            entry = self._entry(gcl)
            kind = entry_kind(entry, self.external)
            if kind == NORMAL or (kind == ZEROED and entry & OFFSET_MASK):
                take = min(self.cs - within, len(data) - pos)
                self._write_allocated(gcl, within, entry, data[pos:pos + take])
            else:
                take = self._write_new_run(gcl, within, entry, data[pos:])
            pos += take
            if len(self.l2_dirty) > L2_CACHE_TABLES:
                self.flush()

    def _write_allocated(self, gcl, within, entry, piece):
        """Write *piece* at *within* of the allocated guest cluster *gcl*:
        in place, or into a copy when a snapshot shares the cluster, or
        (a preallocated zero cluster) the whole cluster, then mapped."""
        host = self._host_offset(gcl, entry)
        if self._data_shared(entry):
            self._copy_on_write(gcl, entry, within, piece)
            return
        self._check_write_target(gcl, host, self.cs)
        if entry & ZERO:
            whole = bytearray(self.cs)
            whole[within:within + len(piece)] = piece
            self._write_host(host, gcl * self.cs, whole)
            self._set_entry(gcl, host | COPIED)
        else:
            self._write_host(host + within, gcl * self.cs + within, piece)

    def _write_new_run(self, gcl, within, entry, rest):
        """Write the start of *rest* (from *within* of guest cluster *gcl*,
        which is not allocated) into newly allocated clusters, one run for
        as many consecutive unallocated clusters as it covers (at most
        512); returns how many bytes of *rest* it wrote."""
        n = 1
        while (within + len(rest) > n * self.cs and n < 512
               and entry_kind(self._entry(gcl + n), self.external) == UNALLOCATED):
            n += 1
        host = self._alloc_data(gcl, n)
        self._check_write_target(gcl, host, n * self.cs)
        span = self._scratch(n * self.cs)
        take = min(n * self.cs - within, len(rest))
        if within or take < n * self.cs:
            span[:self.cs] = self._old_cluster(gcl, entry)
            if n > 1:
                last_entry = self._entry(gcl + n - 1)
                span[-self.cs:] = self._old_cluster(gcl + n - 1, last_entry)
        span[within:within + take] = rest[:take]
        # Whole new clusters: encrypt the scratch copy in place.
        if self.crypt is not None:
            self.crypt.encrypt(span, host, gcl * self.cs)
        self.data.pwrite(host, span)
        for i in range(n):
            self._set_entry(gcl + i, (host + i * self.cs) | COPIED)
        return take

    @_serialized
    def plan_write(self, offset, data):
        """The conversion pipeline's write of whole clusters: map
        [offset, offset+len(data)) (new clusters are allocated and the
        cached L2 tables and refcounts updated, a run of entries at a time;
        nothing is written) and return the pipeline Pieces that put *data*
        there: the caller encrypts them in place (it gives up *data*) and
        writes them, all of them before the next ``flush()``.  None when
        the range needs more than that (a partial cluster, a zero,
        compressed or shared cluster, subclusters): use ``write()``."""
        self._check_open()
        if not self.writable or self._corrupt is not None or self.ext:
            return None
        data = memoryview(data).cast("B")
        cs, n = self.cs, len(data)
        if offset % cs or n % cs or not n:
            return None
        self._check_range(offset, n)
        first, count = offset // cs, n // cs
        entries = self._entries(first, count)
        if entries is None:
            return None
        fresh = []
        for e in entries:
            kind = entry_kind(e, self.external)
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

    @_serialized
    def wants_flush(self):
        """More dirty L2 tables than the cache holds: time to flush (the
        pipeline flushes once every queued piece is written)."""
        return len(self.l2_dirty) > L2_CACHE_TABLES

    def _entries(self, first, count):
        """The L2 entries of guest clusters [first, first+count), read a
        table at a time; None past the L1 table."""
        out = []
        gcl, end = first, first + count
        while gcl < end:
            l1i, l2i = divmod(gcl, self.l2_entries)
            if l1i >= len(self.l1):
                return None
            k = min(end - gcl, self.l2_entries - l2i)
            tbl = self._l2(l1i)
            if tbl is None:
                out.extend([0] * k)
            else:
                out.extend(struct.unpack_from(">%dQ" % k, tbl, l2i * 8))
            gcl += k
        return out

    def _set_run(self, gcl, host, n):
        """Map guest clusters [gcl, gcl+n) to the contiguous host clusters
        from *host*: one slice of each L2 table, not an entry at a time."""
        cs = self.cs
        end = gcl + n
        while gcl < end:
            l1i, l2i = divmod(gcl, self.l2_entries)
            k = min(end - gcl, self.l2_entries - l2i)
            tbl = self._l2(l1i, create=True)
            if self._l2_shared(l1i):
                self._copy_l2(l1i)
            first = host | COPIED
            struct.pack_into(">%dQ" % k, tbl, l2i * 8, *range(first, first + k * cs, cs))
            self.l2_dirty.add(l1i)
            gcl += k
            host += k * cs

    @_serialized
    def write_zeroes(self, offset, length, unmap=False):
        """Make [offset, offset+length) read as zeros, as qemu-io ``write
        -z`` does.  On a version 3 image without an external data file,
        whole clusters become zero clusters: the host cluster stays
        allocated ("preallocated zero"), or with *unmap* is freed; partial
        clusters get zero bytes.  Elsewhere (version 2, external data files,
        whose mapping is fixed) zero bytes are written, encrypted like any
        data, so a raw data file stays a valid LUKS payload."""
        self._zero_range(offset, length, unmap, discard=False)

    @_serialized
    def discard(self, offset, length):
        """Give back whole clusters in the range (qemu-io ``discard``): on
        a version 3 image without an external data file they become
        unallocated and read as zeros (zero clusters over a backing file,
        whose data must not show through).  Partial clusters, and images where
        clusters cannot be given back, are left as they are: discard is
        advice, as in QEMU."""
        self._zero_range(offset, length, True, discard=True)

    def _zero_range(self, offset, length, unmap, discard):
        self._check_open()
        if not self.writable:
            raise Error("%s is open read-only" % self.path)
        if self._corrupt is not None:
            raise FormatError("writes are refused: " + self._corrupt, field="L2 entry", path=self.path)
        self._check_range(offset, length)
        if length == 0:
            return
        can_map = self.header.version >= 3 and not self.external
        if self.ext and can_map:
            self._zero_subclusters(offset, length, unmap, discard)
            return
        first = ceil_div(offset, self.cs)
        last = (offset + length) // self.cs              # whole clusters [first, last)
        if offset + length == self.size:
            last = ceil_div(self.size, self.cs)           # the image's last, short cluster
        if not can_map or first >= last:
            if not discard:
                zero_fill(self.write, offset, length)
            return
        if not discard:
            zero_fill(self.write, offset, first * self.cs - offset)
            zero_fill(self.write, last * self.cs, max(0, offset + length - last * self.cs))
        freed = []
        for gcl in range(first, last):
            entry = self._entry(gcl)
            kind = entry_kind(entry, self.external)
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
            if host and not self.external:
                freed.append(host)     # a shared cluster's refcount only drops
            # A compressed cluster's host bytes may be shared: left as a leak.
        if freed:
            # No reference may point at a cluster whose refcount is 0: the
            # entries reach the disk first, the refcounts drop after.
            self.flush()
            for host in freed:
                self.refcounts.free(host, 1)

    def _scratch(self, n):
        """A reusable buffer of n bytes (avoids a fresh allocation, zero
        fill and page faults per write)."""
        buf = getattr(self, "_scratch_buf", None)
        if buf is None or len(buf) < n:
            buf = self._scratch_buf = bytearray(max(n, 4 << 20))
        return memoryview(buf)[:n]

    def _old_cluster(self, gcl, entry):
        """What the guest sees in cluster *gcl* now (for a partial write
        into a cluster that is being allocated)."""
        if entry & COMPRESSED:
            return self._read_compressed(gcl, entry)
        old = bytearray(self.cs)
        if self.backing is not None and entry_kind(entry, self.external) == UNALLOCATED:
            n = min(self.cs, self.size - gcl * self.cs)
            self._read_backing(gcl * self.cs, memoryview(old)[:n])
        return old

    def _alloc_data(self, gcl, n):
        if not self.external:
            return self._allocate(n)
        # QEMU requires every external data file cluster at its guest offset.
        return gcl * self.cs

    def _write_host(self, host, guest, data):
        if self.crypt is None:
            self.data.pwrite(host, data)
            return
        lo = host - host % SECTOR
        hi = round_up(host + len(data), SECTOR)
        buf = bytearray(hi - lo)
        if lo != host or hi != host + len(data):
            self._pread_padded(buf, lo)
            self.crypt.decrypt(buf, lo, guest - (host - lo))
        buf[host - lo:host - lo + len(data)] = data
        self.crypt.encrypt(buf, lo, guest - (host - lo))
        self.data.pwrite(lo, buf)

    # ---- flush / close ---------------------------------------------------------------------
    @_serialized
    def flush(self):
        self._check_open()
        if not self.writable:
            return
        if self.refcounts.has_dirty or self.l2_dirty or self.l1_dirty:
            self.refcounts.flush()
            if self.external:
                self.data.sync()
            self.st.sync()
            for l1i in sorted(self.l2_dirty):
                self.st.pwrite(self.l1[l1i] & OFFSET_MASK, self.l2_cache[l1i])
            if self.l2_dirty:
                self.st.sync()
            self.l2_dirty.clear()
            for l1i in sorted(self.l1_dirty):
                self.st.pwrite(self.header.l1_table_offset + 8 * l1i, struct.pack(">Q", self.l1[l1i]))
            if self.l1_dirty:
                self.st.sync()
            self.l1_dirty.clear()
            if self._deferred_free:
                # Clusters no longer named by the active layer: their
                # refcounts drop only now that the new references are on
                # disk (a crash before this leaks them, never more).
                freed, self._deferred_free = self._deferred_free, []
                for host in freed:
                    self.refcounts.free(host, 1)
                self.refcounts.flush()
                self.st.sync()
        else:
            if self.external:
                self.data.sync()
            self.st.sync()

    @_serialized
    def close(self) -> None:
        """Flush (when writable), release the key, the locks and the files
        this image owns.  A second call does nothing."""
        if self._closed:
            return
        try:
            if self.writable and self.st.fd >= 0:
                self.flush()
        finally:
            self._release()

    def _release(self):
        self._closed = True
        if self.crypt is not None:
            self.crypt.close()
            self.crypt = None
        owned, self._owned = self._owned, []
        for s in owned:
            s.close()
        self.l2_cache = {}
        backing, self.backing = self.backing, None
        if backing is not None:
            backing.close()

    def _abandon(self):
        """Release everything without flushing (an open that failed)."""
        if not self._closed:
            self._release()

    @property
    def closed(self):
        return self._closed

    def __del__(self):
        if self._closed:
            return
        if self.writable or self._owned:
            try:
                warnings.warn("unclosed image %s" % self.path, ResourceWarning, source=self)
            except Exception:       # warnings as errors, interpreter shutdown
                pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @_serialized
    def is_allocated(self, offset, length):
        """True when any cluster in the range may hold data: allocated here,
        or unallocated here and allocated in the backing chain; used to
        keep conversions sparse."""
        self._check_open()
        first, last = offset // self.cs, (offset + length - 1) // self.cs
        below = False
        for gcl in range(first, last + 1):
            if self.ext:
                lo = max(offset, gcl * self.cs) - gcl * self.cs
                hi = min(offset + length, (gcl + 1) * self.cs) - gcl * self.cs
                rng = sub_mask(lo // self.sc, ceil_div(hi, self.sc))
                if self._data_bits(gcl) & rng:
                    return True
                below = below or bool(rng & ~(self._bitmap(gcl) >> 32))
                continue
            kind = entry_kind(self._entry(gcl), self.external)
            if kind in (NORMAL, COMPRESSED_KIND):
                return True
            below = below or kind == UNALLOCATED
        if below and self.backing is not None and offset < self.backing.size:
            return self.backing.is_allocated(offset, min(length, self.backing.size - offset))
        return False

    def zero_runs(self):
        """The merged (start, end) guest byte ranges that read as zeros
        because of the metadata alone (unallocated or zero clusters),
        whatever the host or data file holds there.  Needs no key.  With a
        backing file, unallocated clusters are not zeros: refused."""
        self._check_open()
        if self.header.backing_file:
            raise Error("%s has a backing file: its unallocated clusters read from %s"
                        % (self.path, self.header.backing_file))
        if self.ext:
            yield from self._zero_runs_subclusters()
            return
        nclusters = ceil_div(self.size, self.cs)
        start = None
        for l1i in range(len(self.l1)):
            first = l1i * self.l2_entries
            if first >= nclusters:
                break
            n = min(self.l2_entries, nclusters - first)
            tbl = self._l2(l1i)
            entries = struct.unpack_from(">%dQ" % n, tbl) if tbl is not None else (0,) * n
            for i, e in enumerate(entries):
                zero = entry_kind(e, self.external) in (UNALLOCATED, ZEROED)
                if zero and start is None:
                    start = (first + i) * self.cs
                elif not zero and start is not None:
                    yield start, (first + i) * self.cs
                    start = None
        if start is not None:
            yield start, self.size
        elif len(self.l1) * self.l2_entries < nclusters:        # past a short L1: unallocated
            yield len(self.l1) * self.l2_entries * self.cs, self.size

    def __repr__(self):
        return "<Qcow2Image %s, %d bytes>" % (self.path, self.size)


class SectorCrypt:
    """Encrypts a host run: IV from the host sector (LUKS) or the guest
    sector (legacy AES)."""

    def __init__(self, cipher, iv_from_host):
        self.cipher = cipher
        self.iv_from_host = iv_from_host

    def _sector(self, host, guest):
        return (host if self.iv_from_host else guest) // SECTOR

    def sector(self, host, guest):
        """The IV sector number of the run at *host* (guest offset *guest*)."""
        return self._sector(host, guest)

    def job(self, encrypt, view, host, guest):
        """A pipeline Job that encrypts or decrypts *view* in place."""
        return Job(self.cipher, encrypt, view, self._sector(host, guest))

    def encrypt(self, buf, host, guest):
        self.cipher.encrypt(buf, self._sector(host, guest))

    def decrypt(self, buf, host, guest):
        self.cipher.decrypt(buf, self._sector(host, guest))

    def close(self):
        self.cipher.close()

