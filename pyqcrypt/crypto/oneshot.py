# SPDX-License-Identifier: LGPL-2.1-or-later
"""One-shot encryption of a short buffer with an explicit IV.

For secrets, not disks: QEMU's encrypted secret objects are AES-256-CBC
with an IV given on the command line.  Output lands in a SecretBuffer.
"""

from .._native import crypto
from ..errors import Error
from .keybuf import SecretBuffer, as_secret
from .openssl import fetch_cipher, openssl_error

MAX_ONESHOT = 1 << 24


def cipher_oneshot(openssl_name, key, iv, data, encrypt, padding=False):
    """Run cipher *openssl_name* over *data*; returns a SecretBuffer."""
    ffi, lib = crypto()
    evp = fetch_cipher(openssl_name)
    if evp is None:
        raise Error("cipher %s is not available" % openssl_name)
    if len(data) > MAX_ONESHOT:
        raise Error("data too long for a one-shot cipher")
    if lib.EVP_CIPHER_get_key_length(evp) != len(key):
        raise Error("%s needs a %d-byte key, got %d bytes"
                    % (openssl_name, lib.EVP_CIPHER_get_key_length(evp), len(key)))
    if lib.EVP_CIPHER_get_iv_length(evp) != len(iv):
        raise Error("%s needs a %d-byte IV, got %d bytes"
                    % (openssl_name, lib.EVP_CIPHER_get_iv_length(evp), len(iv)))
    key_buf, owned = as_secret(key)
    src, src_owned = as_secret(data)
    ctx = ffi.gc(lib.EVP_CIPHER_CTX_new(), lib.EVP_CIPHER_CTX_free)
    out = SecretBuffer(len(src) + 32)
    try:
        outl = ffi.new("int *")
        if lib.EVP_CipherInit_ex(ctx, evp, ffi.NULL, key_buf.cdata, bytes(iv), 1 if encrypt else 0) != 1:
            raise openssl_error("cipher set-up")
        lib.EVP_CIPHER_CTX_set_padding(ctx, 1 if padding else 0)
        if lib.EVP_CipherUpdate(ctx, out.cdata, outl, src.cdata if len(src) else ffi.NULL, len(src)) != 1:
            raise openssl_error("cipher")
        n = outl[0]
        if lib.EVP_CipherFinal_ex(ctx, out.cdata + n, outl) != 1:
            raise openssl_error("cipher final block")
        n += outl[0]
        return out.slice(0, n)
    finally:
        out.wipe()
        ffi.release(ctx)
        if owned:
            key_buf.wipe()
        if src_owned:
            src.wipe()
