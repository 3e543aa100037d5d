# SPDX-License-Identifier: LGPL-2.1-or-later
"""Build and install pyqcrypt: Python sources plus the cffi extension modules.

The libcrypto, OS (locks, keyring) and qcow2 modules are always built; the
libcryptsetup module only where pkg-config finds libcryptsetup (Debian:
libcryptsetup-dev), the libzstd module only where it finds libzstd (Debian:
libzstd-dev), the libgcrypt module only where it finds libgcrypt (Debian:
libgcrypt20-dev).  build_ffi.py says what each module holds.  With
PYQCRYPT_WERROR=1 in the environment (ci/setup sets it) a compiler warning
in pyqcrypt's own C fails the build.
"""

import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_ffi import build_ext_werror, have_cryptsetup, have_gcrypt, have_zstd  # noqa: E402

CFFI_MODULES = ["build_ffi.py:ffi_crypto", "build_ffi.py:ffi_os", "build_ffi.py:ffi_qcow2"]
if have_cryptsetup():
    CFFI_MODULES.append("build_ffi.py:ffi_cryptsetup")
if have_zstd():
    CFFI_MODULES.append("build_ffi.py:ffi_zstd")
if have_gcrypt():
    CFFI_MODULES.append("build_ffi.py:ffi_gcrypt")

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md"),
          encoding="utf-8") as fh:
    LONG_DESCRIPTION = fh.read()

setup(
    name="pyqcrypt",
    version="0.1.0",
    description="qcow2-with-LUKS and LUKS1 disk images, byte-compatible with "
                "QEMU and cryptsetup",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="LGPL-2.1-or-later",
    python_requires=">=3.9",
    packages=find_packages(include=["pyqcrypt", "pyqcrypt.*"]),
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15"],
    cffi_modules=CFFI_MODULES,
    # PYQCRYPT_WERROR=1: a compiler warning in pyqcrypt/_csrc fails the build.
    cmdclass={"build_ext": build_ext_werror(build_ext)},
    extras_require={
        # ruff and mypy: ci/lint, run by ci/test before the tests.
        "test": ["pytest", "pytest-xdist", "hypothesis", "cryptography", "ruff", "mypy"],
    },
    entry_points={"console_scripts": ["pyqcrypt=pyqcrypt.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: Security :: Cryptography",
        "Topic :: System :: Filesystems",
    ],
    zip_safe=False,
)
