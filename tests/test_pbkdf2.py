# SPDX-License-Identifier: LGPL-2.1-or-later
"""PBKDF2 known answers (RFC 6070, published SHA-256 vectors) and the
iteration benchmark."""

import hashlib

import pytest

import pyqcrypt
from pyqcrypt.crypto import iterations_for, iterations_per_second, pbkdf2, SecretBuffer

from kat_data import PBKDF2_SHA1_RFC6070, PBKDF2_SHA256_VECTORS


def _fast(vectors):
    return [v for v in vectors if not v.get("slow")]


def _id(vec):
    return "%s-%d" % (vec["password"][:8], vec["iterations"])


@pytest.mark.parametrize("vec", _fast(PBKDF2_SHA1_RFC6070), ids=_id)
def test_rfc6070(vec):
    out = pbkdf2("sha1", vec["password"], vec["salt"], vec["iterations"], vec["dklen"])
    assert out.reveal().hex() == vec["dk"]


@pytest.mark.parametrize("vec", _fast(PBKDF2_SHA256_VECTORS), ids=_id)
def test_sha256_vectors(vec):
    out = pbkdf2("sha256", vec["password"], vec["salt"], vec["iterations"], vec["dklen"])
    assert out.reveal().hex() == vec["dk"]


@pytest.mark.parametrize("name", ["sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160"])
def test_hashes_agree_with_hashlib(name):
    try:
        expect = hashlib.pbkdf2_hmac(name, b"pass\0phrase", b"NaCl" * 8, 1000, 64)
    except ValueError:
        pytest.skip("hashlib lacks %s" % name)
    assert pbkdf2(name, b"pass\0phrase", b"NaCl" * 8, 1000, 64).reveal() == expect


def test_accepts_secret_buffer_and_empty_passphrase():
    expect = hashlib.pbkdf2_hmac("sha256", b"", b"salt", 2, 32)
    assert pbkdf2("sha256", SecretBuffer.from_bytes(b""), b"salt", 2, 32).reveal() == expect
    assert pbkdf2("sha256", bytearray(b""), b"", 2, 32).reveal() == \
        hashlib.pbkdf2_hmac("sha256", b"", b"", 2, 32)


@pytest.mark.parametrize("args", [("nohash", 1, 32), ("sha256", 0, 32), ("sha256", 2**32, 32),
                                  ("sha256", 1, 0), ("sha256", 1, 1 << 30)])
def test_bad_arguments_are_errors(args):
    with pytest.raises(pyqcrypt.Error):
        pbkdf2(args[0], b"p", b"s", args[1], args[2])


def test_benchmark_picks_count_near_requested_time():
    ips = iterations_per_second("sha256", target_ms=20)
    assert ips > 1000
    count = iterations_for("sha256", 10)
    assert count >= 1000
    # Never below the floor, whatever the request.
    assert iterations_for("sha1", 1, minimum=5000) >= 5000
    with pytest.raises(pyqcrypt.Error):
        iterations_for("sha256", 0)
