# SPDX-License-Identifier: LGPL-2.1-or-later
"""Throughput measurements in the manner of ``cryptsetup benchmark``.

PBKDF2 iterations per second per hash, and sector-cipher MiB/s on 512-byte
sectors with per-sector IVs, optionally with several threads sharing one
SectorCipher (each thread gets its own OpenSSL or libgcrypt contexts).
Each cipher row names the backend serving it (openssl or libgcrypt).
"""

import threading
import time

from ..errors import Error, MissingDependency, UnsupportedCipher
from .cipherspec import CipherSpec
from .keybuf import SecretBuffer
from .kdf import iterations_per_second
from .sector import SectorCipher

PBKDF2_HASHES = ("sha1", "sha256", "sha512")
# (cryptsetup spec, key bits), in cryptsetup benchmark's order plus extras.
CIPHERS = (
    ("aes-cbc-plain64", 128), ("aes-cbc-plain64", 256),
    ("aes-xts-plain64", 256), ("aes-xts-plain64", 512),
    ("aes-ctr-plain64", 256), ("aes-cbc-essiv:sha256", 256),
    ("camellia-cbc-plain64", 256), ("sm4-xts-plain64", 256),
    ("sm4-cbc-plain64", 128), ("cast5-cbc-plain64", 128),
    ("des3_ede-cbc-plain64", 192), ("serpent-xts-plain64", 256),
    ("serpent-xts-plain64", 512), ("twofish-xts-plain64", 256),
    ("twofish-xts-plain64", 512), ("serpent-cbc-essiv:sha256", 256),
    ("aes-lrw-plain64", 256),
)


def cipher_throughput(spec, encrypt=True, seconds=0.5, buffer_size=1 << 20,
                      threads=1, sector_size=512):
    """Bytes per second for *spec* over *threads* threads."""
    if threads < 1 or threads > 256:
        raise Error("thread count out of range")
    if isinstance(spec, tuple):
        spec = CipherSpec.parse(spec[0], key_bits=spec[1])
    with SecretBuffer.random(spec.key_bytes) as key:
        cipher = SectorCipher(spec, key, sector_size)
    try:
        run = cipher.encrypt if encrypt else cipher.decrypt
        done = [0] * threads
        barrier = threading.Barrier(threads + 1)
        deadline = [0.0]

        def worker(idx):
            buf = bytearray(buffer_size)
            run(buf, 0)                      # warm up this thread's contexts
            barrier.wait()
            sector = 0
            total = 0
            while time.perf_counter() < deadline[0]:
                run(buf, sector)
                sector += buffer_size // sector_size
                total += buffer_size
            done[idx] = total

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        start = time.perf_counter()
        deadline[0] = start + seconds
        barrier.wait()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        return sum(done) / elapsed
    finally:
        cipher.close()


def pbkdf2_results(hashes=PBKDF2_HASHES, key_bits=256):
    """[(hash, iterations per second)] for each hash."""
    return [(h, iterations_per_second(h, key_bits // 8, target_ms=500)) for h in hashes]


def cipher_results(ciphers=CIPHERS, seconds=0.5, threads=1):
    """[(spec string, key bits, enc B/s or None, dec B/s or None, reason,
    backend or None)]."""
    results = []
    for name, bits in ciphers:
        try:
            spec = CipherSpec.parse(name, key_bits=bits).check()
        except (UnsupportedCipher, MissingDependency) as exc:
            results.append((name, bits, None, None, str(exc), None))
            continue
        enc = cipher_throughput(spec, True, seconds, threads=threads)
        dec = cipher_throughput(spec, False, seconds, threads=threads)
        results.append((name, bits, enc, dec, None, spec.backend))
    return results
