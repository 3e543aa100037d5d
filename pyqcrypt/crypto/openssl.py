# SPDX-License-Identifier: LGPL-2.1-or-later
"""Thin helpers over libcrypto: the error queue, algorithm look-up, randomness.

Algorithms are fetched by OpenSSL name from pyqcrypt's private library
context (default + legacy providers) and cached for the life of the process.
"""

import threading
from typing import Any, Dict

from .._native import crypto
from ..errors import CryptoError, UnsupportedCipher

_LOCK = threading.Lock()
_CIPHERS: Dict[str, Any] = {}         # name -> EVP_CIPHER pointer, or None
_DIGESTS: Dict[str, Any] = {}


def openssl_error(what):
    """Drain this thread's OpenSSL error queue into a CryptoError for *what*."""
    ffi, lib = crypto()
    reasons = []
    buf = ffi.new("char[256]")
    while True:
        code = lib.ERR_get_error()
        if code == 0:
            break
        lib.ERR_error_string_n(code, buf, len(buf))
        reasons.append(ffi.string(buf).decode("ascii", "replace"))
    if reasons:
        return CryptoError("%s: %s" % (what, "; ".join(reasons)))
    return CryptoError("%s failed in OpenSSL" % what)


def openssl_version():
    """OpenSSL's version as a string such as ``OpenSSL 3.0.11``."""
    ffi, lib = crypto()
    words = ffi.string(lib.OpenSSL_version(0)).decode().split()
    return " ".join(words[:2])


def _fetch(cache, key, fetcher):
    """Fetch an algorithm once per process; None if OpenSSL lacks it."""
    with _LOCK:
        if key not in cache:
            ffi, lib = crypto()
            ptr = fetcher(lib.pyq_libctx(), key.encode(), ffi.NULL)
            lib.ERR_clear_error()
            cache[key] = None if ptr == ffi.NULL else ptr
        return cache[key]


def fetch_cipher(name):
    """The EVP_CIPHER for an OpenSSL cipher name, or None if unavailable."""
    return _fetch(_CIPHERS, name.upper(), crypto()[1].EVP_CIPHER_fetch)


def fetch_digest(name):
    """The EVP_MD for a hash name; UnsupportedCipher if OpenSSL lacks it."""
    ptr = _fetch(_DIGESTS, name.lower(), crypto()[1].EVP_MD_fetch)
    if ptr is None:
        raise UnsupportedCipher("hash %r is not available in %s" % (name, openssl_version()))
    return ptr


def digest_size(name):
    return crypto()[1].EVP_MD_get_size(fetch_digest(name))


def random_bytes(n):
    """n bytes from OpenSSL's DRBG (for salts, UUIDs: not for keys)."""
    ffi, lib = crypto()
    buf = ffi.new("unsigned char[]", max(n, 1))
    if lib.RAND_bytes_ex(lib.pyq_libctx(), buf, n, 0) != 1:
        raise openssl_error("RAND_bytes")
    return bytes(ffi.buffer(buf, n))
