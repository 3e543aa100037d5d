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

import importlib
import os

from .errors import MissingDependency

_MODULES: dict = {}         # name -> (ffi, lib), once loaded


def _need_rebuild(module, package):
    return ("pyqcrypt's extension %s is not built; install %s and reinstall pyqcrypt"
            % (module, package))


def _optional(what, package):
    return ("%s, and pyqcrypt was built without it: install the Debian package %s, then "
            "reinstall pyqcrypt" % (what, package))


def _init_crypto(mod):
    if mod.lib.pyq_libctx() == mod.ffi.NULL:  # pragma: no cover
        raise MissingDependency("OpenSSL's default provider could not be loaded")
    if os.environ.get("PYQCRYPT_FORCE_EVP_FALLBACK") == "1":
        mod.lib.pyq_force_evp_fallback(1)


def _init_gcrypt(mod):
    if mod.lib.pyq_gc_init() != 0:  # pragma: no cover - libgcrypt too old
        raise MissingDependency("libgcrypt could not be initialised (1.8.0 or newer is needed); "
                                "install the Debian package libgcrypt20-dev")


# name -> (extension module, message when it cannot be imported, set-up)
_SPECS = {
    "crypto": ("_crypto_native", _need_rebuild("_crypto_native", "libssl-dev"), _init_crypto),
    "os": ("_os_native", _need_rebuild("_os_native", "a C compiler"), None),
    "qcow2": ("_qcow2_native", _need_rebuild("_qcow2_native", "a C compiler"), None),
    "cryptsetup": ("_cryptsetup_native",
                   _optional("this operation needs libcryptsetup", "libcryptsetup-dev"), None),
    "zstd": ("_zstd_native",
             _optional("this image's compressed clusters use zstd", "libzstd-dev"), None),
    "gcrypt": ("_gcrypt_native",
               _optional("this cipher needs libgcrypt (serpent, twofish, cast5 and LRW are not in "
                         "OpenSSL)", "libgcrypt20-dev"), _init_gcrypt),
}


def load(name):
    """(ffi, lib) of the module *name* (a key of _SPECS), loaded and set up
    once; MissingDependency, saying what to install, when it is absent."""
    mod = _MODULES.get(name)
    if mod is None:
        module, missing, setup = _SPECS[name]
        try:
            ext = importlib.import_module("." + module, __package__)
        except ImportError:
            raise MissingDependency(missing) from None
        if setup is not None:
            setup(ext)
        mod = _MODULES[name] = (ext.ffi, ext.lib)
    return mod


def available(name):
    """True when the module *name* loads."""
    try:
        load(name)
    except MissingDependency:
        return False
    return True


def crypto():
    """libcrypto, the sector loop, the AF splitter, key buffers."""
    return load("crypto")


def os_native():
    """OFD image locks and the kernel keyring."""
    return load("os")


def qcow2():
    """The qcow2 helpers (the L2 fill)."""
    return load("qcow2")


def cryptsetup():
    """The libcryptsetup binding (optional at build time)."""
    return load("cryptsetup")


def zstd():
    """The libzstd binding (optional at build time)."""
    return load("zstd")


def gcrypt():
    """libgcrypt's sector loop, initialised (optional at build time)."""
    return load("gcrypt")


def have_cryptsetup():
    return available("cryptsetup")


def have_zstd():
    return available("zstd")


def have_gcrypt():
    return available("gcrypt")
