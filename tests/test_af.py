# SPDX-License-Identifier: LGPL-2.1-or-later
"""The anti-forensic splitter: round trips, sensitivity, and a known answer
taken from a LUKS1 header cryptsetup wrote around a master key we chose."""

import hashlib
import os

import pytest

import pyqcrypt
from pyqcrypt.crypto import af_merge, af_split

from conftest import luks1_master_key, run, tool


def _py_diffuse(block, hash_name):
    """Independent Python statement of the LUKS1 diffuse step (test oracle)."""
    d = hashlib.new(hash_name).digest_size
    out = b""
    for i in range(0, (len(block) + d - 1) // d):
        piece = block[i * d:(i + 1) * d]
        out += hashlib.new(hash_name, i.to_bytes(4, "big") + piece).digest()[:len(piece)]
    return out


def _py_merge(material, key_bytes, stripes, hash_name):
    acc = bytes(key_bytes)
    for i in range(stripes - 1):
        chunk = material[i * key_bytes:(i + 1) * key_bytes]
        acc = _py_diffuse(bytes(a ^ b for a, b in zip(acc, chunk)), hash_name)
    last = material[(stripes - 1) * key_bytes:stripes * key_bytes]
    return bytes(a ^ b for a, b in zip(acc, last))


@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha512", "ripemd160"])
@pytest.mark.parametrize("key_bytes", [16, 20, 32, 33, 64])
@pytest.mark.parametrize("stripes", [1, 2, 7, 4000])
def test_round_trip(hash_name, key_bytes, stripes):
    key = os.urandom(key_bytes)
    material = af_split(key, stripes, hash_name)
    assert len(material) == key_bytes * stripes
    assert af_merge(material, key_bytes, stripes, hash_name).reveal() == key


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_merge_matches_independent_python(hash_name):
    material = os.urandom(40 * 9)
    assert af_merge(material, 40, 9, hash_name).reveal() == _py_merge(material, 40, 9, hash_name)


def test_any_damaged_stripe_loses_the_key():
    key = os.urandom(32)
    material = bytearray(af_split(key, 50, "sha256").reveal())
    for stripe in (0, 25, 49):
        bad = bytearray(material)
        bad[stripe * 32] ^= 1
        assert af_merge(bad, 32, 50, "sha256").reveal() != key


def test_split_is_randomised():
    key = os.urandom(32)
    assert af_split(key, 10, "sha256").reveal() != af_split(key, 10, "sha256").reveal()


@pytest.mark.parametrize("args", [(0, 10), (32, 0), (32, 2 ** 21), (5000, 2)])
def test_bad_sizes_are_errors(args):
    key_bytes, stripes = args
    with pytest.raises(pyqcrypt.Error):
        af_merge(bytes(max(key_bytes, 1) * max(min(stripes, 4), 1)), key_bytes, stripes, "sha256")


def test_short_material_is_error():
    with pytest.raises(pyqcrypt.Error, match="need"):
        af_merge(bytes(100), 32, 4000, "sha256")


def test_unknown_hash_is_error():
    with pytest.raises(pyqcrypt.UnsupportedCipher):
        af_split(os.urandom(32), 10, "nohash")


@pytest.mark.interop
@pytest.mark.parametrize("cipher,bits,hash_name", [
    ("aes-xts-plain64", 512, "sha256"),
    ("aes-xts-plain64", 256, "sha1"),
    ("aes-cbc-essiv:sha256", 256, "sha512"),
    ("aes-cbc-essiv:sha256", 192, "sha256"),   # 96000 bytes of key material
    ("aes-cbc-plain", 128, "ripemd160"),
])
def test_known_answer_from_cryptsetup(workdir, cipher, bits, hash_name):
    """cryptsetup luksFormat around a master key we chose: our PBKDF2,
    sector decryption and AF merge must give that key back."""
    cs = tool("cryptsetup")
    mk = os.urandom(bits // 8)
    paths = {n: os.path.join(workdir, n) for n in ("mk", "pw", "vol")}
    with open(paths["mk"], "wb") as fh:
        fh.write(mk)
    with open(paths["pw"], "wb") as fh:
        fh.write(b"\x00binary\xffpass")
    with open(paths["vol"], "wb") as fh:
        fh.truncate(4 << 20)
    run([cs, "luksFormat", "--type", "luks1", "-q", "--cipher", cipher, "--key-size", str(bits),
         "--hash", hash_name, "--pbkdf-force-iterations", "1000",
         "--master-key-file", paths["mk"], "--key-file", paths["pw"], paths["vol"]])
    hdr, recovered, slot = luks1_master_key(paths["vol"], b"\x00binary\xffpass")
    assert (hdr["cipher_mode"], hdr["hash_spec"], slot) == (cipher.split("-", 1)[1], hash_name, 0)
    assert recovered == mk
    # And cryptsetup's own dump of the volume key agrees.
    dump = run([cs, "luksDump", "--dump-master-key", "-q", "--key-file", paths["pw"],
                paths["vol"]]).stdout.decode()
    hexkey = "".join(dump.split("MK dump:", 1)[1].split())
    assert bytes.fromhex(hexkey) == mk
