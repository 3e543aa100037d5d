# SPDX-License-Identifier: LGPL-2.1-or-later
"""Cipher specifications in cryptsetup's and QEMU's spellings.

A ``CipherSpec`` is one block cipher, a chaining mode, an IV generator and a
key size.  It parses and prints cryptsetup's form (``aes-xts-plain64`` plus a
key size in bits; the LUKS header's separate cipher name and mode strings)
and QEMU's form (``cipher-alg=aes-256``, ``cipher-mode=xts``,
``ivgen-alg=plain64``, ``ivgen-hash-alg=sha256``), and picks the backend
that runs it: OpenSSL for everything OpenSSL has, libgcrypt (the optional
``_gcrypt_native`` module) for serpent, twofish, the LRW mode, the null and
benbi IV generators, and cast5 or ESSIV hashes where OpenSSL on this system
lacks them.  It says plainly when neither can.

Names read from disk are untrusted: every parse failure is an
``UnsupportedCipher`` (or ``Error``) with the offending name, never a crash.
"""

import re
from typing import TYPE_CHECKING, Optional

from .._native import crypto, gcrypt
from ..errors import Error, MissingDependency, UnsupportedCipher
from .openssl import fetch_cipher, fetch_digest, digest_size, openssl_version

if TYPE_CHECKING:       # checked as the dataclasses they behave as
    from dataclasses import dataclass
else:                   # no inspect/ast import at start-up (see _record)
    from .._record import dataclass

OPENSSL = "openssl"
GCRYPT = "libgcrypt"

# IV generator -> the name of its code in the C sector loop's enum
# pyq_iv_mode (pyqcrypt/_csrc/sector_cipher.h, the codes' only definition).
_IVGEN_CODES = {None: "PYQ_IV_NONE", "plain": "PYQ_IV_PLAIN", "plain64": "PYQ_IV_PLAIN64",
                "plain64be": "PYQ_IV_PLAIN64BE", "essiv": "PYQ_IV_ESSIV"}
# The same for libgcrypt's sector loop (pyqcrypt/_csrc/gcrypt_sector.h).
_GCRYPT_IVGEN_CODES = {None: "PYQ_GC_IV_NULL", "null": "PYQ_GC_IV_NULL",
                       "plain": "PYQ_GC_IV_PLAIN", "plain64": "PYQ_GC_IV_PLAIN64",
                       "plain64be": "PYQ_GC_IV_PLAIN64BE", "essiv": "PYQ_GC_IV_ESSIV",
                       "benbi": "PYQ_GC_IV_BENBI"}

# Block ciphers: LUKS name -> (OpenSSL name pattern, allowed single-key sizes
# in bytes, modes OpenSSL offers).  "{bits}" is the single-key size in bits.
_CIPHERS = {
    "aes": ("AES-{bits}-{MODE}", (16, 24, 32), ("xts", "cbc", "ecb", "ctr")),
    "camellia": ("CAMELLIA-{bits}-{MODE}", (16, 24, 32), ("cbc", "ecb", "ctr")),
    "sm4": ("SM4-{MODE}", (16,), ("xts", "cbc", "ecb", "ctr")),
    "cast5": ("CAST5-{MODE}", (16,), ("cbc", "ecb")),
    "des3_ede": ("DES-EDE3-{MODE}", (24,), ("cbc", "ecb")),
}
# XTS exists in OpenSSL for 128- and 256-bit single keys only.
_XTS_SINGLE_KEYS = (16, 32)
# Ciphers cryptsetup and QEMU know but OpenSSL does not implement.
_NOT_IN_OPENSSL = ("serpent", "twofish", "cast6", "blowfish", "anubis",
                   "khazad", "tnepres", "xtea", "tea", "aria")
# What libgcrypt (gcrypt_sector.c) runs: cipher -> (single-key sizes in
# bytes, modes).  Twofish-192 comes from GNU Nettle there (libgcrypt has
# none), when the module was built with it (nettle-dev).  LRW
# keys are the cipher key followed by a 16-byte tweak key (the kernel's
# lrw() layout).  cast6 is in neither library.
_GCRYPT_CIPHERS = {
    "serpent": ((16, 24, 32), ("xts", "cbc", "ecb", "lrw")),
    "twofish": ((16, 24, 32), ("xts", "cbc", "ecb", "lrw")),
    "aes": ((16, 24, 32), ("xts", "cbc", "ecb", "lrw")),
    "cast5": ((16,), ("cbc", "ecb")),
}
# Served only by libgcrypt, whatever the cipher.
_GCRYPT_ONLY_MODES = ("lrw",)
_GCRYPT_ONLY_IVGENS = ("null", "benbi")
_LRW_TWEAK_KEY = 16
_MODES = ("xts", "cbc", "ecb", "ctr", "lrw")
_KNOWN_OTHER_MODES = ("pcbc", "cfb", "ofb", "gcm", "ccm", "adiantum",
                      "hctr2", "essiv", "cts")
_KNOWN_OTHER_IVGENS = ("lmk", "tcw", "random", "eboiv", "elephant")

# QEMU's cipher-alg names.
_QEMU_ALGS = {
    "aes-128": ("aes", 16), "aes-192": ("aes", 24), "aes-256": ("aes", 32),
    "cast5-128": ("cast5", 16), "3des": ("des3_ede", 24), "sm4": ("sm4", 16),
    "serpent-128": ("serpent", 16), "serpent-192": ("serpent", 24),
    "serpent-256": ("serpent", 32), "twofish-128": ("twofish", 16),
    "twofish-192": ("twofish", 24), "twofish-256": ("twofish", 32),
}

# Linux kernel hash names OpenSSL lacks: truncated whirlpool (essiv:wp256
# appears in cryptsetup's own LUKS1 test images).
_TRUNCATED_HASHES = {"wp256": ("whirlpool", 32), "wp384": ("whirlpool", 48),
                     "wp512": ("whirlpool", 64)}

_NAME_RE = re.compile(r"^[a-z0-9_]{1,31}$")


def _default_key_bytes(cipher, mode):
    single = _CIPHERS.get(cipher, (None, (32,), ()))[1]
    base = 32 if 32 in single else single[-1]
    if mode == "lrw":
        # cryptsetup's default 256 bits: a 128-bit cipher key + the tweak key.
        return 16 + _LRW_TWEAK_KEY
    return base * (2 if mode == "xts" else 1)


@dataclass(frozen=True)
class CipherSpec:
    """cipher + mode + IV generator + total key size (XTS keys count twice)."""

    cipher: str
    mode: str
    ivgen: Optional[str]
    key_bytes: int
    ivgen_hash: Optional[str] = None   # essiv's hash (or QEMU's spare hash)

    # ---- parsing ---------------------------------------------------------
    @classmethod
    def parse(cls, spec, key_bits=None):
        """cryptsetup form: ``aes-xts-plain64``, ``aes-cbc-essiv:sha256``,
        ``aes-ecb``; *key_bits* defaults as cryptsetup's (512 for xts)."""
        if not isinstance(spec, str) or not 0 < len(spec) <= 64:
            raise Error("bad cipher specification %r" % (spec,))
        parts = spec.strip().lower().split("-", 2)
        if len(parts) < 2:
            raise Error("cipher specification %r needs the form "
                        "CIPHER-MODE[-IVGEN], e.g. aes-xts-plain64" % spec)
        mode = "-".join(parts[1:])
        if key_bits is not None:
            if not isinstance(key_bits, int) or key_bits <= 0 or key_bits % 8:
                raise Error("key size must be a positive multiple of 8 bits, "
                            "not %r" % (key_bits,))
            key_bytes = key_bits // 8
        else:
            key_bytes = None
        return cls.from_luks(parts[0], mode, key_bytes)

    @classmethod
    def from_luks(cls, cipher_name, cipher_mode, key_bytes=None):
        """The LUKS header's cipher-name and cipher-mode strings."""
        cipher = str(cipher_name).strip().lower()
        modestr = str(cipher_mode).strip().lower()
        if not _NAME_RE.match(cipher):
            raise UnsupportedCipher("unknown cipher %r" % (cipher_name,))
        mode, _, ivpart = modestr.partition("-")
        if not _NAME_RE.match(mode or "?"):
            raise UnsupportedCipher("unknown cipher mode %r" % (cipher_mode,))
        ivgen, _, ivhash = ivpart.partition(":")
        ivgen = ivgen or None
        ivhash = ivhash or None
        if mode in _KNOWN_OTHER_MODES:
            raise UnsupportedCipher("cipher mode %r is not supported (pyqcrypt "
                                    "supports xts, cbc, ecb, ctr and lrw)" % mode)
        if mode not in _MODES:
            raise UnsupportedCipher("unknown cipher mode %r" % (cipher_mode,))
        if mode == "ecb":
            # ECB takes no IV; tolerate a generator name some writers append.
            ivgen, ivhash = None, None
        elif ivgen is None:
            raise UnsupportedCipher("cipher mode %r needs an IV generator, e.g. "
                                    "%s-plain64" % (cipher_mode, mode))
        elif ivgen in _KNOWN_OTHER_IVGENS:
            raise UnsupportedCipher("IV generator %r is not supported (pyqcrypt "
                                    "supports plain, plain64, plain64be, essiv, "
                                    "benbi and null)" % ivgen)
        elif ivgen not in _GCRYPT_IVGEN_CODES:
            raise UnsupportedCipher("unknown IV generator %r" % (ivgen,))
        if ivgen == "essiv" and ivhash is None:
            raise UnsupportedCipher("the essiv IV generator needs a hash, e.g. "
                                    "essiv:sha256")
        if ivhash is not None and not _NAME_RE.match(ivhash):
            raise UnsupportedCipher("unknown hash %r" % (ivhash,))
        if key_bytes is None:
            key_bytes = _default_key_bytes(cipher, mode)
        spec = cls(cipher, mode, ivgen, int(key_bytes), ivhash)
        spec._check_sizes()
        return spec

    @classmethod
    def from_qemu(cls, cipher_alg="aes-256", cipher_mode="xts",
                  ivgen_alg="plain64", ivgen_hash_alg=None):
        """QEMU's option values (defaults are QEMU's LUKS defaults)."""
        alg = str(cipher_alg).lower()
        if alg not in _QEMU_ALGS:
            raise UnsupportedCipher("unknown cipher-alg %r (QEMU names: %s)"
                                    % (cipher_alg, ", ".join(sorted(_QEMU_ALGS))))
        cipher, single = _QEMU_ALGS[alg]
        mode = str(cipher_mode).lower()
        if mode not in _MODES:
            raise UnsupportedCipher("unknown cipher-mode %r" % (cipher_mode,))
        ivgen = None if mode == "ecb" else str(ivgen_alg).lower()
        if ivgen is not None and ivgen not in ("plain", "plain64", "essiv"):
            raise UnsupportedCipher("unknown ivgen-alg %r" % (ivgen_alg,))
        ivhash = None
        if ivgen == "essiv":
            ivhash = str(ivgen_hash_alg or "sha256").lower()
        spec = cls(cipher, mode, ivgen, single * (2 if mode == "xts" else 1), ivhash)
        spec._check_sizes()
        return spec

    def _check_sizes(self):
        if self.key_bytes <= 0 or self.key_bytes > 256:
            raise UnsupportedCipher("key size of %d bits is out of range"
                                    % (self.key_bytes * 8))
        if self.mode == "xts" and self.key_bytes % 2:
            raise UnsupportedCipher("xts needs an even key size, not %d bits"
                                    % (self.key_bytes * 8))
        if self.mode == "lrw" and self.key_bytes <= _LRW_TWEAK_KEY:
            raise UnsupportedCipher("lrw needs the cipher key plus a 128-bit tweak "
                                    "key, not %d bits" % (self.key_bytes * 8))
        allowed = None
        if self.cipher in _GCRYPT_CIPHERS and (
                self.cipher not in _CIPHERS or self.mode in _GCRYPT_ONLY_MODES):
            allowed = _GCRYPT_CIPHERS[self.cipher][0]
            if self.mode not in _GCRYPT_CIPHERS[self.cipher][1]:
                raise UnsupportedCipher("%s has no %s mode in pyqcrypt (modes: %s)"
                                        % (self.cipher, self.mode,
                                           ", ".join(_GCRYPT_CIPHERS[self.cipher][1])))
        elif self.cipher in _CIPHERS:
            allowed = _CIPHERS[self.cipher][1]
            if self.mode == "xts":
                allowed = tuple(k for k in allowed if k in _XTS_SINGLE_KEYS)
        if allowed is not None:
            if self.single_key_bytes not in allowed:
                extra = _LRW_TWEAK_KEY if self.mode == "lrw" else 0
                sizes = ", ".join(str(8 * (k * (2 if self.mode == "xts" else 1) + extra))
                                  for k in allowed)
                raise UnsupportedCipher(
                    "%s-%s cannot use a %d-bit key (possible: %s bits)"
                    % (self.cipher, self.mode, self.key_bytes * 8, sizes))

    # ---- printing --------------------------------------------------------
    @property
    def single_key_bytes(self):
        if self.mode == "lrw":
            return self.key_bytes - _LRW_TWEAK_KEY
        return self.key_bytes // 2 if self.mode == "xts" else self.key_bytes

    @property
    def key_bits(self):
        return self.key_bytes * 8

    @property
    def luks_name(self):
        return self.cipher

    @property
    def luks_mode(self):
        """The canonical cipher-mode string pyqcrypt writes."""
        if self.ivgen is None:
            return self.mode
        if self.ivgen == "essiv":
            return "%s-essiv:%s" % (self.mode, self.ivgen_hash)
        return "%s-%s" % (self.mode, self.ivgen)

    @property
    def cryptsetup_spec(self):
        return "%s-%s" % (self.cipher, self.luks_mode)

    def __str__(self):
        return "%s (%d-bit key)" % (self.cryptsetup_spec, self.key_bits)

    @property
    def qemu_cipher_alg(self):
        for name, (cipher, single) in _QEMU_ALGS.items():
            if cipher == self.cipher and single == self.single_key_bytes:
                return name
        return None

    def qemu_options(self):
        """QEMU's option names and values for this spec (None where QEMU has
        no name for it)."""
        opts = {"cipher-alg": self.qemu_cipher_alg, "cipher-mode": self.mode,
                "ivgen-alg": self.ivgen or "plain64"}
        if self.ivgen == "essiv":
            opts["ivgen-hash-alg"] = self.ivgen_hash
        return opts

    # ---- which backend runs it ------------------------------------------
    @property
    def backend(self):
        """OPENSSL or GCRYPT: OpenSSL for everything it has, libgcrypt for
        the rest (the module may still be missing: check() says so)."""
        if (self.cipher not in _CIPHERS or self.mode in _GCRYPT_ONLY_MODES
                or self.ivgen in _GCRYPT_ONLY_IVGENS):
            return GCRYPT
        if self.mode not in _CIPHERS[self.cipher][2]:
            return GCRYPT
        if fetch_cipher(self.openssl_name) is None:
            return GCRYPT                  # e.g. cast5 without the legacy provider
        if self.ivgen == "essiv":
            try:
                self.essiv_hash()
            except UnsupportedCipher:
                return GCRYPT              # a hash OpenSSL lacks here
        return OPENSSL

    @property
    def gcrypt_iv_mode(self):
        """libgcrypt sector loop's code for this IV generator."""
        return getattr(gcrypt()[1], _GCRYPT_IVGEN_CODES[self.ivgen])

    def check_gcrypt(self):
        """Raise unless libgcrypt can run this spec: MissingDependency
        (naming libgcrypt20-dev) without the module, UnsupportedCipher when
        the cipher, mode, key size or ESSIV hash is not there.  A context is
        keyed with a zero key and dropped."""
        if self.cipher in _CIPHERS and (self.cipher not in _GCRYPT_CIPHERS or self.mode
                                        not in _GCRYPT_CIPHERS[self.cipher][1]):
            self.evp_cipher()          # OpenSSL's own words for what it lacks
        if self.cipher not in _GCRYPT_CIPHERS:
            known = "" if self.cipher in _NOT_IN_OPENSSL else "unknown "
            raise UnsupportedCipher(
                "%scipher %r is not available: neither %s nor libgcrypt implements "
                "it; pyqcrypt supports %s" % (
                    known, self.cipher, openssl_version(),
                    ", ".join(sorted(set(_CIPHERS) | set(_GCRYPT_CIPHERS)))))
        if self.mode not in _GCRYPT_CIPHERS[self.cipher][1]:
            raise UnsupportedCipher("%s has no %s mode in pyqcrypt" % (self.cipher, self.mode))
        ffi, lib = gcrypt()
        out = ffi.new("pyq_gc_ctx **")
        hash_name = self.ivgen_hash.encode() if self.ivgen == "essiv" else ffi.NULL
        rc = lib.pyq_gc_ctx_new(out, self.cipher.encode(), self.mode.encode(),
                                bytes(self.key_bytes), self.key_bytes,
                                self.gcrypt_iv_mode, hash_name)
        if rc != 0:
            if (self.cipher == "twofish" and self.single_key_bytes == 24
                    and not _gcrypt_has_twofish192(ffi, lib)):
                raise MissingDependency(
                    "%s with a %d-bit key needs Twofish with a 192-bit key, which libgcrypt "
                    "lacks and pyqcrypt takes from GNU Nettle, and pyqcrypt was built without "
                    "Nettle: install the Debian package nettle-dev, then reinstall pyqcrypt"
                    % (self.cryptsetup_spec, self.key_bits))
            raise UnsupportedCipher("libgcrypt cannot run %s with a %d-bit key: %s" % (
                self.cryptsetup_spec, self.key_bits,
                ffi.string(lib.pyq_gc_strerror(rc)).decode()))
        lib.pyq_gc_ctx_free(out[0])
        return self

    # ---- what OpenSSL runs ----------------------------------------------------
    @property
    def iv_mode(self):
        """The C sector loop's code for this IV generator, read from the
        compiled module."""
        return getattr(crypto()[1], _IVGEN_CODES[self.ivgen])

    @property
    def openssl_name(self):
        entry = _CIPHERS.get(self.cipher)
        if entry is None:
            return None
        return entry[0].format(bits=self.single_key_bytes * 8, MODE=self.mode.upper())

    def evp_cipher(self):
        """The EVP_CIPHER, or UnsupportedCipher naming what is missing."""
        if self.cipher in _NOT_IN_OPENSSL or self.cipher not in _CIPHERS:
            known = "" if self.cipher in _NOT_IN_OPENSSL else "unknown "
            raise UnsupportedCipher(
                "%scipher %r is not available: %s does not implement it "
                "(cryptsetup reaches it through the kernel's crypto API); "
                "pyqcrypt supports %s" % (known, self.cipher, openssl_version(),
                                          ", ".join(sorted(_CIPHERS))))
        if self.mode not in _CIPHERS[self.cipher][2]:
            raise UnsupportedCipher("%s has no %s mode in OpenSSL"
                                    % (self.cipher, self.mode))
        evp = fetch_cipher(self.openssl_name)
        if evp is None:
            raise UnsupportedCipher(
                "cipher %s (%s) is not provided by %s on this system"
                % (self.cryptsetup_spec, self.openssl_name, openssl_version()))
        return evp

    def essiv_hash(self):
        """(OpenSSL digest name, bytes of it used) for the ESSIV salt."""
        name = self.ivgen_hash
        if name in _TRUNCATED_HASHES:
            return _TRUNCATED_HASHES[name]
        return name, digest_size(name)

    def essiv_openssl_name(self):
        """The single-block cipher ESSIV encrypts sector numbers with."""
        dsize = self.essiv_hash()[1]
        entry = _CIPHERS.get(self.cipher)
        if entry is None or dsize not in entry[1]:
            raise UnsupportedCipher(
                "essiv:%s makes a %d-bit key, which %s cannot use"
                % (self.ivgen_hash, dsize * 8, self.cipher))
        return entry[0].format(bits=dsize * 8, MODE="ECB")

    def check(self):
        """Raise UnsupportedCipher unless OpenSSL or libgcrypt can run this
        spec here (MissingDependency when only libgcrypt could and pyqcrypt
        was built without it)."""
        if self.backend == GCRYPT:
            return self.check_gcrypt()
        self.evp_cipher()
        if self.ivgen == "essiv":
            fetch_digest(self.essiv_hash()[0])
            if fetch_cipher(self.essiv_openssl_name()) is None:
                raise UnsupportedCipher("essiv cipher %s is not provided by "
                                        "OpenSSL" % self.essiv_openssl_name())
        return self


def _gcrypt_has_twofish192(ffi, lib):
    """True when the libgcrypt module runs Twofish with a 192-bit key
    (GNU Nettle's, linked in when the build found nettle-dev)."""
    out = ffi.new("pyq_gc_ctx **")
    rc = lib.pyq_gc_ctx_new(out, b"twofish", b"ecb", bytes(24), 24, lib.PYQ_GC_IV_NULL, ffi.NULL)
    if rc == 0:
        lib.pyq_gc_ctx_free(out[0])
    return rc == 0


def check_hash(name):
    """Validate a LUKS hash-spec name; returns it lower-cased."""
    if not isinstance(name, str) or not _NAME_RE.match(name.lower()):
        raise UnsupportedCipher("unknown hash %r" % (name,))
    fetch_digest(name.lower())
    return name.lower()
