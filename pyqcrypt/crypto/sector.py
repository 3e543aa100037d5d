# SPDX-License-Identifier: LGPL-2.1-or-later
"""Sector ciphers: encrypt or decrypt runs of disk sectors in place.

A ``SectorCipher`` holds a master key (in a wiped buffer) and a CipherSpec.
Each call hands a whole run of sectors to one C routine, which keeps a cipher
context keyed once and sets only the IV between sectors.  cffi releases the
GIL for the call, and every thread gets its own pair of contexts, so threads
encrypt in parallel.

Two backends run the loop: OpenSSL (``sector_cipher.c``) for everything it
has, libgcrypt (``gcrypt_sector.c``, the optional ``_gcrypt_native``
module) for serpent, twofish, LRW and the rest ``CipherSpec.backend`` sends
there.  A libgcrypt context must never be used by two threads at once; like
the OpenSSL ones, each thread keys its own (threading.local), so the
conversion pipeline's worker threads never share one.

The IV sector number is whatever the caller passes: the payload-relative
sector for raw LUKS, the host sector for qcow2 LUKS, the guest sector for
legacy qcow2 AES.  The layers above decide; this one only counts.  A run's
unit k takes the number first_sector + k * iv_step: iv_step is 1 except for
LUKS2 segments of S-byte sectors, whose IVs count 512-byte sectors (S / 512).
"""

import threading

from .._native import crypto, gcrypt
from ..errors import Error
from ..units import SECTOR
from .cipherspec import GCRYPT, CipherSpec
from .keybuf import SecretBuffer, as_secret
from .openssl import fetch_cipher, fetch_digest, openssl_error

SECTOR_SIZE = SECTOR            # the unit of the IV numbering


class SectorCipher:
    """Encrypts/decrypts sector runs for one key and cipher spec."""

    def __init__(self, spec, key, sector_size=SECTOR_SIZE, iv_step=1):
        if isinstance(spec, str):
            spec = CipherSpec.parse(spec, key_bits=len(key) * 8)
        if not isinstance(spec, CipherSpec):
            raise TypeError("spec must be a CipherSpec or a cryptsetup string")
        if len(key) != spec.key_bytes:
            raise Error("%s needs a %d-byte key, got %d bytes"
                        % (spec.cryptsetup_spec, spec.key_bytes, len(key)))
        if not isinstance(sector_size, int) or sector_size < 16 or sector_size > (1 << 20):
            raise Error("sector size %r is out of range" % (sector_size,))
        if isinstance(iv_step, bool) or not isinstance(iv_step, int) or not 1 <= iv_step < (1 << 64):
            raise Error("IV step %r is out of range (a positive number of sectors)" % (iv_step,))
        spec.check()
        self.spec = spec
        self.sector_size = sector_size
        self.iv_step = iv_step
        self.backend = spec.backend
        key_buf, owned = as_secret(key)
        self._key = key_buf if owned else SecretBuffer.from_bytes(key_buf.writable_view())
        self._local = threading.local()
        if self.backend == GCRYPT:
            # Fail now if libgcrypt refuses the key, or the unit size (an
            # empty run checks the arguments and does nothing else).
            gffi, glib = gcrypt()
            rc = glib.pyq_gc_crypt_units(self._gc_context(), 1, gffi.NULL, 0, sector_size, 0,
                                         iv_step)
            if rc != 0:
                self.close()
                raise Error("%s (libgcrypt) cannot work on %d-byte sectors: %s" % (
                    spec.cryptsetup_spec, sector_size,
                    gffi.string(glib.pyq_gc_strerror(rc)).decode()))
            return
        self._evp = spec.evp_cipher()
        self._essiv_key = None
        self._essiv_evp = None
        if spec.ivgen == "essiv":
            self._essiv_key = self._essiv_salt(spec)
            self._essiv_evp = fetch_cipher(spec.essiv_openssl_name())
        # Fail now, not at first use, if OpenSSL refuses the key, or the
        # sector size (an empty run checks the arguments, e.g. that the
        # sector is whole cipher blocks, and does nothing else).
        ffi, lib = crypto()
        if lib.pyq_sector_crypt(self._context(True), ffi.NULL, 0, sector_size, 0, iv_step) != 1:
            self.close()
            raise Error("%s cannot work on %d-byte sectors (not whole cipher blocks)"
                        % (spec.cryptsetup_spec, sector_size))
        self._context(False)

    def _essiv_salt(self, spec):
        """hash(key), truncated where the hash name asks (wp256)."""
        ffi, lib = crypto()
        hash_name, used = spec.essiv_hash()
        md = fetch_digest(hash_name)
        with SecretBuffer(lib.EVP_MD_get_size(md)) as full:
            if lib.pyq_digest(md, self._key.cdata, len(self._key), full.cdata, len(full)) != 1:
                raise openssl_error("essiv key hash")
            return full.slice(0, used)

    def _gc_context(self):
        """This thread's libgcrypt context (one serves both directions)."""
        ctx = getattr(self._local, "gc", None)
        if ctx is None:
            if self._key is None:
                raise Error("sector cipher used after close()")
            ffi, lib = gcrypt()
            out = ffi.new("pyq_gc_ctx **")
            spec = self.spec
            hash_name = spec.ivgen_hash.encode() if spec.ivgen == "essiv" else ffi.NULL
            rc = lib.pyq_gc_ctx_new(out, spec.cipher.encode(), spec.mode.encode(),
                                    self._key.cdata, len(self._key), spec.gcrypt_iv_mode,
                                    hash_name)
            if rc != 0:
                raise Error("setting up %s in libgcrypt: %s" % (
                    spec.cryptsetup_spec, ffi.string(lib.pyq_gc_strerror(rc)).decode()))
            ctx = ffi.gc(out[0], lib.pyq_gc_ctx_free)
            self._local.gc = ctx
        return ctx

    def _context(self, encrypt):
        name = "enc" if encrypt else "dec"
        ctx = getattr(self._local, name, None)
        if ctx is None:
            if self._key is None:
                raise Error("sector cipher used after close()")
            ffi, lib = crypto()
            essiv_key = self._essiv_key.cdata if self._essiv_key else ffi.NULL
            raw = lib.pyq_sector_new(
                self._evp, self._key.cdata, len(self._key), self.spec.iv_mode,
                self._essiv_evp or ffi.NULL, essiv_key,
                len(self._essiv_key) if self._essiv_key else 0, 1 if encrypt else 0)
            if raw == ffi.NULL:
                raise openssl_error("setting up %s" % self.spec.cryptsetup_spec)
            ctx = ffi.gc(raw, lib.pyq_sector_free)
            setattr(self._local, name, ctx)
        return ctx

    def _run(self, buf, first_sector, encrypt):
        ffi, lib = crypto()
        mv = memoryview(buf)
        if mv.readonly:
            raise TypeError("sector buffers are processed in place and must be writable")
        n = mv.nbytes
        if n % self.sector_size:
            raise Error("buffer of %d bytes is not a whole number of %d-byte "
                        "sectors" % (n, self.sector_size))
        last = first_sector + max(n // self.sector_size - 1, 0) * self.iv_step
        if not 0 <= first_sector < (1 << 64) or last >= (1 << 64):
            raise Error("sector number %r is out of range" % (first_sector,))
        if n == 0:
            return buf
        if self.backend == GCRYPT:
            gffi, glib = gcrypt()
            rc = glib.pyq_gc_crypt_units(self._gc_context(), 1 if encrypt else 0,
                                         gffi.from_buffer(mv, require_writable=True), n,
                                         self.sector_size, first_sector, self.iv_step)
            if rc != 0:
                raise Error("libgcrypt %s of %d sectors failed: %s" % (
                    "encryption" if encrypt else "decryption", n // self.sector_size,
                    gffi.string(glib.pyq_gc_strerror(rc)).decode()))
            return buf
        rc = lib.pyq_sector_crypt(self._context(encrypt), ffi.from_buffer(mv, require_writable=True),
                                  n, self.sector_size, first_sector, self.iv_step)
        if rc != 1:
            raise openssl_error("%s of %d sectors" % (
                "encryption" if encrypt else "decryption", n // self.sector_size))
        return buf

    def crypt_unit(self, buf, iv, encrypt):
        """Process ONE data unit of *buf* (writable, whole cipher blocks) in
        place with an explicit IV instead of a sector number: for published
        known-answer vectors whose IVs no IV generator makes.  libgcrypt
        backend only; for LRW the IV is the 128-bit big-endian index of the
        first block, as in the kernel's lrw()."""
        if self.backend != GCRYPT:
            raise Error("crypt_unit is only available on the libgcrypt backend")
        ffi, lib = gcrypt()
        mv = memoryview(buf)
        if mv.readonly:
            raise TypeError("buffers are processed in place and must be writable")
        iv = bytes(iv)
        rc = lib.pyq_gc_crypt_iv(self._gc_context(), 1 if encrypt else 0,
                                 ffi.from_buffer(mv, require_writable=True), mv.nbytes,
                                 iv, len(iv))
        if rc != 0:
            raise Error("libgcrypt %s of one unit failed: %s" % (
                "encryption" if encrypt else "decryption",
                ffi.string(lib.pyq_gc_strerror(rc)).decode()))
        return buf

    @property
    def builtin_twofish(self):
        """True when GNU Nettle's Twofish (192-bit keys, which libgcrypt
        lacks) serves this cipher instead of libgcrypt.  The name is from
        the hand-written Twofish that did this before."""
        if self.backend != GCRYPT:
            return False
        return bool(gcrypt()[1].pyq_gc_ctx_builtin(self._gc_context()))

    def encrypt(self, buf, first_sector):
        """Encrypt *buf* (writable, whole sectors) in place; returns it."""
        return self._run(buf, first_sector, True)

    def decrypt(self, buf, first_sector):
        """Decrypt *buf* (writable, whole sectors) in place; returns it."""
        return self._run(buf, first_sector, False)

    def close(self):
        """Wipe the key and drop this thread's contexts."""
        for attr in ("_key", "_essiv_key"):
            buf = getattr(self, attr, None)
            if buf is not None:
                buf.wipe()
                setattr(self, attr, None)
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<SectorCipher %s, %d-byte sectors, IV step %d, %s>" % (
            self.spec, self.sector_size, self.iv_step, self.backend)
