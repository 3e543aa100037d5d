# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 2: cryptographic building blocks over OpenSSL's libcrypto.

Cipher specifications, sector ciphers, PBKDF2, the anti-forensic splitter
and wiped key buffers.  Nothing here knows about disk formats.
"""

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from .af import af_merge, af_split
    from .cipherspec import CipherSpec, check_hash
    from .keybuf import SecretBuffer
    from .openssl import openssl_version, random_bytes
    from .kdf import iterations_for, iterations_per_second, pbkdf2
    from .sector import SECTOR_SIZE, SectorCipher

# Loaded on first use (PEP 562): importing one module of the package does
# not import all of them.
_LAZY = {"af_merge": ".af", "af_split": ".af", "CipherSpec": ".cipherspec", "check_hash":
         ".cipherspec", "SecretBuffer": ".keybuf", "openssl_version": ".openssl",
         "random_bytes": ".openssl", "iterations_for": ".kdf", "iterations_per_second":
         ".kdf", "pbkdf2": ".kdf", "SECTOR_SIZE": ".sector", "SectorCipher": ".sector"}


__getattr__ = exports(__name__, _LAZY)


__all__ = [
    "CipherSpec", "SecretBuffer", "SectorCipher", "SECTOR_SIZE", "af_merge",
    "af_split", "check_hash", "iterations_for", "iterations_per_second",
    "openssl_version", "pbkdf2", "random_bytes",
]
