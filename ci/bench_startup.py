# SPDX-License-Identifier: LGPL-2.1-or-later
"""Start-up cost of the command line, as scripts calling it in a loop pay
it: whole processes, byte-compiled modules, alternating rounds, the median
of each.  Prints `pyqcrypt info` on a qcow2 image, a LUKS1 volume and a
LUKS2 volume, `pyqcrypt --version` and `pyqcrypt dump`, each against a
bare `python3 -c pass` in the same interpreter (the floor: the
interpreter and its site packages) and against `qemu-img info` and
`cryptsetup luksDump`.  Issue 22's goal: info <= 1.8 x the bare
interpreter.

    python ci/bench_startup.py [--rounds N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (byte-compiles this checkout's package)


def _timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    work, _, _ = benchlib.scratch_dir()
    qcow = os.path.join(work, "s.qcow2")
    vol1, vol2 = os.path.join(work, "v1.luks"), os.path.join(work, "v2.luks")
    key = os.path.join(work, "k")
    with open(key, "wb") as fh:
        fh.write(b"startup bench")
    benchlib.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, "1G"])
    for path, kind in ((vol1, "luks1"), (vol2, "luks2")):
        with open(path, "wb") as fh:
            fh.truncate(32 << 20)
        benchlib.run(["cryptsetup", "luksFormat", "-q", "--type", kind, "--pbkdf", "pbkdf2",
                      "--pbkdf-force-iterations", "1000", "--key-file", key, path])
    py = benchlib.PY
    cases = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "pyqcrypt --version": py + ["--version"],
        "pyqcrypt info qcow2": py + ["info", qcow],
        "qemu-img info qcow2": ["qemu-img", "info", qcow],
        "pyqcrypt info luks1": py + ["info", vol1],
        "pyqcrypt info luks2": py + ["info", vol2],
        "pyqcrypt dump luks1": py + ["dump", vol1],
        "cryptsetup luksDump luks1": ["cryptsetup", "luksDump", vol1],
    }
    times = {name: [] for name in cases}
    for name, cmd in cases.items():
        _timed(cmd)                     # warm the page cache
    for _ in range(args.rounds):
        for name, cmd in cases.items():
            times[name].append(_timed(cmd))
    print(benchlib.machine())
    floor = statistics.median(times["python3 -c pass"])
    print("%-28s %10s %12s" % ("command", "median ms", "x python"))
    for name, ts in times.items():
        med = statistics.median(ts)
        print("%-28s %10.1f %12.2f" % (name, med * 1000, med / floor))
    import shutil
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
