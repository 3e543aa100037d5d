# SPDX-License-Identifier: LGPL-2.1-or-later
"""Access to the compiled cffi modules, with clear errors when one is missing.

``crypto()`` returns (ffi, lib) for the libcrypto module, ``cryptsetup()``
the same for the libcryptsetup module and ``zstd()`` for the libzstd module;
those two are optional at build time.
"""

from .errors import MissingDependency

_CRYPTO = None
_CRYPTSETUP = None
_ZSTD = None


def crypto():
    """The libcrypto binding; raises MissingDependency if it was not built."""
    global _CRYPTO
    if _CRYPTO is None:
        try:
            from . import _crypto_native as mod
        except ImportError as exc:  # pragma: no cover - broken install
            raise MissingDependency(
                "pyqcrypt's OpenSSL extension is not built (%s); install "
                "libssl-dev and reinstall pyqcrypt" % exc) from None
        if mod.lib.pyq_libctx() == mod.ffi.NULL:  # pragma: no cover
            raise MissingDependency("OpenSSL's default provider could not be loaded")
        _CRYPTO = (mod.ffi, mod.lib)
    return _CRYPTO


def cryptsetup():
    """The libcryptsetup binding; raises MissingDependency if absent."""
    global _CRYPTSETUP
    if _CRYPTSETUP is None:
        try:
            from . import _cryptsetup_native as mod
        except ImportError:
            raise MissingDependency(
                "this operation needs libcryptsetup, and pyqcrypt was built "
                "without it: install the Debian package libcryptsetup-dev, "
                "then reinstall pyqcrypt") from None
        _CRYPTSETUP = (mod.ffi, mod.lib)
    return _CRYPTSETUP


def have_cryptsetup():
    """True when the libcryptsetup binding is available."""
    try:
        cryptsetup()
    except MissingDependency:
        return False
    return True


def zstd():
    """The libzstd binding; raises MissingDependency if absent."""
    global _ZSTD
    if _ZSTD is None:
        try:
            from . import _zstd_native as mod
        except ImportError:
            raise MissingDependency(
                "this image's compressed clusters use zstd, and pyqcrypt was built "
                "without libzstd: install the Debian package libzstd-dev, then "
                "reinstall pyqcrypt") from None
        _ZSTD = (mod.ffi, mod.lib)
    return _ZSTD


def have_zstd():
    """True when the libzstd binding is available."""
    try:
        zstd()
    except MissingDependency:
        return False
    return True
