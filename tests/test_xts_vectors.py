# SPDX-License-Identifier: LGPL-2.1-or-later
"""IEEE Std 1619-2007 XTS-AES known answers through pyqcrypt's sector routine.

The data unit sequence number is the sector number and the data unit is the
sector, so each vector is a one-sector run; vectors that share a key (4-6,
7-9, 10-14) are also checked as one multi-sector run starting at the first
vector's sector number, which exercises the IV stepping inside the C loop.
Every test runs on both paths of that loop (the provider called directly,
and the EVP fallback).
"""

import pytest

import pyqcrypt
from pyqcrypt.crypto import SectorCipher

from conftest import on_sector_path
from kat_data import XTS_AES_VECTORS

pytestmark = pytest.mark.usefixtures("sector_path")

VECTORS = {v["name"].rsplit(" ", 1)[1]: v for v in XTS_AES_VECTORS}


@pytest.mark.parametrize("vec", [v for v in XTS_AES_VECTORS if not v["key_halves_equal"]],
                         ids=lambda v: v["name"])
def test_xts_vector(vec, sector_path):
    key = bytes.fromhex(vec["key"])
    ptx, ctx = bytes.fromhex(vec["ptx"]), bytes.fromhex(vec["ctx"])
    with SectorCipher("aes-xts-plain64", key, sector_size=len(ptx)) as cipher:
        assert on_sector_path(cipher, sector_path)
        assert bytes(cipher.encrypt(bytearray(ptx), vec["dusn"])) == ctx
        assert bytes(cipher.decrypt(bytearray(ctx), vec["dusn"])) == ptx


def test_xts_equal_key_halves_refused_clearly():
    """Vector 1 has Key1 == Key2; OpenSSL 3 refuses such XTS keys, and the
    refusal must surface as a pyqcrypt.Error naming OpenSSL's reason."""
    vec = VECTORS["1"]
    with pytest.raises(pyqcrypt.CryptoError, match="(?i)duplicated keys"):
        SectorCipher("aes-xts-plain64", bytes.fromhex(vec["key"]), sector_size=32)


@pytest.mark.parametrize("chain", [("4", "5", "6"), ("7", "8", "9")],
                         ids=lambda c: "vectors-" + "-".join(c))
def test_xts_multi_sector_runs(chain):
    vecs = [VECTORS[n] for n in chain]
    key = bytes.fromhex(vecs[0]["key"])
    assert all(bytes.fromhex(v["key"]) == key for v in vecs)
    first = vecs[0]["dusn"]
    assert [v["dusn"] for v in vecs] == [first + i for i in range(len(vecs))]
    ptx = b"".join(bytes.fromhex(v["ptx"]) for v in vecs)
    ctx = b"".join(bytes.fromhex(v["ctx"]) for v in vecs)
    with SectorCipher("aes-xts-plain64", key) as cipher:
        assert bytes(cipher.encrypt(bytearray(ptx), first)) == ctx
        assert bytes(cipher.decrypt(bytearray(ctx), first)) == ptx


def test_xts_sparse_run():
    """Vectors 10 (sector 0xff) and 11 (0xffff) in one 0xff01-sector run."""
    v10, v11 = VECTORS["10"], VECTORS["11"]
    key = bytes.fromhex(v10["key"])
    run = bytearray(512 * (0xffff - 0xff + 1))
    run[:512] = bytes.fromhex(v10["ptx"])
    run[-512:] = bytes.fromhex(v11["ptx"])
    with SectorCipher("aes-xts-plain64", key) as cipher:
        cipher.encrypt(run, 0xff)
    assert bytes(run[:512]) == bytes.fromhex(v10["ctx"])
    assert bytes(run[-512:]) == bytes.fromhex(v11["ctx"])
