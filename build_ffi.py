# SPDX-License-Identifier: LGPL-2.1-or-later
"""cffi build scripts for pyqcrypt's native layer (API mode, out-of-line).

Six extension modules are built, each named after what it holds:

* ``pyqcrypt._crypto_native`` binds OpenSSL's libcrypto (EVP ciphers and
  digests, the PBKDF2 KDF, the DRBG, OPENSSL_cleanse, the error queue) and
  carries the small C routines whose speed or secrecy matters: the sector
  loop that encrypts a run of sectors with a per-sector IV while only the IV
  changes between sectors, the LUKS anti-forensic splitter, and page-locked
  key buffers.  All algorithms are fetched from a private OpenSSL library
  context holding the ``default`` and (when present) ``legacy`` providers, so
  the process's global OpenSSL configuration is never changed.
* ``pyqcrypt._os_native`` wraps the Linux system calls Python's standard
  library lacks: open file description (OFD) byte locks, QEMU's image
  locks, and reading a key from the kernel keyring.  No library behind it.
* ``pyqcrypt._qcow2_native`` fills qcow2 L2 tables for an adopted raw data
  file (millions of entries for a large image).  No library behind it.
* ``pyqcrypt._cryptsetup_native`` binds the part of libcryptsetup pyqcrypt
  uses.  It is built only when pkg-config finds libcryptsetup.
* ``pyqcrypt._zstd_native`` binds libzstd's one-shot frame decoder, with a
  small C loop that decodes a qcow2 compressed cluster (QEMU's framing).
  It is built only when pkg-config finds libzstd.
* ``pyqcrypt._gcrypt_native`` binds libgcrypt through a sector loop of its
  own (``gcrypt_sector.c``): serpent, twofish, cast5 and the LRW mode, which
  OpenSSL lacks, plus GNU Nettle's Twofish for 192-bit keys (libgcrypt has
  only 128/256-bit Twofish).  It is built only when pkg-config (or
  libgcrypt-config) finds libgcrypt; Nettle is linked into it when
  pkg-config finds nettle (Debian: nettle-dev), and without it the module
  still builds and says at run time that 192-bit Twofish is not there.

No C lives in this file.  pyqcrypt's own C is in ``pyqcrypt/_csrc/*.c``
(one file per purpose, each with a header saying what it holds), compiled as
ordinary translation units next to cffi's generated wrapper, so compiler
messages name the real file and line.  The declarations cffi binds are in
``pyqcrypt/_csrc/cdefs/``: ``lib*.h`` for what the libraries provide,
``pyq_*.h`` for pyqcrypt's own routines.  The wrapper's C source is a single
``#include`` of ``pyqcrypt/_csrc/<module>.h``.

Compiler and linker flags come from pkg-config; nothing is downloaded.
"""

import functools
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "pyqcrypt", "_csrc")
if __name__ == "__main__":
    # Run as a script (a build without setuptools): work from the project's
    # root, as setuptools does, so _csrc() gives relative paths and object
    # files stay under the build directory.
    os.chdir(HERE)


def _pkg_config(package):
    """Return (cflags, libs) lists for a pkg-config package, or None."""
    if shutil.which("pkg-config") is None:
        return None
    try:
        cflags = subprocess.run(["pkg-config", "--cflags", package], check=True,
                                capture_output=True, text=True).stdout
        libs = subprocess.run(["pkg-config", "--libs", package], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(cflags), shlex.split(libs)


# The libraries the modules link: the header a build includes from each, and
# the development package that holds both on Debian and on Fedora.  libcrypto
# is required; the others make optional modules (nettle is linked into the
# libgcrypt one).
LIBRARIES = {
    "libcrypto": ("openssl/evp.h", "libssl-dev", "openssl-devel"),
    "libcryptsetup": ("libcryptsetup.h", "libcryptsetup-dev", "cryptsetup-devel"),
    "libgcrypt": ("gcrypt.h", "libgcrypt20-dev", "libgcrypt-devel"),
    "libzstd": ("zstd.h", "libzstd-dev", "libzstd-devel"),
    "nettle": ("nettle/twofish.h", "nettle-dev", "nettle-devel"),
}


def install_hint():
    """One line naming every build dependency, for Debian and for Fedora."""
    return ("install the build dependencies: Debian/Ubuntu: apt install pkg-config %s; "
            "Fedora/RHEL: dnf install pkgconf-pkg-config %s"
            % (" ".join(v[1] for v in LIBRARIES.values()), " ".join(v[2] for v in LIBRARIES.values())))


def packages_for(name):
    """'Debian: X, Fedora: Y' for one library of LIBRARIES."""
    return "Debian: %s, Fedora: %s" % LIBRARIES[name][1:]


def header_compiles(header, cflags):
    """True when the C compiler finds *header* with *cflags* (and the
    environment's CPPFLAGS and CFLAGS); a compiler that cannot run at all
    is the build's to report, so that counts as found."""
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    extra = shlex.split(os.environ.get("CPPFLAGS", "")) + shlex.split(os.environ.get("CFLAGS", ""))
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.c")
        with open(probe, "w", encoding="ascii") as fh:
            fh.write("#include <%s>\n" % header)
        try:
            proc = subprocess.run(compiler + extra + list(cflags) + ["-fsyntax-only", probe],
                                  capture_output=True, cwd=tmp)
        except OSError:
            return True
    return proc.returncode == 0


@functools.lru_cache(maxsize=None)
def library_found(name):
    """True when a build can use library *name* of LIBRARIES: its header
    compiles, with the flags pkg-config (or libgcrypt-config) gives.  The
    optional libraries must be known to pkg-config; libcrypto is also
    accepted without it when its header is on the compiler's own path."""
    found = _pkg_config(name)
    if found is None and name == "libgcrypt":
        found = _libgcrypt_config()
    if found is None and name != "libcrypto":
        return False
    return header_compiles(LIBRARIES[name][0], found[0] if found else [])


def require_libcrypto():
    """Stop the build, naming the packages to install, when OpenSSL's
    headers are missing (every build needs them): better than the
    compiler's error halfway through."""
    if not library_found("libcrypto"):
        raise SystemExit("pyqcrypt build: error: OpenSSL's libcrypto development files are missing "
                         "(%s does not compile; %s); %s"
                         % (LIBRARIES["libcrypto"][0], packages_for("libcrypto"), install_hint()))


def have_cryptsetup():
    """True when libcryptsetup's development files are installed."""
    return library_found("libcryptsetup")


def have_zstd():
    """True when libzstd's development files are installed."""
    return library_found("libzstd")


def have_gcrypt():
    """True when libgcrypt's development files are installed (pkg-config,
    or the older libgcrypt-config script)."""
    return library_found("libgcrypt")


def have_nettle():
    """True when GNU Nettle's development files are installed (the
    libgcrypt module takes its 192-bit Twofish from it)."""
    return library_found("nettle")


def _libgcrypt_config():
    """(cflags, libs) from libgcrypt-config, or None."""
    if shutil.which("libgcrypt-config") is None:
        return None
    try:
        cflags = subprocess.run(["libgcrypt-config", "--cflags"], check=True,
                                capture_output=True, text=True).stdout
        libs = subprocess.run(["libgcrypt-config", "--libs"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(cflags), shlex.split(libs)


def _flags(package, fallback_libs):
    if package is None:
        return {}
    found = _pkg_config(package)
    if found is None and package == "libgcrypt":
        found = _libgcrypt_config()
    if found is None:
        return {"libraries": fallback_libs}
    cflags, libs = found
    return {
        "include_dirs": [f[2:] for f in cflags if f.startswith("-I")],
        "extra_compile_args": [f for f in cflags if not f.startswith("-I")],
        "library_dirs": [f[2:] for f in libs if f.startswith("-L")],
        "libraries": [f[2:] for f in libs if f.startswith("-l")],
        "extra_link_args": [f for f in libs if not f.startswith(("-L", "-l"))],
    }


# Every module compiles with these.  pyqcrypt's own C must compile without
# a single warning; PYQCRYPT_WERROR=1 (ci/setup sets it) makes any warning
# in it fail the build (see build_ext_werror).
WARNINGS = ["-Wall", "-Wextra", "-Wconversion"]


def werror_requested():
    """True when PYQCRYPT_WERROR=1: warnings in pyqcrypt's C fail the build."""
    return os.environ.get("PYQCRYPT_WERROR") == "1"


def _csrc(*parts):
    """A path under pyqcrypt/_csrc/.  Relative when the build runs from the
    project's root, as setuptools does (object files then land inside the
    build directory); absolute otherwise."""
    path = os.path.join(CSRC, *parts)
    if os.path.abspath(os.getcwd()) == HERE:
        return os.path.relpath(path, HERE)
    return path


def _cdef(*names):
    """The text of cdef files under pyqcrypt/_csrc/cdefs/, in order."""
    texts = []
    for name in names:
        with open(os.path.join(CSRC, "cdefs", name), encoding="utf-8") as fh:
            texts.append(fh.read())
    return "\n".join(texts)


def _module(name, cdefs, header, sources, package, fallback_libs, optional=()):
    """An FFI for extension module *name*: its declarations come from the
    cdef files, its C from the .c files under pyqcrypt/_csrc/ (compiled as
    their own translation units), and the generated wrapper includes only
    *header*, which declares everything the cdef names.  *optional* lists
    (pkg-config package, macro) pairs: each package pkg-config finds is
    linked in as well and its macro defined for the C sources."""
    ffi = FFI()
    ffi.cdef(_cdef(*cdefs))
    flags = _flags(package, fallback_libs)
    for extra, macro in optional:
        if not library_found(extra):
            continue
        for key, values in _flags(extra, []).items():
            flags[key] = flags.get(key, []) + [v for v in values if v not in flags.get(key, [])]
        flags["define_macros"] = flags.get("define_macros", []) + [(macro, "1")]
    flags["include_dirs"] = [_csrc()] + flags.get("include_dirs", [])
    flags["extra_compile_args"] = flags.get("extra_compile_args", []) + WARNINGS
    ffi.set_source(name, '#include "%s"' % header,
                   sources=[_csrc(src) for src in sources],
                   depends=sorted(_csrc(h) for h in os.listdir(CSRC) if h.endswith(".h")),
                   **flags)
    return ffi


def build_ext_werror(base):
    """A build_ext command class over *base* that, when werror_requested(),
    first compiles each extension's pyqcrypt/_csrc/*.c sources with
    -Werror, then builds the extension as usual.

    Only our sources get -Werror, never the wrapper cffi generates: its code
    is cffi's, so a new cffi or compiler that warns about it must not break
    the build (with cffi 2.0 and gcc 12 it compiles clean under WARNINGS,
    and its warnings are still printed).  Our objects are compiled twice;
    they are a few small files."""

    class BuildExtWerror(base):
        def build_extension(self, ext):
            ours = [src for src in ext.sources
                    if os.path.abspath(src).startswith(CSRC + os.sep)]
            if werror_requested() and ours:
                self.compiler.compile(
                    ours, output_dir=self.build_temp, macros=list(ext.define_macros),
                    include_dirs=ext.include_dirs, debug=self.debug,
                    extra_postargs=list(ext.extra_compile_args) + ["-Werror"],
                    depends=ext.depends)
            super().build_extension(ext)

    return BuildExtWerror


ffi_crypto = _module(
    "pyqcrypt._crypto_native", ["libcrypto.h", "pyq_crypto.h"], "crypto_native.h",
    ["libctx.c", "digest.c", "secmem.c", "sector_cipher.c", "af.c"],
    "libcrypto", ["crypto"])

ffi_os = _module(
    "pyqcrypt._os_native", ["pyq_os.h"], "os_native.h",
    ["ofd_lock.c", "keyring.c"], None, [])

ffi_qcow2 = _module(
    "pyqcrypt._qcow2_native", ["pyq_qcow2.h"], "qcow2_native.h",
    ["qcow2_l2.c"], None, [])

ffi_cryptsetup = _module(
    "pyqcrypt._cryptsetup_native", ["libcryptsetup.h", "pyq_cryptsetup.h"],
    "cryptsetup_native.h", ["cryptsetup_quiet.c", "cryptsetup_version.c"], "libcryptsetup", ["cryptsetup"])

ffi_zstd = _module(
    "pyqcrypt._zstd_native", ["libzstd.h", "pyq_zstd.h"], "zstd_native.h",
    ["zstd_cluster.c"], "libzstd", ["zstd"])

ffi_gcrypt = _module(
    "pyqcrypt._gcrypt_native", ["libgcrypt.h", "pyq_gcrypt.h"], "gcrypt_native.h",
    ["gcrypt_sector.c"], "libgcrypt", ["gcrypt"], optional=[("nettle", "PYQ_HAVE_NETTLE")])

if __name__ == "__main__":
    ffi_crypto.compile(verbose=True)
    ffi_os.compile(verbose=True)
    ffi_qcow2.compile(verbose=True)
    if have_cryptsetup():
        ffi_cryptsetup.compile(verbose=True)
    if have_zstd():
        ffi_zstd.compile(verbose=True)
    if have_gcrypt():
        ffi_gcrypt.compile(verbose=True)
