# SPDX-License-Identifier: LGPL-2.1-or-later
"""A qcow2 image as a block device (QEMU's qcow2.c): ``Qcow2Image``, its
open and lifecycle, and the public I/O calls, each checked here and done by
the modules mixed into it, split as QEMU splits its driver:

- mapping.py: L1/L2 tables, the L2 cache, L2 entry codecs;
- allocation.py: new clusters and the metadata-overlap guard;
- snapshot_cow.py: copy-on-write of clusters internal snapshots share;
- crypt_io.py: guest data in host clusters, encrypted per sector;
- clusters.py / subclusters.py: reads, writes and zeroing with standard or
  extended (incompatible bit 4, 32 subclusters a cluster) L2 entries.

Compressed clusters (zlib or zstd, compress.py) and the backing image are
read here.  Writes go in place to allocated clusters, or to newly allocated
ones (appended; in an external data file the host offset is always the
guest offset, which QEMU enforces).

Metadata is cached and written back by ``flush()`` in a crash-safe order:
refcount blocks, sync (this also makes new data durable), L2 tables, sync,
L1 entries, sync.  A crash at any point leaves leaked clusters at worst,
never an L1 or L2 entry pointing at unwritten data.

An image dropped without ``close()`` is closed by the garbage collector,
metadata flushed in the usual order, with a ``ResourceWarning`` (as Python
file objects do).  Any use after ``close()`` is an ``Error``
(pyqcrypt.lifecycle).
"""

import functools
import threading
from typing import Union

from ..errors import Error, FormatError
from ..lifecycle import ImageLifecycle
from ..storage import zero_fill
from .header import Qcow2Header
from ..units import ceil_div
from .allocation import Allocation
from .block_status import BlockStatusQuery
from .clusters import Clusters
from .compress import ClusterDecoder
from .crypt_io import HostData
from .entries import COMPRESSED_KIND, NORMAL, UNALLOCATED, compressed_extent, entry_kind, sub_mask
from .mapping import L2Tables
from .refcounts import Refcounts
from .snapshot_cow import SnapshotCow
from . import snapshots as snapshot_table
from .subclusters import Subclusters
from .header import MAX_HEADER_READ


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


class Qcow2Image(ImageLifecycle, Clusters, Subclusters, SnapshotCow, Allocation, L2Tables, HostData,
                 BlockStatusQuery):
    """An open qcow2 image; see the module docstring."""

    _lock = threading.RLock()   # replaced per image in __init__
    size: int                   # the virtual size in bytes
    format_name = "qcow2"        # pyqcrypt.Image.format

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
        self.cluster_size = h.cluster_size
        self.size = h.size
        self.decoder = ClusterDecoder(h.compression_type, self.cluster_size, self.path)
        self.l2_entries = h.l2_entries
        self.extended_l2 = h.extended_l2    # 128-bit L2 entries, 32 subclusters a cluster
        self.esize = h.l2_entry_size
        self.subcluster_size = h.subcluster_size
        self.l1 = self._read_l1(storage, h, size)
        # Internal snapshots: read-only here; writes copy what they share.
        self.snapshots = snapshot_table.read_snapshots(storage, h, size)
        self._snap_l2 = {}              # L2 tables a snapshot's L1 names -> (snapshot, L1 index)
        self._deferred_free = []        # host clusters to decrement after the next flush
        self.l1_dirty = set()
        self.l2_cache = {}          # l1 index -> bytearray
        self.l2_dirty = set()
        self.data = data_storage if data_storage is not None else storage
        self.has_data_file = data_storage is not None
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

    def _write_header(self):
        _store_header(self.st, self.header)

    # ---- checks ----------------------------------------------------------------------------
    def _check_range(self, offset, length):
        self._check_open()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Error("I/O of %d bytes at %d is outside the %d-byte image" % (length, offset, self.size))

    def _check_writes_allowed(self):
        """Open, writable, and no overlap caught (see allocation.py)."""
        self._check_open()
        if not self.writable:
            raise Error("%s is open read-only" % self.path)
        if self._corrupt is not None:
            raise FormatError("writes are refused: " + self._corrupt, field="L2 entry", path=self.path)

    # ---- reads -----------------------------------------------------------------------------
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
        self._check_range(offset, len(view))
        if self.extended_l2:
            self._readinto_subclusters(offset, view)
        else:
            self._read_clusters(offset, view, jobs)
        return buf

    def _read_backing(self, offset, view):
        """Guest bytes from the backing image; past its end, zeros (as QEMU
        reads a backing file shorter than its overlay)."""
        avail = max(0, min(len(view), self.backing.size - offset))
        if avail:
            self.backing.readinto(offset, view[:avail])
        if avail < len(view):
            view[avail:] = bytes(len(view) - avail)

    def _read_compressed(self, gcl, entry, out=None, jobs=None):
        """Decode the compressed guest cluster *gcl* into *out* (one
        cluster), or into a new buffer that is returned; with a list *jobs*
        (the conversion pipeline) the decoding is left there as a job."""
        cs = self.cluster_size
        off, clen = compressed_extent(entry, self.header.cluster_bits)
        if self.crypt is not None:
            # QEMU writes compressed clusters unencrypted, even into an
            # encrypted image (qemu-io write -c does; qemu-img convert -c
            # refuses encryption); plaintext in an encrypted image is refused.
            raise FormatError("guest cluster %d is stored compressed, which QEMU never encrypts, "
                              "in an encrypted image: refusing unencrypted data" % gcl,
                              field="L2 entry", path=self.path)
        if off < cs or off >= self.st.size():
            raise FormatError("compressed cluster for guest cluster %d lies outside the file" % gcl,
                              field="L2 entry", path=self.path)
        clen = min(clen, self.st.size() - off, 2 * cs)
        if out is None:
            out = bytearray(cs)
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
        self._check_writes_allowed()
        data = memoryview(data).cast("B")
        self._check_range(offset, len(data))
        if self.extended_l2:
            self._write_subclusters(offset, data)
        else:
            self._write_clusters(offset, data)

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
        if not self.writable or self._corrupt is not None or self.extended_l2:
            return None
        data = memoryview(data).cast("B")
        cs, n = self.cluster_size, len(data)
        if offset % cs or n % cs or not n:
            return None
        self._check_range(offset, n)
        return self._plan_clusters(offset // cs, data)

    @_serialized
    def wants_flush(self):
        """More dirty L2 tables than the cache holds: time to flush (the
        pipeline flushes once every queued piece is written)."""
        return self._l2_overfull()

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
        self._check_writes_allowed()
        self._check_range(offset, length)
        if length == 0:
            return
        can_map = self.header.version >= 3 and not self.has_data_file
        if can_map and self.extended_l2:
            self._zero_subclusters(offset, length, unmap, discard)
        elif can_map:
            self._zero_clusters(offset, length, unmap, discard)
        elif not discard:
            zero_fill(self.write, offset, length)

    # ---- flush / close ---------------------------------------------------------------------
    @_serialized
    def flush(self):
        self._check_open()
        if not self.writable:
            return
        if self.refcounts.has_dirty or self.l2_dirty or self.l1_dirty:
            self.refcounts.flush()
            self._sync_data()
            self._store_tables()
            self._free_deferred()
        else:
            self._sync_data()

    def _sync_data(self):
        """Make the data written so far durable (and the refcounts)."""
        if self.has_data_file:
            self.data.sync()
        self.st.sync()

    @_serialized
    def close(self) -> None:
        """Flush (when writable), release the key, the locks and the files
        this image owns.  A second call does nothing."""
        super().close()

    def _finish(self):
        if self.writable and self.st.fd >= 0:
            self.flush()

    def _release(self):
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

    def _warns_when_dropped(self):
        """An image that writes or owns its files; not one opened on
        files its caller keeps (e.g. by conversion/to_luks.py)."""
        return self.writable or bool(self._owned)

    # ---- the map ---------------------------------------------------------------------------
    @_serialized
    def is_allocated(self, offset, length):
        """True when any cluster in the range may hold data: allocated here,
        or unallocated here and allocated in the backing chain; used to
        keep conversions sparse."""
        self._check_open()
        cs, sc = self.cluster_size, self.subcluster_size
        first, last = offset // cs, (offset + length - 1) // cs
        below = False
        for gcl in range(first, last + 1):
            if self.extended_l2:
                lo = max(offset, gcl * cs) - gcl * cs
                hi = min(offset + length, (gcl + 1) * cs) - gcl * cs
                rng = sub_mask(lo // sc, ceil_div(hi, sc))
                if self._data_bits(gcl) & rng:
                    return True
                below = below or bool(rng & ~(self._bitmap(gcl) >> 32))
                continue
            kind = entry_kind(self._entry(gcl), self.has_data_file)
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
        if self.extended_l2:
            yield from self._zero_runs_subclusters()
        else:
            yield from self._zero_runs_clusters()

    def __repr__(self):
        return "<Qcow2Image %s, %d bytes>" % (self.path, self.size)
