# SPDX-License-Identifier: LGPL-2.1-or-later
"""The native modules load, errors map to pyqcrypt.Error, buffers get wiped."""

import pickle
import threading

import pytest

import pyqcrypt
from pyqcrypt import _native
from pyqcrypt.crypto import SecretBuffer, random_bytes
from pyqcrypt.crypto.openssl import fetch_cipher, fetch_digest, openssl_version


def test_openssl_loads():
    assert openssl_version().startswith("OpenSSL 3")
    _, lib = _native.crypto()
    xts = fetch_cipher("aes-256-xts")
    # fetch_cipher returns None (it does not raise) for a missing cipher:
    # check what came back is the cipher asked for.
    assert xts is not None
    assert lib.EVP_CIPHER_get_key_length(xts) == 64 and lib.EVP_CIPHER_get_iv_length(xts) == 16
    cbc = fetch_cipher("aes-128-cbc")
    assert lib.EVP_CIPHER_get_key_length(cbc) == 16 and lib.EVP_CIPHER_get_iv_length(cbc) == 16
    assert fetch_cipher("no-such-cipher") is None


DIGEST_SIZES = {"sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64,
                "ripemd160": 20}


@pytest.mark.parametrize("name", sorted(DIGEST_SIZES))
def test_required_hashes_exist(name):
    # fetch_digest raises when OpenSSL lacks the hash (never returns None),
    # so the check is on what it returned: the right algorithm.
    _, lib = _native.crypto()
    assert lib.EVP_MD_get_size(fetch_digest(name)) == DIGEST_SIZES[name]
    assert fetch_digest(name.upper()) == fetch_digest(name)


@pytest.mark.parametrize("name", ["nohash", "sha-256x", "", "aes-256-xts"])
def test_unknown_hash_is_clear_error(name):
    with pytest.raises(pyqcrypt.UnsupportedCipher, match="hash %r is not available" % name):
        fetch_digest(name)


def test_cryptsetup_binding_present_or_clear():
    if _native.have_cryptsetup():
        ffi, lib = _native.cryptsetup()
        assert lib.CRYPT_ANY_SLOT == -1
    else:
        with pytest.raises(pyqcrypt.MissingDependency, match="libcryptsetup-dev"):
            _native.cryptsetup()


def test_cryptsetup_reads_a_luks1_header(workdir):
    """libcryptsetup, through our binding, loads a header cryptsetup wrote."""
    import os
    from conftest import run, tool
    if not _native.have_cryptsetup():
        pytest.skip("pyqcrypt built without libcryptsetup")
    cs = tool("cryptsetup")
    vol = os.path.join(workdir, "v.img")
    pw = os.path.join(workdir, "pw")
    with open(pw, "wb") as fh:
        fh.write(b"pw")
    with open(vol, "wb") as fh:
        fh.truncate(4 << 20)
    run([cs, "luksFormat", "--type", "luks1", "-q", "--pbkdf-force-iterations", "1000",
         "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256", "--key-file", pw, vol])
    ffi, lib = _native.cryptsetup()
    cd = ffi.new("struct crypt_device **")
    assert lib.crypt_init(cd, vol.encode()) == 0
    try:
        assert lib.crypt_load(cd[0], ffi.NULL, ffi.NULL) == 0
        assert ffi.string(lib.crypt_get_type(cd[0])) == b"LUKS1"
        assert ffi.string(lib.crypt_get_cipher(cd[0])) == b"aes"
        assert ffi.string(lib.crypt_get_cipher_mode(cd[0])) == b"cbc-essiv:sha256"
        assert lib.crypt_get_volume_key_size(cd[0]) == 32
    finally:
        lib.crypt_free(cd[0])


def test_random_bytes_differ():
    assert random_bytes(32) != random_bytes(32)
    assert len(random_bytes(0)) == 0


def test_secret_buffer_wipes_and_hides():
    buf = SecretBuffer.from_bytes(b"hunter2-hunter2")
    assert "hunter2" not in repr(buf) and "15 bytes" in repr(buf)
    assert buf.equals(b"hunter2-hunter2") and not buf.equals(b"hunter3-hunter2")
    view = buf.writable_view()
    assert bytes(view) == b"hunter2-hunter2"
    ffi, _ = _native.crypto()
    raw = ffi.cast("unsigned char *", buf.cdata)
    with pytest.raises(TypeError):
        bytes(buf)
    with pytest.raises(TypeError):
        pickle.dumps(buf)
    with buf:
        pass
    assert buf.wiped and "wiped" in repr(buf)
    with pytest.raises(pyqcrypt.Error):
        buf.cdata
    buf.wipe()  # idempotent
    del raw


def test_secure_alloc_is_zeroed_and_cleansable():
    """The C allocator hands out zeroed pages, and OPENSSL_cleanse (what
    pyq_secure_free runs before free) zeroes them."""
    ffi, lib = _native.crypto()
    raw = lib.pyq_secure_alloc(32)
    assert bytes(ffi.buffer(raw, 32)) == b"\0" * 32
    ffi.memmove(raw, b"S" * 32, 32)
    lib.OPENSSL_cleanse(raw, 32)
    assert bytes(ffi.buffer(raw, 32)) == b"\0" * 32
    lib.pyq_secure_free(raw, 32)


def test_secret_buffer_refuses_str():
    from pyqcrypt.crypto.keybuf import as_secret
    with pytest.raises(TypeError, match="bytes"):
        as_secret("text")


def test_secret_buffer_random_and_slice():
    buf = SecretBuffer.random(64)
    part = buf.slice(32, 64)
    assert len(part) == 32 and part.equals(buf.reveal()[32:])
    with pytest.raises(pyqcrypt.Error):
        buf.slice(10, 70)


def test_threads_share_nothing_unsafe():
    """Many threads using one SectorCipher agree with a single thread."""
    from pyqcrypt.crypto import SectorCipher
    key = bytes(range(64))
    cipher = SectorCipher("aes-xts-plain64", key)
    ref = bytearray(random_bytes(64 * 512))
    expect = cipher.encrypt(bytearray(ref), 1000)
    results = {}

    def work(i):
        out = []
        for _ in range(50):
            out.append(bytes(cipher.encrypt(bytearray(ref), 1000)))
        results[i] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == bytes(expect) for out in results.values() for r in out)
