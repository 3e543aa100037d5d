# SPDX-License-Identifier: LGPL-2.1-or-later
"""The C routines refuse bad buffer lengths with an error code, never by
writing past a buffer or crashing; the Python callers turn that code into a
pyqcrypt.Error.

Every C call here gets a buffer that is too short, a length that
overflows, or a NULL pointer, and the buffers it was given are checked to be
untouched afterwards."""

import errno

import pytest

import pyqcrypt
from pyqcrypt import _native
from pyqcrypt.crypto.openssl import fetch_digest

SENTINEL = 0xA5


def _buf(ffi, n):
    buf = ffi.new("unsigned char[]", n)
    ffi.memmove(buf, bytes([SENTINEL]) * n, n)
    return buf


def _untouched(ffi, buf):
    return bytes(ffi.buffer(buf)) == bytes([SENTINEL]) * len(buf)


def _size_max(ffi):
    return (1 << (8 * ffi.sizeof("size_t"))) - 1


# ---- AF splitter ------------------------------------------------------------

def test_af_split_refuses_short_output():
    ffi, lib = _native.crypto()
    md = fetch_digest("sha256")
    key = _buf(ffi, 32)
    out = _buf(ffi, 32 * 4 - 1)
    assert lib.pyq_af_split(md, key, 32, 4, out, len(out)) == -1
    assert _untouched(ffi, out)


@pytest.mark.parametrize("keylen,stripes", [(0, 4), (32, 0)])
def test_af_split_refuses_empty_sizes(keylen, stripes):
    ffi, lib = _native.crypto()
    md = fetch_digest("sha256")
    key, out = _buf(ffi, 32), _buf(ffi, 128)
    assert lib.pyq_af_split(md, key, keylen, stripes, out, len(out)) == -1
    assert _untouched(ffi, out)


def test_af_split_refuses_overflowing_product():
    """keylen * stripes wraps around to 0 in a size_t: refused, not a
    zero-length buffer believed to hold every stripe."""
    ffi, lib = _native.crypto()
    md = fetch_digest("sha256")
    key, out = _buf(ffi, 32), _buf(ffi, 64)
    stripes = (_size_max(ffi) + 1) // 32
    assert lib.pyq_af_split(md, key, 32, stripes, out, len(out)) == -1
    assert _untouched(ffi, out)


def test_af_split_refuses_null_pointers():
    ffi, lib = _native.crypto()
    md = fetch_digest("sha256")
    key, out = _buf(ffi, 32), _buf(ffi, 128)
    assert lib.pyq_af_split(ffi.NULL, key, 32, 4, out, len(out)) == -1
    assert lib.pyq_af_split(md, ffi.NULL, 32, 4, out, len(out)) == -1
    assert lib.pyq_af_split(md, key, 32, 4, ffi.NULL, len(out)) == -1
    assert _untouched(ffi, out)


def test_af_merge_refuses_short_input():
    ffi, lib = _native.crypto()
    md = fetch_digest("sha256")
    material = _buf(ffi, 32 * 4 - 1)
    key = _buf(ffi, 32)
    assert lib.pyq_af_merge(md, material, len(material), 4, key, len(key)) == -1
    assert _untouched(ffi, key)


def test_af_merge_refuses_overflowing_product():
    ffi, lib = _native.crypto()
    md = fetch_digest("sha256")
    material, key = _buf(ffi, 64), _buf(ffi, 32)
    stripes = (_size_max(ffi) + 1) // 32
    assert lib.pyq_af_merge(md, material, len(material), stripes, key, 32) == -1
    assert _untouched(ffi, key)


def test_af_round_trip_with_exact_lengths():
    """The checks pass exactly-sized buffers (and the longer material a
    LUKS keyslot area holds)."""
    ffi, lib = _native.crypto()
    md = fetch_digest("sha1")
    key = ffi.new("unsigned char[]", bytes(range(20)))
    out = ffi.new("unsigned char[]", 20 * 7 + 5)
    assert lib.pyq_af_split(md, key, 20, 7, out, 20 * 7) == 1
    back = ffi.new("unsigned char[]", 20)
    assert lib.pyq_af_merge(md, out, len(out), 7, back, 20) == 1
    assert bytes(ffi.buffer(back)) == bytes(range(20))


def test_af_failure_codes_become_errors():
    from pyqcrypt.crypto.af import _failure
    err = _failure("AF split", -1, 32, 4000)
    assert isinstance(err, pyqcrypt.Error) and "4000 stripes of 32 bytes" in str(err)
    assert isinstance(_failure("AF merge", 0, 32, 4000), pyqcrypt.CryptoError)


# ---- qcow2 L2 fill ------------------------------------------------------------

def test_l2_fill_writes_entries():
    ffi, lib = _native.qcow2()
    buf = _buf(ffi, 3 * 8)
    assert lib.pyq_fill_identity_l2(buf, len(buf), 3, 0x50000, 0x10000) == 0
    entries = [int.from_bytes(bytes(ffi.buffer(buf))[i:i + 8], "big") for i in (0, 8, 16)]
    assert entries == [(1 << 63) | (0x50000 + i * 0x10000) for i in range(3)]


def test_l2_fill_refuses_short_buffer():
    ffi, lib = _native.qcow2()
    buf = _buf(ffi, 3 * 8 - 1)
    assert lib.pyq_fill_identity_l2(buf, len(buf), 3, 0, 0x10000) == -1
    assert _untouched(ffi, buf)


def test_l2_fill_refuses_entry_count_that_overflows():
    ffi, lib = _native.qcow2()
    buf = _buf(ffi, 16)
    n = (_size_max(ffi) + 1) // 8 + 1          # n * 8 wraps around to 8
    assert lib.pyq_fill_identity_l2(buf, len(buf), n, 0, 1) == -1
    assert _untouched(ffi, buf)


@pytest.mark.parametrize("n,first,step", [
    (1, 1 << 56, 0),                       # first offset beyond qcow2's limit
    (2, (1 << 56) - 0x10000, 0x10000),     # the second one reaches it
    (2, 0x10000, 1 << 63),                 # first + step would overflow 64 bits
    (3, 0, (1 << 64) - 1),                 # (n - 1) * step would overflow
])
def test_l2_fill_refuses_offsets_past_the_limit(n, first, step):
    ffi, lib = _native.qcow2()
    buf = _buf(ffi, 64)
    assert lib.pyq_fill_identity_l2(buf, len(buf), n, first, step) == -1
    assert _untouched(ffi, buf)


def test_l2_fill_accepts_nothing_and_null():
    ffi, lib = _native.qcow2()
    assert lib.pyq_fill_identity_l2(ffi.NULL, 0, 0, 0, 0x10000) == 0
    assert lib.pyq_fill_identity_l2(ffi.NULL, 0, 1, 0, 0x10000) == -1


def test_l2_fill_failure_is_an_error():
    from pyqcrypt.qcow2.create import _fill_identity
    ffi, lib = _native.qcow2()
    with pytest.raises(pyqcrypt.Error, match="cannot map 5 clusters"):
        _fill_identity(lib, ffi.new("unsigned char[]", 32), 5, 0, 0x10000)


# ---- secure memory, digests, the sector loop ----------------------------------

@pytest.mark.parametrize("minus", [0, 1, 4095])
def test_secure_alloc_refuses_sizes_that_overflow_page_rounding(minus):
    """Rounding SIZE_MAX - minus up to whole pages would wrap around to a
    tiny buffer: the allocator must say no instead."""
    ffi, lib = _native.crypto()
    assert lib.pyq_secure_alloc(_size_max(ffi) - minus) == ffi.NULL
    lib.pyq_secure_free(ffi.NULL, _size_max(ffi) - minus)      # a no-op


def test_digest_refuses_short_output():
    ffi, lib = _native.crypto()
    md = fetch_digest("sha256")
    out = _buf(ffi, 31)
    assert lib.pyq_digest(md, b"abc", 3, out, len(out)) == -1
    assert _untouched(ffi, out)
    out = _buf(ffi, 32)
    assert lib.pyq_digest(md, b"abc", 3, out, len(out)) == 1
    assert bytes(ffi.buffer(out)).hex().startswith("ba7816bf")


def test_sector_new_refuses_bad_arguments():
    from pyqcrypt.crypto.openssl import fetch_cipher
    ffi, lib = _native.crypto()
    evp, key = fetch_cipher("AES-256-XTS"), bytes(range(64))
    for args in [(evp, key, 64, 99), (evp, key, 64, -1), (evp, key, 63, lib.PYQ_IV_PLAIN64),
                 (evp, ffi.NULL, 64, lib.PYQ_IV_PLAIN64), (ffi.NULL, key, 64, lib.PYQ_IV_PLAIN64),
                 (evp, key, 64, lib.PYQ_IV_ESSIV)]:          # essiv without its cipher
        assert lib.pyq_sector_new(*args, ffi.NULL, ffi.NULL, 0, 1) == ffi.NULL, args[2:]
    lib.ERR_clear_error()
    ctx = lib.pyq_sector_new(evp, key, 64, lib.PYQ_IV_PLAIN64, ffi.NULL, ffi.NULL, 0, 1)
    assert ctx != ffi.NULL
    lib.pyq_sector_free(ctx)


def test_sector_crypt_refuses_null_buffer():
    from pyqcrypt.crypto import SectorCipher
    ffi, lib = _native.crypto()
    with SectorCipher("aes-xts-plain64", bytes(range(64))) as cipher:
        ctx = cipher._context(True)
        assert lib.pyq_sector_crypt(ctx, ffi.NULL, 512, 512, 0, 1) == -1
        assert lib.pyq_sector_crypt(ctx, _buf(ffi, 512), 511, 512, 0, 1) == -1


# ---- keyring, zstd ----------------------------------------------------------------

def test_keyctl_read_refuses_null_buffer_with_length():
    ffi, lib = _native.os_native()
    assert lib.pyq_keyctl_read(1, ffi.NULL, 16) == -errno.EINVAL


def test_zstd_cluster_refuses_null_buffers():
    if not _native.have_zstd():
        pytest.skip("pyqcrypt built without libzstd")
    ffi, lib = _native.zstd()
    dctx = ffi.gc(lib.ZSTD_createDCtx(), lib.ZSTD_freeDCtx)
    why = ffi.new("const char **")
    src = b"\x28\xb5\x2f\xfd" + bytes(16)
    assert lib.pyq_zstd_cluster(dctx, ffi.NULL, 4096, src, len(src), why) == -1
    assert ffi.string(why[0]) == b"bad arguments"
    out = _buf(ffi, 4096)
    assert lib.pyq_zstd_cluster(dctx, out, len(out), ffi.NULL, 16, why) == -1
    assert ffi.string(why[0]) == b"bad arguments"
    assert _untouched(ffi, out)
