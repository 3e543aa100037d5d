# SPDX-License-Identifier: LGPL-2.1-or-later
"""Sector-cipher throughput against OpenSSL, measured in the same run.

Prints, for aes-256-xts on 512-byte sectors, ``openssl speed -evp
aes-256-xts -bytes 512`` (one IV for the whole run: OpenSSL's ceiling) and
pyqcrypt's per-sector-IV throughput with one and two threads, as ratios.
Rounds alternate between the two so that a noisy neighbour hurts both; the
best round of each is reported.  Nothing is asserted: the figures are for
the closing note.
"""

import argparse
import os
import re
import subprocess
import sys

from pyqcrypt.crypto.benchmark import cipher_throughput
from pyqcrypt.crypto.cipherspec import CipherSpec


def openssl_speed(evp_name, seconds):
    out = subprocess.run(["openssl", "speed", "-evp", evp_name, "-bytes", "512",
                          "-seconds", str(seconds)], capture_output=True, text=True,
                         check=True).stdout
    last = [line for line in out.splitlines() if line.strip()][-1]
    value = re.findall(r"([\d.]+)k\s*$", last)
    if not value:
        sys.exit("cannot read openssl speed output: %r" % last)
    return float(value[0]) * 1000.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=2)
    args = ap.parse_args()
    cases = [("aes-256-xts", "aes-xts-plain64", 512), ("aes-128-xts", "aes-xts-plain64", 256),
             ("aes-256-cbc", "aes-cbc-essiv:sha256", 256)]
    print("sector throughput, 512-byte sectors, IV set per sector; %d rounds, best of each;"
          " %d cores" % (args.rounds, os.cpu_count() or 1))
    for evp, spec_name, bits in cases:
        spec = CipherSpec.parse(spec_name, bits)
        best = {"openssl": 0.0, "one": 0.0, "two": 0.0, "one-dec": 0.0}
        for _ in range(args.rounds):
            best["openssl"] = max(best["openssl"], openssl_speed(evp, args.seconds))
            best["one"] = max(best["one"], cipher_throughput(spec, True, args.seconds, threads=1))
            best["one-dec"] = max(best["one-dec"], cipher_throughput(spec, False, args.seconds, threads=1))
            best["two"] = max(best["two"], cipher_throughput(spec, True, args.seconds, threads=2))
        def mb(value):
            return value / 1e6
        print("%s (%s, %d-bit key)" % (evp, spec.cryptsetup_spec, bits))
        print("  openssl speed -evp %-12s %9.1f MB/s" % (evp + ":", mb(best["openssl"])))
        print("  pyqcrypt encrypt, 1 thread:  %9.1f MB/s   ratio %.2f"
              % (mb(best["one"]), best["one"] / best["openssl"]))
        print("  pyqcrypt decrypt, 1 thread:  %9.1f MB/s   ratio %.2f"
              % (mb(best["one-dec"]), best["one-dec"] / best["openssl"]))
        print("  pyqcrypt encrypt, 2 threads: %9.1f MB/s   %.2fx one thread"
              % (mb(best["two"]), best["two"] / best["one"]))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
