# SPDX-License-Identifier: LGPL-2.1-or-later
"""Which libraries pyqcrypt runs on here, and which release of each.

``backend_versions()`` gives one ``Backend`` record per library behind a
native module (OpenSSL's libcrypto, libcryptsetup, libgcrypt, GNU Nettle,
libzstd): its version, whether its module is built and loads, the library
file the process mapped, and otherwise why not.  ``pyqcrypt --version``
and ``pyqcrypt selftest`` print them.

Every version is the one the *loaded* library states, never a package
database's: OpenSSL_version(), gcry_check_version(), Nettle's
nettle_version_major/minor (major.minor only: Nettle has no call for the
patch level), ZSTD_versionNumber().  libcryptsetup 2.6 has no version call;
it states its release in a debug-log line the first time it sets up its
crypto backend in a process, which ``pyq_cs_version_line`` catches.  When
that set-up already happened before (a process that used libcryptsetup
first), the version is None and the detail says so; the library file's
name (``libcryptsetup.so.12.9.0``) is a libtool interface number, not the
release, and is shown as the file, never as the version.

Loading the modules costs a few milliseconds, so only the commands that
print versions call this.
"""

import os
import platform
import re
from typing import Dict, List, NamedTuple, Optional

from . import _native
from .errors import MissingDependency


class Backend(NamedTuple):
    """One library pyqcrypt can use."""
    key: str                    # stable name: "openssl", "libcryptsetup", ...
    name: str                   # as people write it: "OpenSSL", "Nettle", ...
    module: str                 # the native module holding it: "_crypto_native", ...
    version: Optional[str]      # as the loaded library states it; None when unknown
    built: bool                 # the module is built and loads
    library: Optional[str]      # the shared library file this process mapped
    detail: str                 # why not built, or how the version was learnt

    def as_dict(self) -> Dict[str, object]:
        return {"version": self.version, "built": self.built, "module": self.module,
                "library": self.library, "detail": self.detail}


_CS_VERSION = re.compile(r"Crypto backend \((.*)\) initialized in cryptsetup library version (\S+?)\.?\s*$")
_cryptsetup_line: Optional[str] = None          # libcryptsetup says it once per process: kept


def _mapped_libraries() -> List[str]:
    """The shared library files this process has mapped (/proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            return sorted({line.split(None, 5)[5].strip() for line in fh
                           if len(line.split(None, 5)) == 6 and ".so" in line})
    except OSError:
        return []


def _library(prefix: str) -> Optional[str]:
    """The mapped library whose file name starts with *prefix* + ".so"."""
    for path in _mapped_libraries():
        if os.path.basename(path).startswith(prefix + ".so"):
            return path
    return None


def _load(name: str):
    """(ffi, lib) of native module *name*, or the MissingDependency text."""
    try:
        return _native.load(name), ""
    except MissingDependency as exc:
        return None, str(exc)


def _openssl() -> Backend:
    mod, why = _load("crypto")
    if mod is None:
        return Backend("openssl", "OpenSSL", "_crypto_native", None, False, None, why)
    ffi, lib = mod
    text = ffi.string(lib.OpenSSL_version(0)).decode(errors="replace")
    words = text.split()
    version = words[1] if len(words) > 1 else None
    return Backend("openssl", "OpenSSL", "_crypto_native", version, True, _library("libcrypto"),
                   "OpenSSL_version(): %s" % text)


def _cryptsetup_version_line(ffi, lib) -> Optional[str]:
    global _cryptsetup_line
    if _cryptsetup_line is None:
        try:
            fd = os.memfd_create("pyqcrypt-version-probe")
        except (AttributeError, OSError):
            return None
        try:
            os.ftruncate(fd, 4096)              # zeros: no LUKS header, nothing is written
            buf = ffi.new("char[]", 512)
            if lib.pyq_cs_version_line(("/proc/self/fd/%d" % fd).encode(), buf, len(buf)) == 1:
                _cryptsetup_line = ffi.string(buf).decode(errors="replace").strip()
        finally:
            os.close(fd)
    return _cryptsetup_line


def _cryptsetup() -> Backend:
    mod, why = _load("cryptsetup")
    if mod is None:
        return Backend("libcryptsetup", "libcryptsetup", "_cryptsetup_native", None, False, None, why)
    line = _cryptsetup_version_line(*mod)
    found = _CS_VERSION.search(line or "")
    if found:
        version, detail = found.group(2), "its debug log: crypto backend %s" % found.group(1)
    else:
        version, detail = None, ("it did not state its version (it states it once per process, "
                                 "when it first sets up its crypto backend)")
    return Backend("libcryptsetup", "libcryptsetup", "_cryptsetup_native", version, True,
                   _library("libcryptsetup"), detail)


def _gcrypt_and_nettle() -> List[Backend]:
    mod, why = _load("gcrypt")
    if mod is None:
        return [Backend("libgcrypt", "libgcrypt", "_gcrypt_native", None, False, None, why),
                Backend("nettle", "Nettle", "_gcrypt_native", None, False, None,
                        "linked into _gcrypt_native, which is not built")]
    ffi, lib = mod
    ptr = lib.pyq_gc_version()
    gcrypt = Backend("libgcrypt", "libgcrypt", "_gcrypt_native",
                     ffi.string(ptr).decode() if ptr != ffi.NULL else None, True, _library("libgcrypt"),
                     "gcry_check_version()")
    number = lib.pyq_gc_nettle_version()
    if number < 0:
        nettle = Backend("nettle", "Nettle", "_gcrypt_native", None, False, None,
                         "_gcrypt_native was built without GNU Nettle (Debian package nettle-dev): "
                         "no 192-bit Twofish")
    else:
        nettle = Backend("nettle", "Nettle", "_gcrypt_native", "%d.%d" % divmod(number, 1000), True,
                         _library("libnettle"),
                         "nettle_version_major/minor(); linked into _gcrypt_native for 192-bit Twofish")
    return [gcrypt, nettle]


def _zstd() -> Backend:
    mod, why = _load("zstd")
    if mod is None:
        return Backend("libzstd", "libzstd", "_zstd_native", None, False, None, why)
    number = mod[1].ZSTD_versionNumber()
    version = "%d.%d.%d" % (number // 10000, number // 100 % 100, number % 100)
    return Backend("libzstd", "libzstd", "_zstd_native", version, True, _library("libzstd"),
                   "ZSTD_versionNumber()")


def backend_versions() -> List[Backend]:
    """Every backend, in a fixed order: OpenSSL, libcryptsetup, libgcrypt,
    Nettle, libzstd.  Never raises for a missing or broken module: that is
    what the records report."""
    return [_openssl(), _cryptsetup()] + _gcrypt_and_nettle() + [_zstd()]


def python_version() -> str:
    return platform.python_version()


def version_lines(pyqcrypt_version: str) -> List[str]:
    """``pyqcrypt --version``'s text: the pyqcrypt line first (scripts read
    it), then Python and one line per backend."""
    lines = ["pyqcrypt %s" % pyqcrypt_version,
             "Python %s (%s)" % (python_version(), platform.python_implementation())]
    for b in backend_versions():
        if not b.built:
            lines.append("%s: not built (%s)" % (b.name, b.detail))
            continue
        lines.append("%s %s (%s built; %s; %s)" % (b.name, b.version or "version unknown", b.module,
                                                   b.library or "library file not found", b.detail))
    return lines


def version_document(pyqcrypt_version: str) -> Dict[str, object]:
    """``pyqcrypt --version --output json``'s document."""
    return {"pyqcrypt": pyqcrypt_version, "python": python_version(),
            "backends": {b.key: b.as_dict() for b in backend_versions()}}


def summary(records: Optional[List[Backend]] = None) -> str:
    """One line naming every backend (of *records*, default all) with its
    version, for selftest's header."""
    parts = []
    for b in backend_versions() if records is None else records:
        parts.append("%s %s" % (b.name, b.version or "(version unknown)") if b.built
                     else "%s not built" % b.name)
    return ", ".join(parts)
