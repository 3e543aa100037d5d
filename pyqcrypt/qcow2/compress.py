# SPDX-License-Identifier: LGPL-2.1-or-later
"""Compressed qcow2 clusters: the L2 entry layout and the two decoders.

A compressed L2 entry holds the host byte offset of the compressed data
and, above it, the number of 512-byte sectors it spans (minus one), so the
stored size is an upper bound: the data may be followed by garbage up to
the sector boundary.  The header's ``compression_type`` names the codec:

* 0, zlib: a raw deflate stream (window bits 12), inflated until the cluster
  is full;
* 1, zstd: zstd frames, decoded one after another until the cluster is full
  (QEMU's ``qcow2_zstd_decompress``), through libzstd (``_zstd_native``).

Either way the result must be exactly one cluster, or the cluster is a
``FormatError`` naming the guest cluster.  Sizes are bounded before
anything is read: the input is at most two clusters (the most an entry can
express), the output one cluster.
"""

import threading
import zlib

from .. import _native
from ..errors import FormatError
from ..units import SECTOR
from .header import COMPRESSION_TYPES as NAMES

ZLIB, ZSTD = 0, 1


def compression_name(ctype):
    """qemu-img's name for a compression type (``zlib``, ``zstd``)."""
    return NAMES.get(ctype, "unknown (%d)" % ctype)


class ClusterDecoder:
    """Decodes the compressed clusters of one image (either codec).  The
    zstd context is made once and reused; a lock makes the decoder safe to
    share between threads (libzstd runs without the GIL)."""

    def __init__(self, ctype, cluster_size, path=None):
        if ctype not in NAMES:
            raise FormatError("unknown compression type %d" % ctype, field="compression_type",
                              offset=104, path=path)
        self.ctype = ctype
        self.cs = cluster_size
        self.path = path
        self._local = threading.local()     # one zstd context per thread
        if ctype == ZSTD:
            self._ffi, self._lib = _native.zstd()
            self._context()                 # fail at open, not mid-read

    def _context(self):
        """This thread's (zstd context, error-message slot)."""
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ffi, lib = self._ffi, self._lib
            dctx = lib.ZSTD_createDCtx()
            if dctx == ffi.NULL:
                raise MemoryError("ZSTD_createDCtx failed")
            ctx = self._local.ctx = (ffi.gc(dctx, lib.ZSTD_freeDCtx), ffi.new("const char **"))
        return ctx

    def _bad(self, gcl, what):
        return FormatError("compressed cluster for guest cluster %d %s" % (gcl, what),
                           field="L2 entry", path=self.path)

    def decode_into(self, raw, out, gcl):
        """Decode the compressed bytes *raw* into the writable *out* (one
        cluster long); *gcl* names the guest cluster in errors."""
        out = memoryview(out).cast("B")
        if len(out) != self.cs:
            raise ValueError("output must be one cluster")
        if len(raw) > 2 * self.cs + SECTOR:
            raise self._bad(gcl, "is larger than two clusters")
        if self.ctype == ZLIB:
            try:
                # QEMU inflates a cluster into one buffer, so a back reference
                # may reach anywhere deflate allows (32 KiB), not just the
                # 4 KiB window QEMU writes with: decode with the full window.
                data = zlib.decompressobj(-15).decompress(raw, self.cs)
            except zlib.error as exc:
                raise self._bad(gcl, "is corrupt (%s)" % exc) from None
            if len(data) != self.cs:
                raise self._bad(gcl, "inflates to %d bytes, not %d" % (len(data), self.cs))
            out[:] = data
            return
        ffi, lib = self._ffi, self._lib
        dctx, why_slot = self._context()
        n = lib.pyq_zstd_cluster(dctx, ffi.from_buffer(out, require_writable=True),
                                 self.cs, ffi.from_buffer(raw), len(raw), why_slot)
        why = ffi.string(why_slot[0]).decode("ascii", "replace") if n < 0 else None
        if n != self.cs:
            raise self._bad(gcl, "is corrupt zstd data (%s)" % (why or "%d bytes decoded" % n))

    def job(self, raw, out, gcl):
        """The decoding of one cluster as a conversion-pipeline job, run on
        the pipeline's worker threads (zlib and libzstd release the GIL).
        *raw* is the compressed bytes, or (storage, offset, length) to read
        them from when the job runs."""
        return DecodeJob(self, raw, out, gcl)

    def decode(self, raw, gcl):
        """The decoded cluster as bytes."""
        out = bytearray(self.cs)
        self.decode_into(raw, out, gcl)
        return bytes(out)


class DecodeJob:
    """One compressed cluster to decode into its place in a pipeline buffer."""

    __slots__ = ("decoder", "raw", "out", "gcl")

    def __init__(self, decoder, raw, out, gcl):
        self.decoder, self.raw, self.out, self.gcl = decoder, raw, out, gcl

    def run(self):
        raw = self.raw
        if isinstance(raw, tuple):
            st, off, length = raw
            raw = st.pread(off, length, "compressed cluster")
        self.decoder.decode_into(raw, self.out, self.gcl)
