# SPDX-License-Identifier: LGPL-2.1-or-later
"""Build and install pyqcrypt: Python sources plus the cffi extension modules.

The metadata is in pyproject.toml; this file holds what needs code.

The libcrypto module is always built (without OpenSSL's headers the build
stops at once, naming the Debian and Fedora packages to install; see
build_ffi.LIBRARIES); the libcryptsetup module only where
pkg-config finds libcryptsetup and its header compiles (Debian: libcryptsetup-dev), the libzstd
module only where it finds libzstd (Debian: libzstd-dev), the libgcrypt
module (serpent, twofish, LRW) only where it finds libgcrypt (Debian:
libgcrypt20-dev), with GNU Nettle linked into it where it finds nettle
(Debian: nettle-dev; Twofish with 192-bit keys, which libgcrypt lacks, is
unsupported without it).  The OS and qcow2 helper modules are always
built.  The build says which it builds; PYQCRYPT_REQUIRE_CRYPTSETUP=1 (or
PYQCRYPT_REQUIRE_ZSTD=1, PYQCRYPT_REQUIRE_GCRYPT=1,
PYQCRYPT_REQUIRE_NETTLE=1) in the environment turns a missing library into
a build error, for packagers who must not ship a package silently without
it.

The man page pyqcrypt(1) and the bash completion are generated from the
argument parser at build time (python -m pyqcrypt.manpage / .completion,
run from the source tree) and installed as data files under share/; the
man page's date is SOURCE_DATE_EPOCH when that is set.
"""

import os
import subprocess
import sys

from setuptools import Command, setup

try:
    from setuptools.command.build import build
except ImportError:             # setuptools < 62.4
    from distutils.command.build import build

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from build_ffi import (build_ext_werror, have_cryptsetup, have_gcrypt, have_nettle, have_zstd,  # noqa: E402
                       install_hint, packages_for, require_libcrypto)
from setuptools.command.build_ext import build_ext  # noqa: E402

CFFI_MODULES = ["build_ffi.py:ffi_crypto", "build_ffi.py:ffi_os", "build_ffi.py:ffi_qcow2"]
if have_cryptsetup():
    CFFI_MODULES.append("build_ffi.py:ffi_cryptsetup")
if have_zstd():
    CFFI_MODULES.append("build_ffi.py:ffi_zstd")
if have_gcrypt():
    CFFI_MODULES.append("build_ffi.py:ffi_gcrypt")


def _report_optional_modules():
    """Say which optional modules this build makes; fail where the
    environment asks for one that cannot be built."""
    missing, absent = [], False
    for name, found, variable in (
            ("libcryptsetup", have_cryptsetup(), "PYQCRYPT_REQUIRE_CRYPTSETUP"),
            ("libzstd", have_zstd(), "PYQCRYPT_REQUIRE_ZSTD"),
            ("libgcrypt", have_gcrypt(), "PYQCRYPT_REQUIRE_GCRYPT"),
            ("nettle", have_gcrypt() and have_nettle(), "PYQCRYPT_REQUIRE_NETTLE")):
        required = os.environ.get(variable, "") not in ("", "0")
        absent = absent or not found
        if name == "nettle":
            # Not a module of its own: linked into the libgcrypt one.
            what = "GNU Nettle (192-bit Twofish in the libgcrypt module)"
            if found:
                state = "linked"
            elif not have_gcrypt():
                state = "NOT linked: there is no libgcrypt module"
            else:
                state = ("NOT linked: no usable nettle (%s); 192-bit Twofish will be unsupported"
                         % packages_for("nettle"))
        else:
            what = "%s module" % name
            state = "built" if found else "NOT built: no usable %s (%s)" % (name, packages_for(name))
        print("pyqcrypt build: %s %s%s"
              % (what, state, " (required by %s=1)" % variable if required else ""), file=sys.stderr)
        if required and not found:
            missing.append("%s=1 but there is no usable %s (%s)" % (variable, name, packages_for(name)))
    if missing:
        sys.exit("pyqcrypt build: error: %s; %s" % ("; ".join(missing), install_hint()))
    if absent:
        print("pyqcrypt build: to build every module, " + install_hint(), file=sys.stderr)


require_libcrypto()
_report_optional_modules()

# Generated at build time into GENERATED (under build/, which sdist leaves out).
GENERATED = os.path.join("build", "pyqcrypt-data")
DATA = [("share/man/man1", "pyqcrypt.1", "pyqcrypt.manpage"),
        ("share/bash-completion/completions", "pyqcrypt", "pyqcrypt.completion")]


class build_data(Command):
    """Write the man page and the bash completion into build/pyqcrypt-data."""

    description = "generate pyqcrypt(1) and the bash completion from the argument parser"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        out_dir = os.path.join(HERE, GENERATED)
        os.makedirs(out_dir, exist_ok=True)
        for _, name, module in DATA:
            # A child process with the source tree first on sys.path: the
            # parser needs no compiled module, and the build stays clean of
            # imported pyqcrypt modules.
            text = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.path.insert(0, %r); "
                                   "runpy.run_module(%r, run_name='__main__')" % (HERE, module)],
                                  check=True, stdout=subprocess.PIPE, cwd=HERE).stdout
            with open(os.path.join(out_dir, name), "wb") as fh:
                fh.write(text)


class build_with_data(build):
    sub_commands = [("build_data", None)] + build.sub_commands


def _data_files():
    # The generated files may not exist yet when this runs (they are made by
    # build_data, before install_data copies them); make them now if not,
    # so that every way in (wheel, editable, plain install) finds them.
    if not all(os.path.exists(os.path.join(HERE, GENERATED, name)) for _, name, _ in DATA):
        from setuptools.dist import Distribution
        build_data(Distribution()).run()
    return [(target, [os.path.join(GENERATED, name)]) for target, name, _ in DATA]


setup(
    cffi_modules=CFFI_MODULES,
    # PYQCRYPT_WERROR=1: a compiler warning in pyqcrypt/_csrc fails the build.
    cmdclass={"build": build_with_data, "build_data": build_data,
              "build_ext": build_ext_werror(build_ext)},
    data_files=_data_files(),
    # Every cffi module is built against the stable ABI (cffi defines
    # Py_LIMITED_API; the modules are *.abi3.so), so one wheel serves every
    # CPython from 3.9 on: tag it cp39-abi3, not cpXY-cpXY.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
