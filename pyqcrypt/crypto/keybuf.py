# SPDX-License-Identifier: LGPL-2.1-or-later
"""Key buffers: secrets held outside Python's heap and wiped on release.

A ``SecretBuffer`` is a page-aligned, page-locked (where RLIMIT_MEMLOCK
allows), core-dump-excluded block of C memory.  It is wiped with
OPENSSL_cleanse when ``wipe()`` is called, when its ``with`` block ends, or
when it is garbage collected.  Its repr shows only the length; it cannot be
pickled and does not export the buffer protocol, so a stray ``bytes(buf)``
fails instead of copying a secret into memory nobody wipes.

Key schedules also live in OpenSSL's cipher contexts, outside these
buffers; so the first key buffer makes the whole process undumpable
(``protect_process``: no core file, no ptrace or /proc/PID/mem access by
other users).  ``PYQCRYPT_ALLOW_CORE_DUMPS=1`` turns that off, for
debugging only.
"""

import os

from .._native import crypto
from ..errors import Error
from .openssl import openssl_error


_PR_SET_DUMPABLE = 4
_protected = False


def protect_process():
    """Make this process undumpable from now on (prctl PR_SET_DUMPABLE 0),
    so keys that live in memory pyqcrypt does not own (OpenSSL's cipher
    contexts, Python's copies of a passphrase) never reach a core file.  It
    stays so: a freed key schedule may linger in memory.  Idempotent and
    cheap; a no-op where prctl does not exist."""
    global _protected
    if _protected:
        return
    _protected = True
    if os.environ.get("PYQCRYPT_ALLOW_CORE_DUMPS") == "1":
        return
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class SecretBuffer:
    """A fixed-size buffer of secret bytes, zeroed at creation."""

    __slots__ = ("_ptr", "_size", "__weakref__")

    def __init__(self, size):
        if not isinstance(size, int) or size < 0 or size > (1 << 30):
            raise Error("secret buffer size out of range")
        protect_process()
        ffi, lib = crypto()
        raw = lib.pyq_secure_alloc(size)
        if raw == ffi.NULL:
            raise MemoryError("cannot allocate a %d-byte key buffer" % size)
        self._size = size
        self._ptr = ffi.gc(raw, lambda p, n=size: lib.pyq_secure_free(p, n))

    # -- construction ----------------------------------------------------
    @classmethod
    def from_bytes(cls, data):
        """Copy bytes-like *data* in (the caller's copy is theirs to wipe)."""
        mv = memoryview(data).cast("B")
        buf = cls(len(mv))
        if len(mv):
            crypto()[0].memmove(buf.cdata, mv, len(mv))
        return buf

    @classmethod
    def random(cls, size):
        """A buffer filled from OpenSSL's DRBG, e.g. a new master key."""
        ffi, lib = crypto()
        buf = cls(size)
        if size and lib.RAND_bytes_ex(lib.pyq_libctx(), buf.cdata, size, 0) != 1:
            buf.wipe()
            raise openssl_error("RAND_bytes")
        return buf

    # -- access ------------------------------------------------------------
    def __len__(self):
        return self._size

    @property
    def wiped(self):
        return self._ptr is None

    @property
    def cdata(self):
        """The C pointer (``unsigned char *``); valid until wipe()."""
        if self._ptr is None:
            raise Error("secret buffer used after it was wiped")
        return self._ptr

    def writable_view(self):
        """A borrowed writable view (for readinto); do not keep it past wipe()."""
        return crypto()[0].buffer(self.cdata, self._size)

    def byte(self, index):
        """One byte as an int (e.g. a padding length)."""
        if not 0 <= index < self._size:
            raise Error("secret buffer index out of range")
        return self.cdata[index]

    def slice(self, start, stop):
        """A new SecretBuffer holding bytes [start, stop)."""
        if not 0 <= start <= stop <= self._size:
            raise Error("secret buffer slice out of range")
        out = SecretBuffer(stop - start)
        if stop > start:
            crypto()[0].memmove(out.cdata, self.cdata + start, stop - start)
        return out

    def reveal(self):
        """Copy the secret out as bytes: only for output the user asked for
        (``dump --dump-volume-key``) and for tests."""
        return bytes(crypto()[0].buffer(self.cdata, self._size))

    def equals(self, other):
        """Constant-time comparison with another SecretBuffer or bytes."""
        ffi, lib = crypto()
        if isinstance(other, SecretBuffer):
            other_ptr, other_len = other.cdata, len(other)
        else:
            other = bytes(other)
            other_ptr, other_len = other, len(other)
        if other_len != self._size:
            return False
        return self._size == 0 or lib.CRYPTO_memcmp(self.cdata, other_ptr, self._size) == 0

    # -- release -------------------------------------------------------------
    def wipe(self):
        """Overwrite and free the memory now; idempotent."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            crypto()[0].release(ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.wipe()

    def __repr__(self):
        state = "wiped" if self._ptr is None else "%d bytes" % self._size
        return "<SecretBuffer %s>" % state

    def __reduce__(self):
        raise TypeError("SecretBuffer cannot be pickled")

    def __eq__(self, other):  # never compare secrets by accident
        return NotImplemented

    __hash__ = None     # type: ignore[assignment]  # unhashable, as __eq__ is disabled


def as_secret(value):
    """Accept a SecretBuffer, bytes, bytearray or memoryview as a secret.

    Returns (buffer, owned): *owned* is True when a new buffer was made, in
    which case the caller wipes it when done.  ``str`` is refused: secrets
    are bytes (cryptsetup key files are often binary)."""
    if isinstance(value, SecretBuffer):
        return value, False
    if isinstance(value, str):
        raise TypeError("passphrases and keys are bytes, not str; encode them "
                        "(QEMU uses UTF-8)")
    return SecretBuffer.from_bytes(value), True


def qemu_can_use(secret):
    """True when QEMU would take *secret* (a SecretBuffer, bytes, bytearray
    or memoryview) as a LUKS passphrase: valid UTF-8 with no NUL byte
    (GLib's check, which QEMU applies to every secret it decrypts with).
    Checked byte by byte in place: no copy of the secret is made."""
    view = memoryview(secret.writable_view() if isinstance(secret, SecretBuffer) else secret)
    view = view.cast("B")
    i, n = 0, len(view)
    while i < n:
        b = view[i]
        if b < 0x80:
            if b == 0:
                return False
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= b <= 0xEF:
            need = 2
            lo, hi = (0xA0, 0xBF) if b == 0xE0 else (0x80, 0x9F) if b == 0xED else (0x80, 0xBF)
        elif 0xF0 <= b <= 0xF4:
            need = 3
            lo, hi = (0x90, 0xBF) if b == 0xF0 else (0x80, 0x8F) if b == 0xF4 else (0x80, 0xBF)
        else:
            return False
        if i + need >= n:                   # the sequence runs past the end
            return False
        if not lo <= view[i + 1] <= hi:
            return False
        for k in range(2, need + 1):
            if not 0x80 <= view[i + k] <= 0xBF:
                return False
        i += need + 1
    return True
