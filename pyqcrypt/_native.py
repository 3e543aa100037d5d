# SPDX-License-Identifier: LGPL-2.1-or-later
"""Access to the compiled cffi modules, with clear errors when one is missing.

Each accessor returns (ffi, lib) for one module (build_ffi.py says what each
holds; their C is in ``pyqcrypt/_csrc/``):

* ``crypto()``: libcrypto, the sector cipher, the AF splitter, key buffers;
* ``os_native()``: OFD image locks and the kernel keyring;
* ``qcow2()``: qcow2 metadata helpers (the L2 fill);
* ``cryptsetup()``: libcryptsetup, optional at build time;
* ``zstd()``: libzstd, optional at build time;
* ``gcrypt()``: libgcrypt's sector loop (serpent, twofish, cast5, LRW),
  optional at build time.

``PYQCRYPT_FORCE_EVP_FALLBACK=1`` in the environment, read when the crypto
module is first loaded, sends every sector cipher through the EVP path of
the C sector loop instead of calling the provider directly: slower, for
testing that path (``pyq_force_evp_fallback`` does the same at run time).
"""

import os

from .errors import MissingDependency

_MODULES: dict = {}


def _broken_install(name, exc):
    return MissingDependency(
        "pyqcrypt's extension %s is not built (%s); install libssl-dev and "
        "reinstall pyqcrypt" % (name, exc))


def crypto():
    """The libcrypto binding; raises MissingDependency if it was not built."""
    mod = _MODULES.get("crypto")
    if mod is None:
        try:
            from . import _crypto_native as mod
        except ImportError as exc:  # pragma: no cover - broken install
            raise _broken_install("_crypto_native", exc) from None
        if mod.lib.pyq_libctx() == mod.ffi.NULL:  # pragma: no cover
            raise MissingDependency("OpenSSL's default provider could not be loaded")
        if os.environ.get("PYQCRYPT_FORCE_EVP_FALLBACK") == "1":
            mod.lib.pyq_force_evp_fallback(1)
        mod = _MODULES["crypto"] = (mod.ffi, mod.lib)
    return mod


def os_native():
    """The OS binding (OFD locks, keyctl); MissingDependency if not built."""
    mod = _MODULES.get("os")
    if mod is None:
        try:
            from . import _os_native as mod
        except ImportError as exc:  # pragma: no cover - broken install
            raise _broken_install("_os_native", exc) from None
        mod = _MODULES["os"] = (mod.ffi, mod.lib)
    return mod


def qcow2():
    """The qcow2 helpers (L2 fill); MissingDependency if not built."""
    mod = _MODULES.get("qcow2")
    if mod is None:
        try:
            from . import _qcow2_native as mod
        except ImportError as exc:  # pragma: no cover - broken install
            raise _broken_install("_qcow2_native", exc) from None
        mod = _MODULES["qcow2"] = (mod.ffi, mod.lib)
    return mod


def cryptsetup():
    """The libcryptsetup binding; raises MissingDependency if absent."""
    mod = _MODULES.get("cryptsetup")
    if mod is None:
        try:
            from . import _cryptsetup_native as mod
        except ImportError:
            raise MissingDependency(
                "this operation needs libcryptsetup, and pyqcrypt was built "
                "without it: install the Debian package libcryptsetup-dev, "
                "then reinstall pyqcrypt") from None
        mod = _MODULES["cryptsetup"] = (mod.ffi, mod.lib)
    return mod


def have_cryptsetup():
    """True when the libcryptsetup binding is available."""
    try:
        cryptsetup()
    except MissingDependency:
        return False
    return True


def zstd():
    """The libzstd binding; raises MissingDependency if absent."""
    mod = _MODULES.get("zstd")
    if mod is None:
        try:
            from . import _zstd_native as mod
        except ImportError:
            raise MissingDependency(
                "this image's compressed clusters use zstd, and pyqcrypt was built "
                "without libzstd: install the Debian package libzstd-dev, then "
                "reinstall pyqcrypt") from None
        mod = _MODULES["zstd"] = (mod.ffi, mod.lib)
    return mod


def have_zstd():
    """True when the libzstd binding is available."""
    try:
        zstd()
    except MissingDependency:
        return False
    return True


def gcrypt():
    """The libgcrypt binding (initialised); raises MissingDependency if absent."""
    mod = _MODULES.get("gcrypt")
    if mod is None:
        try:
            from . import _gcrypt_native as mod
        except ImportError:
            raise MissingDependency(
                "this cipher needs libgcrypt (serpent, twofish, cast5 and LRW are "
                "not in OpenSSL), and pyqcrypt was built without it: install the "
                "Debian package libgcrypt20-dev, then reinstall pyqcrypt") from None
        if mod.lib.pyq_gc_init() != 0:  # pragma: no cover - libgcrypt too old
            raise MissingDependency(
                "libgcrypt could not be initialised (1.8.0 or newer is needed); "
                "install the Debian package libgcrypt20-dev")
        mod = _MODULES["gcrypt"] = (mod.ffi, mod.lib)
    return mod


def have_gcrypt():
    """True when the libgcrypt binding is available."""
    try:
        gcrypt()
    except MissingDependency:
        return False
    return True
