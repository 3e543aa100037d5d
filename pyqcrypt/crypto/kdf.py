# SPDX-License-Identifier: LGPL-2.1-or-later
"""PBKDF2-HMAC (PKCS #5 v2.0) and its iteration benchmark.

``pbkdf2()`` derives into a SecretBuffer through OpenSSL's PBKDF2 KDF (the
GIL is released while it runs).  ``iterations_per_second()`` measures the
host the way cryptsetup does, by running ever longer derivations until one
lasts long enough to time, and ``iterations_for()`` turns a requested time
in milliseconds into an iteration count that never falls below a floor.
"""

import os
import threading
import time

from .._native import crypto
from .. import notices
from ..errors import Error
from .cipherspec import check_hash
from .keybuf import SecretBuffer, as_secret
from .openssl import openssl_error

MAX_ITERATIONS = 0xFFFFFFFF      # LUKS1 stores iteration counts as u32
LUKS_MIN_ITERATIONS = 1000       # cryptsetup's floor for LUKS1 keyslots and digests


# Which library derives: libgcrypt's PBKDF2 where the optional module is
# built (it runs about 1.6x OpenSSL 3's here, so unlocking costs less), else
# OpenSSL's.  Both give the same bytes (RFC 6070 vectors, tests).  The
# environment variable PYQCRYPT_PBKDF2=openssl forces OpenSSL.
def _gcrypt_lib():
    if os.environ.get("PYQCRYPT_PBKDF2", "") == "openssl":
        return None
    from .._native import available, gcrypt
    return gcrypt()[1] if available("gcrypt") else None


def _derive_into(hash_name, pass_ptr, passlen, salt, iterations, out_ptr, length, backend=None):
    """Run one derivation into *out_ptr* with *backend* ("openssl", or None:
    libgcrypt where it takes the hash, else OpenSSL); True on success."""
    if backend != "openssl":
        glib = _gcrypt_lib()
        if glib is not None and glib.pyq_gc_pbkdf2(hash_name.encode(), pass_ptr, passlen, salt,
                                                   len(salt), iterations, out_ptr, length) == 0:
            return True
    ffi, lib = crypto()
    return lib.pyq_pbkdf2(hash_name.encode(), pass_ptr, passlen, salt, len(salt), iterations,
                          out_ptr, length) == 1


# Derivations this long run in a helper thread while the main thread waits
# in short slices, so SIGINT and SIGTERM act at once instead of after the
# whole derivation (OpenSSL's call cannot be interrupted).
THREADED_ITERATIONS = 50000
SLOW_NOTICE_SECONDS = 3.0
# After this long a derivation with a *notice* calls pyqcrypt.notices.slow_pbkdf2
# (the CLI prints it on stderr: which keyslot is being tried).


def pbkdf2(hash_name, passphrase, salt, iterations, length, notice=None):
    """PBKDF2-HMAC-*hash_name*; returns a SecretBuffer of *length* bytes.
    *notice* describes the derivation ("keyslot 3") for
    ``pyqcrypt.notices.slow_pbkdf2``."""
    hash_name = check_hash(hash_name)
    if not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
        raise Error("PBKDF2 iteration count %r is out of range" % (iterations,))
    if not isinstance(length, int) or not 1 <= length <= (1 << 20):
        raise Error("PBKDF2 output length %r is out of range" % (length,))
    if iterations >= THREADED_ITERATIONS and threading.current_thread() is threading.main_thread():
        return _pbkdf2_interruptible(hash_name, passphrase, bytes(salt), iterations, length,
                                     notice)
    secret, owned = as_secret(passphrase)
    salt = bytes(salt)
    out = SecretBuffer(length)
    try:
        if not _derive_into(hash_name, secret.cdata, len(secret), salt, iterations, out.cdata,
                            length):
            out.wipe()
            raise openssl_error("PBKDF2-%s" % hash_name)
        return out
    finally:
        if owned:
            secret.wipe()


def _pbkdf2_interruptible(hash_name, passphrase, salt, iterations, length, notice):
    """pbkdf2() in a daemon thread that owns its own copy of the passphrase
    and its output: the main thread waits in 0.1 s slices, so a signal
    handler (or KeyboardInterrupt) runs at once; an abandoned derivation
    wipes both buffers itself when the library returns."""
    given, owned = as_secret(passphrase)
    secret = SecretBuffer.from_bytes(given.writable_view())
    if owned:
        given.wipe()
    out = SecretBuffer(length)
    state = {"ok": None, "abandoned": False}
    guard = threading.Lock()

    def derive():
        ok = 1 if _derive_into(hash_name, secret.cdata, len(secret), salt, iterations,
                               out.cdata, length) else 0
        with guard:
            state["ok"] = ok
            secret.wipe()
            if state["abandoned"]:
                out.wipe()

    worker = threading.Thread(target=derive, name="pyqcrypt-pbkdf2", daemon=True)
    started = time.monotonic()
    worker.start()
    told = False
    try:
        while worker.is_alive():
            worker.join(0.1)
            say = notices.slow_pbkdf2
            if (not told and notice and say is not None
                    and time.monotonic() - started >= SLOW_NOTICE_SECONDS):
                told = True
                say("trying %s: %d PBKDF2-%s iterations take a while here"
                            % (notice, iterations, hash_name))
    except BaseException:
        with guard:
            state["abandoned"] = True
            if state["ok"] is not None:
                out.wipe()
        raise
    if state["ok"] != 1:
        out.wipe()
        raise openssl_error("PBKDF2-%s" % hash_name)
    return out


def _timed_run(hash_name, iterations, key_bytes, backend=None):
    """CPU seconds this thread spends on one derivation (in this thread,
    never the interruptible helper: its time would not be counted)."""
    out = SecretBuffer(key_bytes)
    pw, salt = b"pyqcrypt-benchmark", b"\0" * 32
    try:
        start = time.thread_time()
        ok = _derive_into(hash_name, pw, len(pw), salt, iterations, out.cdata, key_bytes, backend)
        took = time.thread_time() - start
    finally:
        out.wipe()
    if not ok:
        raise openssl_error("PBKDF2-%s" % hash_name)
    return took


def iterations_per_second(hash_name, key_bytes=32, target_ms=250, backend=None):
    """Measured PBKDF2-*hash_name* iterations per second on this host, for
    an output of *key_bytes*.

    Starts small and grows until one run takes at least *target_ms*
    (cryptsetup's method), so slow hashes and fast hosts both get a sound
    figure.  Time is the calling thread's CPU time, as QEMU and cryptsetup
    measure it, so a busy machine does not make the count smaller.
    *backend* "openssl" times OpenSSL's PBKDF2 (cryptsetup's library here);
    None times the one pyqcrypt derives with.  The passphrase and salt are
    fixed dummies."""
    hash_name = check_hash(hash_name)
    iterations = 1000
    while True:
        elapsed = _timed_run(hash_name, iterations, key_bytes, backend)
        if elapsed * 1000 >= target_ms or iterations >= MAX_ITERATIONS // 2:
            return max(1, int(iterations / max(elapsed, 1e-9)))
        # Aim straight for the target once the timing is meaningful (a
        # millisecond is thousands of timer ticks; the 10% margin and the
        # final timed run absorb the error).
        if elapsed > 0.001:
            iterations = min(MAX_ITERATIONS // 2,
                             int(iterations * target_ms / (elapsed * 1000) * 1.1) + 1)
        else:
            iterations *= 4


def benchmark_for(hash_name, iter_time_ms, key_bytes=32, backend=None):
    """Iterations per second, measured for about min(250, iter_time) ms."""
    return iterations_per_second(hash_name, key_bytes, target_ms=min(250, max(20, iter_time_ms)),
                                 backend=backend)


def iterations_for(hash_name, iter_time_ms, key_bytes=32, minimum=LUKS_MIN_ITERATIONS, ips=None):
    """Iterations that take about *iter_time_ms* here, never below *minimum*.
    *ips*: a rate already measured (see ``benchmark_for``), to reuse."""
    if not isinstance(iter_time_ms, int) or iter_time_ms <= 0:
        raise Error("iteration time must be a positive number of milliseconds")
    if ips is None:
        ips = benchmark_for(hash_name, iter_time_ms, key_bytes)
    count = ips * iter_time_ms // 1000
    return int(min(MAX_ITERATIONS, max(minimum, count)))
