# SPDX-License-Identifier: LGPL-2.1-or-later
"""Sector sizes above 512 bytes with an IV step, as LUKS2 segments use them.

A LUKS2 segment of S-byte sectors is encrypted in S-byte units whose IV
number is the unit's payload offset in 512-byte sectors (dm-crypt without
iv_large_sectors), so the number advances by S / 512 per unit:
``SectorCipher(spec, key, sector_size=S, iv_step=S // 512)``.

Checked three ways:
* the OpenSSL backend against pyca/cryptography, one unit at a time with
  IVs computed here from the dm-crypt definitions, on both C loop paths;
* the libgcrypt backend against itself one unit at a time
  (``crypt_unit`` with an IV computed here), and LRW/ECB against their
  512-byte equivalents;
* both backends against volumes made by ``cryptsetup reencrypt --encrypt``
  from known plaintext (the independent oracle).
"""

import hashlib
import os
import struct
import subprocess

import pytest

import pyqcrypt
from pyqcrypt import _native
from pyqcrypt._native import have_gcrypt
from pyqcrypt.crypto import CipherSpec, SectorCipher

from conftest import on_sector_path, tool, write_file
from luks2util import segment, volume_key

needs_gcrypt = pytest.mark.skipif(not have_gcrypt(), reason="pyqcrypt built without libgcrypt")

# (sector size, IV step) as a LUKS2 segment of that sector size has them
UNITS = [(4096, 8), (1024, 2)]
# crosses 2^32 (where a 32-bit IV would wrap) inside the run
FIRST = (1 << 32) - 16


def _le64(n, width):
    return struct.pack("<Q", n).ljust(width, b"\0")


# ---- (a) OpenSSL backend against pyca/cryptography --------------------------------

def _oracle_units(spec, key, data, unit, first, step, encrypt):
    """*data* processed unit by unit with pyca/cryptography; unit k uses
    the IV of sector first + k * step."""
    ciphers = pytest.importorskip("cryptography.hazmat.primitives.ciphers")
    Cipher, algorithms, modes = ciphers.Cipher, ciphers.algorithms, ciphers.modes
    out = bytearray()
    for k in range(len(data) // unit):
        sector = first + k * step
        if spec.ivgen == "plain64":
            iv = _le64(sector, 16)
        elif spec.ivgen == "essiv":
            salt = hashlib.new(spec.ivgen_hash, key).digest()
            iv = Cipher(algorithms.AES(salt), modes.ECB()).encryptor().update(_le64(sector, 16))
        else:
            raise AssertionError(spec.ivgen)
        mode = {"xts": modes.XTS, "cbc": modes.CBC}[spec.mode](iv)
        c = Cipher(algorithms.AES(key), mode)
        ctx = c.encryptor() if encrypt else c.decryptor()
        out += ctx.update(data[k * unit:(k + 1) * unit]) + ctx.finalize()
    return bytes(out)


OPENSSL_SPECS = [("aes-xts-plain64", 256), ("aes-xts-plain64", 512),
                 ("aes-cbc-essiv:sha256", 256), ("aes-cbc-plain64", 256)]


@pytest.mark.parametrize("text,bits", OPENSSL_SPECS, ids=lambda v: str(v))
@pytest.mark.parametrize("unit,step", UNITS, ids=lambda v: str(v))
def test_openssl_units_match_oracle(text, bits, unit, step, sector_path):
    spec = CipherSpec.parse(text, bits)
    assert spec.backend == "openssl"
    key = os.urandom(spec.key_bytes)
    data = os.urandom(unit * 5)
    with SectorCipher(spec, key, sector_size=unit, iv_step=step) as cipher:
        assert on_sector_path(cipher, sector_path)
        ct = bytes(cipher.encrypt(bytearray(data), FIRST))
        assert ct == _oracle_units(spec, key, data, unit, FIRST, step, True)
        assert bytes(cipher.decrypt(bytearray(ct), FIRST)) == data
        # a run split in two gives the same bytes as one call
        tail = bytearray(data[2 * unit:])
        cipher.encrypt(tail, FIRST + 2 * step)
        assert bytes(tail) == ct[2 * unit:]


# ---- (b) libgcrypt backend against itself, unit by unit ---------------------------

def _gcrypt_iv(spec, key, sector):
    """The IV that spec's generator makes for *sector*, for crypt_unit."""
    width = 8 if spec.cipher == "cast5" else 16
    if spec.ivgen in (None, "null"):
        return bytes(width)
    if spec.ivgen == "plain":
        return struct.pack("<I", sector & 0xFFFFFFFF).ljust(width, b"\0")
    if spec.ivgen == "plain64":
        return _le64(sector, width)
    if spec.ivgen == "plain64be":
        return struct.pack(">Q", sector).rjust(width, b"\0")
    if spec.ivgen == "benbi":      # 1-based index of the unit's first cipher block
        shift = 9 - (width.bit_length() - 1)
        return struct.pack(">Q", ((sector << shift) + 1) & ((1 << 64) - 1)).rjust(width, b"\0")
    if spec.ivgen == "essiv":
        salt = hashlib.new(spec.ivgen_hash, key).digest()
        with SectorCipher(CipherSpec.parse(spec.cipher + "-ecb", len(salt) * 8), salt) as ecb:
            return bytes(ecb.crypt_unit(bytearray(_le64(sector, width)), b"", True))
    raise AssertionError(spec.ivgen)


GCRYPT_SPECS = [
    ("serpent-xts-plain64", 512), ("serpent-xts-plain64", 256), ("twofish-xts-plain64", 512),
    ("twofish-xts-plain64", 384),            # 192-bit halves: GNU Nettle's Twofish
    ("serpent-cbc-essiv:sha256", 256), ("twofish-cbc-essiv:sha256", 128),
    ("serpent-cbc-plain64", 256), ("twofish-cbc-plain64be", 256), ("serpent-cbc-plain", 128),
    ("aes-cbc-benbi", 256), ("serpent-lrw-benbi", 384), ("aes-lrw-plain64", 256),
    ("cast5-cbc-benbi", 128), ("aes-cbc-null", 256),
]


@needs_gcrypt
@pytest.mark.parametrize("text,bits", GCRYPT_SPECS, ids=lambda v: str(v))
@pytest.mark.parametrize("unit,step", UNITS + [(2048, 4), (512, 1)], ids=lambda v: str(v))
def test_gcrypt_units_match_unit_by_unit(text, bits, unit, step):
    spec = CipherSpec.parse(text, bits)
    assert spec.backend == "libgcrypt"
    key = os.urandom(spec.key_bytes)
    # more units than one internal chunk holds, and an odd number of them
    data = os.urandom(unit * max(5, 512 * 37 // unit + 1))
    with SectorCipher(spec, key, sector_size=unit, iv_step=step) as cipher:
        want = bytearray(data)
        for k in range(len(data) // unit):
            cipher.crypt_unit(memoryview(want)[k * unit:(k + 1) * unit],
                              _gcrypt_iv(spec, key, FIRST + k * step), True)
        ct = bytes(cipher.encrypt(bytearray(data), FIRST))
        assert ct == bytes(want)
        assert bytes(cipher.decrypt(bytearray(ct), FIRST)) == data


@needs_gcrypt
@pytest.mark.parametrize("text,bits", [("serpent-lrw-benbi", 384), ("aes-lrw-benbi", 256),
                                       ("twofish-lrw-benbi", 384), ("serpent-ecb", 256)])
def test_gcrypt_units_equal_512_byte_sectors_where_the_mode_says_so(text, bits):
    """LRW numbers every cipher block (benbi starts a unit at its first
    block's index) and ECB has no IV, so a 4096-byte unit with step 8 is
    the same ciphertext as eight 512-byte sectors."""
    spec = CipherSpec.parse(text, bits)
    key = os.urandom(spec.key_bytes)
    data = os.urandom(4096 * 6)
    with SectorCipher(spec, key, 4096, 8) as big, SectorCipher(spec, key) as small:
        assert bytes(big.encrypt(bytearray(data), 80)) == bytes(small.encrypt(bytearray(data), 80))


@pytest.mark.parametrize("text,bits", [("aes-xts-plain64", 512),
                                       pytest.param("serpent-xts-plain64", 512, marks=needs_gcrypt)])
def test_last_unit_may_reach_the_last_sector_number(text, bits):
    key = os.urandom(bits // 8)
    top = (1 << 64) - 1
    with SectorCipher(CipherSpec.parse(text, bits), key, 4096, 8) as cipher:
        buf = bytearray(os.urandom(8192))
        data = bytes(buf)
        cipher.encrypt(buf, top - 8)            # units numbered 2^64-9, 2^64-1
        assert bytes(cipher.decrypt(buf, top - 8)) == data
        with pytest.raises(pyqcrypt.Error, match="out of range"):
            cipher.encrypt(bytearray(8192), top - 7)
        with pytest.raises(pyqcrypt.Error, match="out of range"):
            cipher.encrypt(bytearray(4096), 1 << 64)


# ---- (c) argument checks -------------------------------------------------------

@pytest.mark.parametrize("text,bits", [("aes-xts-plain64", 512),
                                       pytest.param("serpent-xts-plain64", 512, marks=needs_gcrypt)])
@pytest.mark.parametrize("step", [0, -1, -8, 1 << 64, 1.0, True, None])
def test_bad_iv_step_refused(text, bits, step):
    with pytest.raises(pyqcrypt.Error, match="IV step"):
        SectorCipher(text, os.urandom(bits // 8), sector_size=4096, iv_step=step)


@pytest.mark.parametrize("text,bits,unit", [
    ("aes-cbc-plain64", 256, 1000), ("aes-cbc-essiv:sha256", 256, 4104),
    pytest.param("serpent-xts-plain64", 512, 1000, marks=needs_gcrypt),
    pytest.param("serpent-cbc-essiv:sha256", 256, 520, marks=needs_gcrypt),
    pytest.param("cast5-cbc-benbi", 128, 1032, marks=needs_gcrypt),     # whole blocks, not 16s
    pytest.param("twofish-xts-plain64", 512, 256, marks=needs_gcrypt),  # below 512
    pytest.param("twofish-xts-plain64", 512, 8192, marks=needs_gcrypt),  # above 4096
])
def test_unit_not_whole_blocks_refused(text, bits, unit):
    with pytest.raises(pyqcrypt.Error, match="%d-byte sectors" % unit):
        SectorCipher(text, os.urandom(bits // 8), sector_size=unit, iv_step=1)


def _buf(ffi, n):
    buf = ffi.new("unsigned char[]", n)
    ffi.memmove(buf, b"\xa5" * n, n)
    return buf


def test_openssl_loop_refuses_zero_step_and_wrapping_numbers():
    ffi, lib = _native.crypto()
    with SectorCipher("aes-xts-plain64", os.urandom(64)) as cipher:
        ctx = cipher._context(True)
        buf = _buf(ffi, 8192)
        assert lib.pyq_sector_crypt(ctx, buf, 8192, 4096, 0, 0) == -1
        assert lib.pyq_sector_crypt(ctx, buf, 8192, 4096, (1 << 64) - 8, 8) == -1
        assert lib.pyq_sector_crypt(ctx, buf, 8192, 512, (1 << 64) - 15, 2) == -1
        assert bytes(ffi.buffer(buf)) == b"\xa5" * 8192
        assert lib.pyq_sector_crypt(ctx, buf, 8192, 4096, (1 << 64) - 9, 8) == 1


@needs_gcrypt
def test_gcrypt_loop_refuses_bad_units():
    ffi, lib = _native.gcrypt()
    with SectorCipher("serpent-xts-plain64", os.urandom(64)) as cipher:
        ctx = cipher._gc_context()
        buf = _buf(ffi, 8192)
        for args, rc in [((8192, 4096, 0, 0), lib.PYQ_GC_EINVAL),
                         ((8192, 4096, (1 << 64) - 8, 8), lib.PYQ_GC_EINVAL),
                         ((8192, 8192, 0, 16), lib.PYQ_GC_EINVAL),
                         ((8192, 256, 0, 1), lib.PYQ_GC_EINVAL),
                         ((8192, 1000, 0, 2), lib.PYQ_GC_ELEN),
                         ((8000, 4096, 0, 8), lib.PYQ_GC_ELEN)]:
            assert lib.pyq_gc_crypt_units(ctx, 1, buf, *args) == rc, args
        assert bytes(ffi.buffer(buf)) == b"\xa5" * 8192
        assert lib.pyq_gc_crypt_units(ctx, 1, buf, 8192, 4096, (1 << 64) - 9, 8) == 0


def test_repr_names_the_step_not_the_key():
    key = bytes(range(0x40, 0x80))
    text = repr(SectorCipher("aes-xts-plain64", key, 4096, 8))
    assert "4096-byte sectors" in text and "IV step 8" in text
    assert key.hex() not in text and repr(key) not in text


# ---- cryptsetup as the oracle ------------------------------------------------------

RESERVE = 4 << 20          # --reduce-device-size: room for the LUKS2 header
CS_CASES = [
    ("aes-xts-plain64", 512, 4096), ("aes-xts-plain64", 512, 512), ("aes-xts-plain64", 256, 2048),
    ("aes-cbc-essiv:sha256", 256, 4096),
    pytest.param("aes-cbc-benbi", 256, 4096, marks=needs_gcrypt),       # libgcrypt backend
    pytest.param("serpent-xts-plain64", 512, 4096, marks=needs_gcrypt),
    pytest.param("twofish-xts-plain64", 512, 4096, marks=needs_gcrypt),
    pytest.param("serpent-cbc-essiv:sha256", 256, 4096, marks=needs_gcrypt),
]
# what cryptsetup says when its user-space crypto lacks the cipher and it
# would need the kernel's (device-mapper or AF_ALG), as in containers
CS_NO_USERSPACE = ("Cannot initialize device-mapper", "AF_ALG")


@pytest.mark.interop
@pytest.mark.parametrize("text,bits,unit", CS_CASES, ids=lambda v: str(v))
def test_cryptsetup_made_luks2_decrypts(workdir, text, bits, unit):
    cs = tool("cryptsetup")
    vol = os.path.join(workdir, "v.luks2")
    size = 8 << 20
    plain = os.urandom(size - RESERVE)
    with open(vol, "wb") as fh:
        fh.write(plain)
        fh.truncate(size)
    keyfile = write_file(os.path.join(workdir, "key"), os.urandom(32))
    proc = subprocess.run(
        [cs, "reencrypt", "--encrypt", "--type", "luks2", "--cipher", text, "--key-size", str(bits),
         "--sector-size", str(unit), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
         "--reduce-device-size", "%dM" % (RESERVE >> 20), "--force-offline-reencrypt", "-q",
         "--key-file", keyfile, vol], capture_output=True)
    if proc.returncode != 0:
        err = (proc.stdout + proc.stderr).decode(errors="replace")
        if any(s in err for s in CS_NO_USERSPACE):
            pytest.skip("cryptsetup cannot run %s in user space here: %s" % (text, err.strip()))
        pytest.fail("cryptsetup reencrypt failed (%d): %s" % (proc.returncode, err))
    seg = segment(vol)
    offset = seg["offset"]
    assert (seg["sector"], seg["cipher"], seg["iv_tweak"]) == (unit, text, 0)
    key = volume_key(vol, keyfile)
    assert len(key) * 8 == bits
    with open(vol, "rb") as fh:
        fh.seek(offset)
        data = bytearray(fh.read(len(plain)))
    assert len(data) == len(plain) and bytes(data) != plain
    with SectorCipher(CipherSpec.parse(text, bits), key, sector_size=unit, iv_step=unit // 512) as cipher:
        assert bytes(cipher.decrypt(data, 0)) == plain
        # and our encryption gives cryptsetup's ciphertext back
        ours = bytes(cipher.encrypt(data, 0))
    with open(vol, "rb") as fh:
        fh.seek(offset)
        assert fh.read(len(plain)) == ours
