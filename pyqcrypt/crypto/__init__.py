# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 2: cryptographic building blocks over OpenSSL's libcrypto.

Cipher specifications, sector ciphers, PBKDF2, the anti-forensic splitter
and wiped key buffers.  Nothing here knows about disk formats.
"""

from .af import af_merge, af_split
from .cipherspec import CipherSpec, check_hash
from .keybuf import SecretBuffer
from .openssl import openssl_version, random_bytes
from .pbkdf2 import iterations_for, iterations_per_second, pbkdf2
from .sector import SECTOR_SIZE, SectorCipher

__all__ = [
    "CipherSpec", "SecretBuffer", "SectorCipher", "SECTOR_SIZE", "af_merge",
    "af_split", "check_hash", "iterations_for", "iterations_per_second",
    "openssl_version", "pbkdf2", "random_bytes",
]
