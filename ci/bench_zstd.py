# SPDX-License-Identifier: LGPL-2.1-or-later
"""Reading a zstd-compressed qcow2 image, against qemu-img convert.

The source is a mix qemu compresses well (text-like runs), poorly (random)
and not at all (zeros); qemu-img makes the zstd image (64 KiB clusters),
then both tools decode it to raw and to qcow2-luks, whole processes, best
of --rounds, alternating.  Prints each ratio.
"""

import argparse
import os
import shutil
import tempfile

from benchlib import PY, rm, run, timed


def make_source(path, size):
    """Quarters of 1 MiB: words, random, half-random, zeros."""
    words = b" ".join(b"cluster%d" % i for i in range(150000))[:1 << 20]
    with open(path, "wb") as fh:
        for i in range(size >> 20):
            kind = i % 4
            if kind == 0:
                fh.write(words)
            elif kind == 1:
                fh.write(os.urandom(1 << 20))
            elif kind == 2:
                fh.write(os.urandom(1 << 19) + words[:1 << 19])
            else:
                fh.seek(1 << 20, os.SEEK_CUR)
        fh.truncate(size)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pyqcrypt-bench-zstd-",
                         dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        def j(name):
            return os.path.join(d, name)

        with open(j("s"), "wb") as fh:
            fh.write(b"zstd bench")
        obj = ["--object", "secret,id=s,file=%s" % j("s")]
        make_source(j("src.raw"), args.size_mib << 20)
        run(["qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd",
             j("src.raw"), j("z.qcow2")])
        rm(j("src.raw"))
        print("decoding a %d MiB zstd-compressed qcow2 (%d MiB on disk), best of %d "
              "(whole processes)" % (args.size_mib, os.path.getsize(j("z.qcow2")) >> 20, args.rounds))
        cases = [("zstd -> raw", ["-O", "raw"], "out.raw"),
                 ("zstd -> qcow2-luks", obj + ["-O", "qcow2", "-o",
                                               "encrypt.format=luks,encrypt.key-secret=s,"
                                               "encrypt.iter-time=10"], "out.qcow2")]
        for label, target, name in cases:
            q = o = float("inf")
            for _ in range(args.rounds):
                rm(j(name))
                q = min(q, timed(["qemu-img", "convert", "-W", "-m", "16", j("z.qcow2"),
                                  *target, j(name)])[0])
                rm(j(name))
                o = min(o, timed(PY + ["convert", j("z.qcow2"), *target, j(name)])[0])
                rm(j(name))
            print("  %s: qemu-img -W -m 16 %6.2f s   pyqcrypt %6.2f s   ratio %.2f"
                  % (label, q, o, o / q))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
