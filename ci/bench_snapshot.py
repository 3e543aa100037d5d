# SPDX-License-Identifier: LGPL-2.1-or-later
"""snapshot -c / -l / -a / -d against qemu-img snapshot, measured in the
same run.

Scratch files on /dev/shm: a sparse qcow2 image of --size-gib (64 GiB by
default) with 64 KiB written every 256 MiB (one L2 table each: 256 at
64 GiB), made by qemu-io.  Each round copies it twice, then times, in
turn on qemu-img's copy and on pyqcrypt's, -c (every L2 table's refcount
and flags), -l, -a and -d of that snapshot; each figure is the best of
--rounds whole-process runs.  pyqcrypt's runs include its interpreter
start-up (see bench_startup.py).
"""

import argparse
import shutil

from benchlib import PY, machine, run, scratch_dir, timed

STEPS = [("-c", "s"), ("-l",), ("-a", "s"), ("-d", "s")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d, j, _ = scratch_dir()
    try:
        run(["qemu-img", "create", "-q", "-f", "qcow2", j("base.qcow2"), "%dG" % args.size_gib])
        writes = []
        for i in range(args.size_gib * 4):
            writes += ["-c", "write -P 1 %dM 64k" % (i * 256)]
        run(["qemu-io", "-f", "qcow2"] + writes + [j("base.qcow2")])
        best = {}
        for _ in range(args.rounds):
            tools = {"qemu-img": ["qemu-img"], "pyqcrypt": PY}
            for who in tools:
                shutil.copyfile(j("base.qcow2"), j(who + ".qcow2"))
            for step in STEPS:
                for who, cmd in tools.items():
                    took, _ = timed(cmd + ["snapshot", *step, j(who + ".qcow2")])
                    slot = best.setdefault(" ".join(step[:1]), {})
                    slot[who] = min(took, slot.get(who, float("inf")))
        print("snapshot, %d GiB image, %d L2 tables (%s)" % (args.size_gib, args.size_gib * 4,
                                                              machine()))
        for name, b in best.items():
            print("  snapshot %-4s pyqcrypt %7.3f s  qemu-img %7.3f s  ratio %5.2f"
                  % (name, b["pyqcrypt"], b["qemu-img"], b["pyqcrypt"] / b["qemu-img"]))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
