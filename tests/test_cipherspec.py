# SPDX-License-Identifier: LGPL-2.1-or-later
"""CipherSpec: both spellings, canonical output, clear refusals."""

import pytest
from hypothesis import given, settings, strategies as st

import pyqcrypt
from pyqcrypt.crypto import CipherSpec


@pytest.mark.parametrize("text,bits,name,mode,ossl", [
    ("aes-xts-plain64", 512, "aes", "xts-plain64", "AES-256-XTS"),
    ("aes-xts-plain64", 256, "aes", "xts-plain64", "AES-128-XTS"),
    ("aes-cbc-essiv:sha256", 256, "aes", "cbc-essiv:sha256", "AES-256-CBC"),
    ("aes-cbc-essiv:sha256", 128, "aes", "cbc-essiv:sha256", "AES-128-CBC"),
    ("aes-cbc-plain", 192, "aes", "cbc-plain", "AES-192-CBC"),
    ("aes-cbc-plain64be", 256, "aes", "cbc-plain64be", "AES-256-CBC"),
    ("aes-ecb", 256, "aes", "ecb", "AES-256-ECB"),
    ("aes-ctr-plain64", 128, "aes", "ctr-plain64", "AES-128-CTR"),
    ("cast5-cbc-plain64", 128, "cast5", "cbc-plain64", "CAST5-CBC"),
    ("des3_ede-cbc-plain64", 192, "des3_ede", "cbc-plain64", "DES-EDE3-CBC"),
    ("sm4-cbc-plain64", 128, "sm4", "cbc-plain64", "SM4-CBC"),
    ("camellia-cbc-plain64", 256, "camellia", "cbc-plain64", "CAMELLIA-256-CBC"),
])
def test_cryptsetup_form(text, bits, name, mode, ossl):
    spec = CipherSpec.parse(text, key_bits=bits)
    assert (spec.luks_name, spec.luks_mode, spec.openssl_name) == (name, mode, ossl)
    assert spec.cryptsetup_spec == text and spec.key_bits == bits
    assert CipherSpec.from_luks(name, mode, bits // 8) == spec
    spec.check()


def test_cryptsetup_default_key_sizes():
    assert CipherSpec.parse("aes-xts-plain64").key_bits == 512
    assert CipherSpec.parse("aes-cbc-essiv:sha256").key_bits == 256
    assert CipherSpec.parse("cast5-cbc-plain64").key_bits == 128


@pytest.mark.parametrize("mode_in,canonical", [
    ("xts-plain64:sha256", "xts-plain64"),   # qemu-img quirk: spare hash
    ("XTS-PLAIN64", "xts-plain64"),
    ("ecb-plain64", "ecb"),
])
def test_real_world_quirks_read_written_canonical(mode_in, canonical):
    spec = CipherSpec.from_luks("aes", mode_in, 64 if "xts" in canonical else 32)
    assert spec.luks_mode == canonical


@pytest.mark.parametrize("qemu,luks", [
    (dict(), ("aes", "xts-plain64", 64)),
    (dict(cipher_alg="aes-128", cipher_mode="cbc", ivgen_alg="essiv", ivgen_hash_alg="sha256"),
     ("aes", "cbc-essiv:sha256", 16)),
    (dict(cipher_alg="aes-192", cipher_mode="cbc", ivgen_alg="plain"), ("aes", "cbc-plain", 24)),
    (dict(cipher_alg="aes-256", cipher_mode="ecb"), ("aes", "ecb", 32)),
    (dict(cipher_alg="cast5-128", cipher_mode="cbc", ivgen_alg="plain64"), ("cast5", "cbc-plain64", 16)),
    (dict(cipher_alg="serpent-256", cipher_mode="xts"), ("serpent", "xts-plain64", 64)),
])
def test_qemu_form(qemu, luks):
    spec = CipherSpec.from_qemu(**qemu)
    assert (spec.luks_name, spec.luks_mode, spec.key_bytes) == luks
    back = CipherSpec.from_qemu(**{k.replace("-", "_"): v
                                   for k, v in spec.qemu_options().items()})
    assert back == spec


def test_qemu_options_names():
    assert CipherSpec.parse("aes-xts-plain64").qemu_options() == {
        "cipher-alg": "aes-256", "cipher-mode": "xts", "ivgen-alg": "plain64"}
    assert CipherSpec.parse("aes-cbc-essiv:sha256", 128).qemu_options() == {
        "cipher-alg": "aes-128", "cipher-mode": "cbc", "ivgen-alg": "essiv",
        "ivgen-hash-alg": "sha256"}


@pytest.mark.parametrize("text,bits,pattern", [
    ("aes-xyz-plain64", 256, "xyz"),
    ("aes-cbc-essiv:nohash", 256, "nohash"),
    ("aes-cbc-essiv", 256, "essiv IV generator needs a hash"),
    ("aes-xts-plain64", 384, "384-bit"),
    ("aes-xts-plain64", 1024, "1024-bit"),
    ("aes-xts-plain64", 200, "200 bits"),
    ("aes-xts-plain64", 272, "272-bit"),
    ("aes-cbc-plain64", 512, "512-bit"),
    ("aes-xts-plain64", 7, "multiple of 8"),
    ("aes", 256, "CIPHER-MODE"),
    ("aes-cbc-lmk", 256, "lmk"),
    ("aes-gcm-random", 256, "gcm"),
    ("aes-lrw-benbi", 128, "lrw needs the cipher key plus"),
    ("aes-lrw-plain64", 264, "lrw cannot use a 264-bit key"),
    ("serpent-xts-plain64", 128, "serpent-xts cannot use a 128-bit key"),
    ("twofish-cbc-plain64", 512, "512-bit"),
    ("serpent-ctr-plain64", 256, "no ctr mode"),
    ("cast6-xts-plain64", 512, "cast6"),
    ("aes-cbc-plain99", 256, "plain99"),
    ("aes-cbc", 256, "needs an IV generator"),
    ("", 256, "bad cipher"),
])
def test_bad_names_are_clear_errors(text, bits, pattern):
    with pytest.raises(pyqcrypt.Error, match=pattern):
        CipherSpec.parse(text, key_bits=bits).check()


@pytest.mark.parametrize("text,bits", [
    ("serpent-xts-plain64", 512), ("twofish-xts-plain64", 256), ("serpent-xts-plain64", 384),
    ("twofish-cbc-essiv:sha256", 192), ("serpent-cbc-plain64", 128), ("aes-lrw-plain64", 256),
    ("serpent-lrw-plain64", 384), ("twofish-lrw-benbi", 320), ("aes-cbc-benbi", 256),
])
def test_ciphers_openssl_lacks_go_to_libgcrypt(text, bits):
    spec = CipherSpec.parse(text, bits).check()
    assert spec.backend == "libgcrypt"


@pytest.mark.parametrize("text,bits", [("aes-xts-plain64", 512), ("aes-cbc-essiv:sha256", 128),
                                       ("cast5-cbc-plain64", 128)])
def test_openssl_stays_first(text, bits):
    assert CipherSpec.parse(text, bits).check().backend == "openssl"


def test_qemu_spellings_for_serpent_and_twofish():
    for alg, bits in [("serpent-128", 256), ("serpent-192", 384), ("serpent-256", 512),
                      ("twofish-128", 256), ("twofish-192", 384), ("twofish-256", 512)]:
        spec = CipherSpec.from_qemu(alg, "xts").check()
        assert spec.key_bits == bits and spec.qemu_cipher_alg == alg
    spec = CipherSpec.from_qemu("twofish-256", "cbc", "essiv", "sha256").check()
    assert spec.cryptsetup_spec == "twofish-cbc-essiv:sha256" and spec.key_bits == 256


@pytest.mark.parametrize("text,bits", [("serpent-xts-plain64", 512), ("aes-lrw-plain64", 256)])
def test_without_libgcrypt_the_package_is_named(monkeypatch, text, bits):
    import sys
    from pyqcrypt import _native
    monkeypatch.setitem(sys.modules, "pyqcrypt._gcrypt_native", None)   # import fails
    monkeypatch.delattr(pyqcrypt, "_gcrypt_native", raising=False)
    monkeypatch.setattr(_native, "_MODULES", {})
    with pytest.raises(pyqcrypt.MissingDependency, match="libgcrypt20-dev"):
        CipherSpec.parse(text, bits).check()
    # OpenSSL's ciphers do not need it.
    CipherSpec.parse("aes-xts-plain64", 512).check()


def test_twofish_192_without_nettle_names_the_package(monkeypatch):
    # A build without nettle-dev has no 192-bit Twofish (libgcrypt has none):
    # its pyq_gc_ctx_new says PYQ_GC_ENOTSUP, here imitated over the real one.
    from pyqcrypt._native import have_gcrypt
    from pyqcrypt.crypto import cipherspec
    if not have_gcrypt():
        pytest.skip("pyqcrypt built without libgcrypt")
    ffi, lib = cipherspec.gcrypt()

    class WithoutNettle:
        def __getattr__(self, name):
            return getattr(lib, name)

        def pyq_gc_ctx_new(self, out, cipher, mode, key, keylen, ivmode, ivhash):
            single = keylen // 2 if mode == b"xts" else keylen - 16 if mode == b"lrw" else keylen
            if cipher == b"twofish" and single == 24:
                return lib.PYQ_GC_ENOTSUP
            return lib.pyq_gc_ctx_new(out, cipher, mode, key, keylen, ivmode, ivhash)

    monkeypatch.setattr(cipherspec, "gcrypt", lambda: (ffi, WithoutNettle()))
    for text, bits in [("twofish-xts-plain64", 384), ("twofish-cbc-essiv:sha256", 192),
                       ("twofish-lrw-plain64", 320)]:
        with pytest.raises(pyqcrypt.MissingDependency, match="192-bit key.*GNU Nettle.*nettle-dev"):
            CipherSpec.parse(text, bits).check()
    # 128- and 256-bit Twofish are libgcrypt's and do not need it.
    CipherSpec.parse("twofish-xts-plain64", 512).check()
    CipherSpec.parse("twofish-cbc-plain64", 128).check()


def test_essiv_hash_with_unusable_key_size():
    # sha1 gives a 160-bit ESSIV key, which AES cannot use.
    with pytest.raises(pyqcrypt.UnsupportedCipher, match="160-bit"):
        CipherSpec.parse("aes-cbc-essiv:sha1", 256).check()


def test_no_xts_for_cast5():
    with pytest.raises(pyqcrypt.UnsupportedCipher, match="no xts"):
        CipherSpec.parse("cast5-xts-plain64", 256).check()


def test_iv_codes_are_the_c_enum():
    """The IV generator codes are defined once, in sector_cipher.h; what
    the sector loop receives is the compiled module's value."""
    from pyqcrypt import _native
    _, lib = _native.crypto()
    specs = {"aes-ecb": lib.PYQ_IV_NONE, "aes-cbc-plain": lib.PYQ_IV_PLAIN,
             "aes-xts-plain64": lib.PYQ_IV_PLAIN64, "aes-cbc-plain64be": lib.PYQ_IV_PLAIN64BE,
             "aes-cbc-essiv:sha256": lib.PYQ_IV_ESSIV}
    assert len(set(specs.values())) == 5
    for text, code in specs.items():
        assert CipherSpec.parse(text).iv_mode == code


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80), st.integers(-5, 600))
def test_arbitrary_header_strings_never_crash(name, mode, key_bytes):
    """Cipher strings come from untrusted headers: errors only."""
    try:
        spec = CipherSpec.from_luks(name, mode, key_bytes)
        spec.check()
    except pyqcrypt.Error:
        pass
