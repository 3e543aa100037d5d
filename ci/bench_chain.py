# SPDX-License-Identifier: LGPL-2.1-or-later
"""Flattening an encrypted backing chain, against qemu-img convert.

A 1 GiB qcow2-luks base (secret a) full of random data and a qcow2-luks
overlay (secret b) over it with half its clusters rewritten; both tools
flatten the chain into a new qcow2-luks image and into raw, whole
processes, best of --rounds, alternating.  Prints each ratio.
"""

import argparse
import os
import shutil
import tempfile

from benchlib import PY, rm, run, timed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pyqcrypt-bench-chain-",
                         dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        def j(name):
            return os.path.join(d, name)
        for sid, pw in (("a", b"base pass"), ("b", b"top pass")):
            with open(j(sid), "wb") as fh:
                fh.write(pw)
        objs = ["--object", "secret,id=a,file=%s" % j("a"), "--object", "secret,id=b,file=%s" % j("b")]
        run(["dd", "if=/dev/urandom", "of=%s" % j("src.raw"), "bs=1M",
             "count=%d" % args.size_mib, "status=none"])
        run(["qemu-img", "convert", *objs, "-f", "raw", j("src.raw"), "-O", "qcow2", "-o",
             "encrypt.format=luks,encrypt.key-secret=a,encrypt.iter-time=10", j("base.qcow2")], 20)
        rm(j("src.raw"))
        run(["qemu-img", "create", "-q", "-f", "qcow2", *objs, "-b", j("base.qcow2"), "-F", "qcow2",
             "-o", "encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10", j("top.qcow2")], 20)
        chain = ("driver=qcow2,file.filename=%s,encrypt.key-secret=b,backing.encrypt.key-secret=a"
                 % j("top.qcow2"))
        half = args.size_mib // 2
        run(["qemu-io", *objs, "--image-opts", chain, "-c", "write -P 0x5a 0 %dM" % half])
        enc = ["-O", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10"]
        cases = [("chain -> qcow2-luks", enc, "out.qcow2"), ("chain -> raw", ["-O", "raw"], "out.raw")]
        print("flattening a %d MiB qcow2-luks overlay (half rewritten) over a %d MiB qcow2-luks "
              "base, best of %d (whole processes)" % (args.size_mib, args.size_mib, args.rounds))
        for label, target, name in cases:
            q = o = float("inf")
            for _ in range(args.rounds):
                rm(j(name))
                q = min(q, timed(["qemu-img", "convert", "-W", "-m", "16", *objs, "--image-opts",
                                  chain, *target, j(name)])[0])
                rm(j(name))
                o = min(o, timed(PY + ["convert", *objs, "--image-opts", chain, *target, j(name)])[0])
                rm(j(name))
            print("  %s: qemu-img -W -m 16 %6.2f s   pyqcrypt %6.2f s   ratio %.2f (target <= 0.5)"
                  % (label, q, o, o / q))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
