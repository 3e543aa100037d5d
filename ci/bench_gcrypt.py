# SPDX-License-Identifier: LGPL-2.1-or-later
"""The libgcrypt backend's speed: serpent and twofish, and a conversion.

* serpent-xts-plain64 and twofish-xts-plain64 MiB/s on 512-byte sectors
  with per-sector IVs, encrypt and decrypt, with one and two threads (each
  thread keys its own libgcrypt context), best of --rounds; 512-bit keys
  (two 256-bit halves) unless --key-bits names others, e.g. 256,384,512
  for 128-, 192- and 256-bit Twofish and Serpent (Twofish-192 is GNU
  Nettle's, the rest libgcrypt's);
* ``pyqcrypt convert`` raw -> serpent-xts-plain64 LUKS1 against ``qemu-img
  convert -W -m 16`` of the same --size-mib of random data on /dev/shm
  (goal: at most 0.35x qemu-img's time), alternating, best of --rounds.

Load and free memory are printed with the figures.  Nothing is asserted.
"""

import argparse
import shutil
import sys

from benchlib import PY, Path, machine, race, report, rm, run, scratch_dir

from pyqcrypt.crypto.benchmark import cipher_throughput
from pyqcrypt.crypto.cipherspec import CipherSpec

MIB = 1 << 20


def sectors(rounds, seconds, key_bits=(512,)):
    print("libgcrypt sector throughput, 512-byte sectors, IV set per sector; best of %d rounds"
          % rounds)
    print("  before: %s" % machine())
    for name, bits in [(name, bits) for bits in key_bits
                       for name in ("serpent-xts-plain64", "twofish-xts-plain64")]:
        spec = CipherSpec.parse(name, bits).check()
        best = {}
        for _ in range(rounds):
            for key, enc, threads in (("enc1", True, 1), ("dec1", False, 1),
                                      ("enc2", True, 2), ("dec2", False, 2)):
                best[key] = max(best.get(key, 0.0),
                                cipher_throughput(spec, enc, seconds, threads=threads))
        print("  %s (%d-bit key, %s)" % (name, bits, spec.backend))
        print("    1 thread:  encrypt %7.1f MiB/s  decrypt %7.1f MiB/s"
              % (best["enc1"] / MIB, best["dec1"] / MIB))
        print("    2 threads: encrypt %7.1f MiB/s  decrypt %7.1f MiB/s  (%.2fx / %.2fx one thread)"
              % (best["enc2"] / MIB, best["dec2"] / MIB, best["enc2"] / best["enc1"],
                 best["dec2"] / best["dec1"]))
        sys.stdout.flush()
    print("  after: %s" % machine())


def convert(size_mib, rounds):
    d, j, obj = scratch_dir()
    try:
        run(["dd", "if=/dev/urandom", "of=%s" % j("src.raw"), "bs=1M", "count=%d" % size_mib,
             "status=none"])
        opts = ("key-secret=s,iter-time=10,cipher-alg=serpent-256,cipher-mode=xts,"
                "ivgen-alg=plain64")
        def out(who):
            rm(j(who + ".luks"))
        paths = [Path("raw -> LUKS1 serpent-xts-plain64",
                      qemu=["qemu-img", "convert", "-W", "-m", "16", "--object", obj, "-f", "raw",
                            j("src.raw"), "-O", "luks", "-o", opts, j("qemu-img.luks")],
                      pyqcrypt=PY + ["convert", "--object", obj, "-f", "raw", j("src.raw"),
                                     "-O", "luks", "-o", opts, j("pyqcrypt.luks")],
                      before=out, goals={"qemu-img": 0.35})]
        print("conversion, %d MiB of random data in files on /dev/shm, best of %d alternating "
              "runs (whole processes)" % (size_mib, rounds))
        print("  before: %s" % machine())
        race(paths, rounds)
        report(paths)
        print("  after: %s" % machine())
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--key-bits", default="512",
                    help="comma-separated XTS key sizes (both halves), default 512")
    ap.add_argument("--no-convert", action="store_true", help="only the sector throughput")
    args = ap.parse_args()
    sectors(args.rounds, args.seconds, [int(b) for b in args.key_bits.split(",")])
    if not args.no_convert:
        convert(args.size_mib, args.rounds)


if __name__ == "__main__":
    main()
