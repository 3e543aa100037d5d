# SPDX-License-Identifier: LGPL-2.1-or-later
"""The LUKS anti-forensic information splitter.

``af_split`` spreads a key over *stripes* blocks so that losing any one block
loses the key; ``af_merge`` recombines them.  The diffusion step hashes the
block in digest-sized pieces, each prefixed with its big-endian 32-bit index,
as the LUKS1 on-disk format defines.  Both run in C on wiped buffers, so key
material never becomes an immutable Python object.  The C side is given
every buffer's length and refuses (-1, an Error here) rather than overrun.
"""

from .._native import crypto
from ..errors import Error
from .keybuf import SecretBuffer, as_secret
from .openssl import fetch_digest, openssl_error

MAX_STRIPES = 1 << 20       # far above LUKS's 4000; bounds memory on bad input


def _check(blocksize, stripes):
    if not isinstance(blocksize, int) or not 1 <= blocksize <= 4096:
        raise Error("AF block size %r is out of range" % (blocksize,))
    if not isinstance(stripes, int) or not 1 <= stripes <= MAX_STRIPES:
        raise Error("AF stripe count %r is out of range" % (stripes,))


def _failure(what, rc, key_bytes, stripes):
    """The error for a C return code other than 1: -1 is the C side
    refusing the buffer lengths, 0 an OpenSSL failure."""
    if rc == -1:
        return Error("%s: buffers do not fit %d stripes of %d bytes" % (what, stripes, key_bytes))
    return openssl_error(what)


def af_split(key, stripes, hash_name):
    """Split *key* into ``len(key) * stripes`` bytes (a SecretBuffer)."""
    ffi, lib = crypto()
    md = fetch_digest(hash_name)
    secret, owned = as_secret(key)
    try:
        _check(len(secret), stripes)
        out = SecretBuffer(len(secret) * stripes)
        rc = lib.pyq_af_split(md, secret.cdata, len(secret), stripes, out.cdata, len(out))
        if rc != 1:
            out.wipe()
            raise _failure("AF split", rc, len(secret), stripes)
        return out
    finally:
        if owned:
            secret.wipe()


def af_merge(material, key_bytes, stripes, hash_name):
    """Recombine split *material* into a *key_bytes* SecretBuffer."""
    ffi, lib = crypto()
    md = fetch_digest(hash_name)
    _check(key_bytes, stripes)
    secret, owned = as_secret(material)
    try:
        if len(secret) < key_bytes * stripes:
            raise Error("key material is %d bytes, %d stripes of %d bytes need %d"
                        % (len(secret), stripes, key_bytes, key_bytes * stripes))
        out = SecretBuffer(key_bytes)
        rc = lib.pyq_af_merge(md, secret.cdata, len(secret), stripes, out.cdata, len(out))
        if rc != 1:
            out.wipe()
            raise _failure("AF merge", rc, key_bytes, stripes)
        return out
    finally:
        if owned:
            secret.wipe()
