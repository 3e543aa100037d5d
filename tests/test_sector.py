# SPDX-License-Identifier: LGPL-2.1-or-later
"""The C sector loop against an independent oracle (pyca/cryptography, one
sector at a time, IVs computed here in Python from the dm-crypt definitions),
on both of the loop's paths: the provider called directly, and EVP."""

import hashlib
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

import pyqcrypt
from pyqcrypt.crypto import CipherSpec, SectorCipher

from conftest import SECTOR_PATHS, forced_sector_path, on_sector_path

crypto_oracle = pytest.importorskip("cryptography.hazmat.primitives.ciphers")
Cipher, algorithms, modes = crypto_oracle.Cipher, crypto_oracle.algorithms, crypto_oracle.modes


def _iv(spec, key, sector, ivlen):
    if spec.ivgen == "plain":
        return struct.pack("<I", sector & 0xFFFFFFFF).ljust(ivlen, b"\0")
    if spec.ivgen == "plain64":
        return struct.pack("<Q", sector).ljust(ivlen, b"\0")
    if spec.ivgen == "plain64be":
        return struct.pack(">Q", sector).rjust(ivlen, b"\0")
    if spec.ivgen == "essiv":
        salt = hashlib.new(spec.ivgen_hash, key).digest()
        enc = Cipher(_alg(spec.cipher, salt), modes.ECB()).encryptor()
        return enc.update(struct.pack("<Q", sector).ljust(ivlen, b"\0"))
    raise AssertionError(spec.ivgen)


try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import Camellia
except ImportError:  # older pyca/cryptography
    Camellia = algorithms.Camellia


def _alg(name, key):
    return {"aes": algorithms.AES, "camellia": Camellia, "sm4": algorithms.SM4}[name](key)


def oracle(spec, key, data, sector, encrypt, sector_size=512):
    out = bytearray()
    for i in range(0, len(data), sector_size):
        alg = _alg(spec.cipher, key)
        blk = 16
        if spec.mode == "ecb":
            mode = modes.ECB()
        else:
            iv = _iv(spec, key, sector + i // sector_size, blk)
            mode = {"cbc": modes.CBC, "ctr": modes.CTR, "xts": modes.XTS}[spec.mode](iv)
        c = Cipher(alg, mode)
        ctx = c.encryptor() if encrypt else c.decryptor()
        out += ctx.update(data[i:i + sector_size]) + ctx.finalize()
    return bytes(out)


SPECS = [
    ("aes-xts-plain64", 512), ("aes-xts-plain64", 256), ("aes-xts-plain", 512),
    ("aes-xts-plain64be", 256), ("aes-cbc-essiv:sha256", 256),
    ("aes-cbc-essiv:sha256", 128), ("aes-cbc-essiv:sha256", 192), ("aes-cbc-plain", 128),
    ("aes-cbc-plain64", 256), ("aes-cbc-plain64be", 128), ("aes-ecb", 256),
    ("aes-ctr-plain64", 256), ("aes-xts-essiv:sha256", 512),
    ("camellia-cbc-plain64", 256), ("sm4-cbc-plain64", 128),
]


@pytest.mark.parametrize("text,bits", SPECS, ids=lambda v: str(v))
@pytest.mark.parametrize("sector_size", [512, 4096])
def test_matches_oracle(text, bits, sector_size, sector_path):
    spec = CipherSpec.parse(text, bits)
    key = os.urandom(spec.key_bytes)
    data = os.urandom(sector_size * 5)
    start = (1 << 32) - 2      # crosses the 32-bit boundary where plain wraps
    with SectorCipher(spec, key, sector_size) as cipher:
        assert on_sector_path(cipher, sector_path)
        ct = bytes(cipher.encrypt(bytearray(data), start))
        assert ct == oracle(spec, key, data, start, True, sector_size)
        assert bytes(cipher.decrypt(bytearray(ct), start)) == data


@pytest.mark.usefixtures("sector_path")
def test_plain_wraps_at_32_bits_plain64_does_not():
    key = os.urandom(32)
    data = bytearray(os.urandom(512))
    with SectorCipher(CipherSpec.parse("aes-cbc-plain", 256), key) as plain:
        assert plain.encrypt(bytearray(data), 5) == plain.encrypt(bytearray(data), 5 + (1 << 32))
    with SectorCipher(CipherSpec.parse("aes-cbc-plain64", 256), key) as p64:
        assert p64.encrypt(bytearray(data), 5) != p64.encrypt(bytearray(data), 5 + (1 << 32))


@pytest.mark.usefixtures("sector_path")
def test_legacy_provider_ciphers_round_trip():
    for text, bits in [("cast5-cbc-plain64", 128), ("des3_ede-cbc-plain64", 192)]:
        try:
            spec = CipherSpec.parse(text, bits).check()
        except pyqcrypt.UnsupportedCipher as exc:
            pytest.skip(str(exc))
        key = os.urandom(spec.key_bytes)
        data = os.urandom(2048)
        with SectorCipher(spec, key) as cipher:
            ct = bytes(cipher.encrypt(bytearray(data), 7))
            assert ct != data
            # sector independence: sector 8 encrypted alone matches
            assert bytes(cipher.encrypt(bytearray(data[512:1024]), 8)) == ct[512:1024]
            assert bytes(cipher.decrypt(bytearray(ct), 7)) == data


@pytest.mark.parametrize("path", SECTOR_PATHS)
@settings(max_examples=60, deadline=None)
@given(spec_i=st.integers(0, len(SPECS) - 1), sector=st.integers(0, (1 << 64) - 64),
       count=st.integers(0, 40), seed=st.binary(min_size=64, max_size=64))
def test_property_runs_equal_per_sector_oracle(path, spec_i, sector, count, seed):
    spec = CipherSpec.parse(*SPECS[spec_i])
    key = (seed * 2)[:spec.key_bytes]
    if spec.mode == "xts" and key[:len(key) // 2] == key[len(key) // 2:]:
        return
    data = hashlib.shake_256(seed).digest(512 * count)
    with forced_sector_path(path), SectorCipher(spec, key) as cipher:
        assert bytes(cipher.encrypt(bytearray(data), sector)) == oracle(spec, key, data, sector, True)


def test_buffer_types_and_errors():
    key = os.urandom(64)
    with SectorCipher("aes-xts-plain64", key) as cipher:
        mv = memoryview(bytearray(1024))
        cipher.encrypt(mv, 0)
        cipher.encrypt(bytearray(0), 0)
        with pytest.raises(pyqcrypt.Error, match="whole number"):
            cipher.encrypt(bytearray(100), 0)
        with pytest.raises(TypeError, match="writable"):
            cipher.encrypt(bytes(512), 0)
        with pytest.raises(pyqcrypt.Error, match="out of range"):
            cipher.encrypt(bytearray(1024), (1 << 64) - 1)
        with pytest.raises(pyqcrypt.Error, match="out of range"):
            cipher.encrypt(bytearray(512), -1)
    with pytest.raises(pyqcrypt.Error, match="after close"):
        cipher.encrypt(bytearray(512), 0)
    with pytest.raises(pyqcrypt.Error, match="64-byte key"):
        SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(32))
    with pytest.raises(pyqcrypt.Error, match="sector size"):
        SectorCipher("aes-xts-plain64", key, sector_size=3)
    assert "64" not in repr(SectorCipher("aes-xts-plain64", key)).replace("plain64", "")


def test_direct_provider_path_in_use():
    """The fast path (provider dispatch) is what runs for AES on OpenSSL 3,
    unless the EVP fallback is forced."""
    with forced_sector_path("direct"), SectorCipher("aes-xts-plain64", os.urandom(64)) as cipher:
        assert on_sector_path(cipher, "direct")
    with forced_sector_path("evp"), SectorCipher("aes-xts-plain64", os.urandom(64)) as cipher:
        assert on_sector_path(cipher, "evp")


def test_environment_forces_evp_path():
    """PYQCRYPT_FORCE_EVP_FALLBACK=1 sends a whole process down the EVP path."""
    import subprocess
    import sys
    code = ("import os; from pyqcrypt import _native; from pyqcrypt.crypto import SectorCipher; "
            "c = SectorCipher('aes-xts-plain64', os.urandom(64)); "
            "print(_native.crypto()[1].pyq_sector_direct_path(c._context(True)))")
    env = dict(os.environ)
    for value, expect in (("1", "0"), ("", "1")):
        env["PYQCRYPT_FORCE_EVP_FALLBACK"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        assert out.strip() == expect, value


def test_contexts_keep_their_path():
    """The switch applies to contexts made after it: a cipher's existing
    contexts keep their path, and both paths agree on the bytes."""
    key, data = os.urandom(64), os.urandom(4096)
    with forced_sector_path("direct"), SectorCipher("aes-xts-plain64", key) as direct:
        with forced_sector_path("evp"), SectorCipher("aes-xts-plain64", key) as evp:
            assert on_sector_path(direct, "direct") and on_sector_path(evp, "evp")
            assert (bytes(direct.encrypt(bytearray(data), 77))
                    == bytes(evp.encrypt(bytearray(data), 77)))
