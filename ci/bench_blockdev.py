# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keep-ciphertext conversion of LUKS *block devices*, against cp.

A cryptsetup LUKS1 volume (aes-xts-plain64, 512-bit key) filled with random
data by qemu-img is attached as a loop device; then, alternating, best of
--rounds, whole processes:
* ``cp /dev/loopN FILE`` against ``pyqcrypt convert --keep-ciphertext -O
  qcow2 /dev/loopN X.qcow2`` (the payload copied into X.qcow2.data), and
  the same with ``--verify``;
* the payload device itself adopted as the data file
  (``-o data_file=/dev/loopM,data_file_existing=on``, a loop device with an
  offset), for the same volume and for a 64 GiB sparse one.
Needs root and loop devices; prints why when it cannot run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

PY = [sys.executable, "-m", "pyqcrypt"]


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def timed(cmd):
    start = time.perf_counter()
    run(cmd)
    return time.perf_counter() - start


def rm(*paths):
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def attach(path, offset=None):
    cmd = ["losetup", "-f", "--show"] + (["-o", str(offset)] if offset else []) + [path]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def available_mib():
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return -1


def luks_volume(d, name, size, fill_from=None):
    """A cryptsetup LUKS1 volume with a *size*-byte payload (2 MiB header)."""
    vol = os.path.join(d, name)
    with open(vol, "wb") as fh:
        fh.truncate(size + (2 << 20))
    run(["cryptsetup", "luksFormat", "--type", "luks1", "-q", "--pbkdf-force-iterations", "1000",
         "--key-file", os.path.join(d, "secret"), vol])
    if fill_from:
        run(["qemu-img", "convert", "-n", "-f", "raw", "--object",
             "secret,id=s,file=%s" % os.path.join(d, "secret"), fill_from, "--target-image-opts",
             "driver=luks,file.filename=%s,key-secret=s" % vol])
    return vol


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sparse-gib", type=int, default=64)
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        print("block-device benchmark skipped: needs root and loop devices")
        return
    size = args.size_mib << 20
    d = tempfile.mkdtemp(prefix="pyqcrypt-bench-dev-",
                         dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    devices = []
    try:
        def j(name):
            return os.path.join(d, name)
        with open(j("secret"), "wb") as fh:
            fh.write(b"bench pass")
        run(["dd", "if=/dev/urandom", "of=%s" % j("src.raw"), "bs=1M",
             "count=%d" % args.size_mib, "status=none"])
        vol = luks_volume(d, "vol.luks", size, j("src.raw"))
        rm(j("src.raw"))
        print("block devices: %d MiB LUKS1 volume on a loop device over /dev/shm; %d MiB of "
              "memory available before measuring" % (args.size_mib, available_mib()))
        dev = attach(vol)
        devices.append(dev)
        cp = keep = verify = float("inf")
        for _ in range(args.rounds):
            rm(j("cp.out"))
            cp = min(cp, timed(["cp", dev, j("cp.out")]))
            rm(j("cp.out"))
            rm(j("k.qcow2"), j("k.qcow2.data"))
            keep = min(keep, timed(PY + ["convert", "--keep-ciphertext", "-O", "qcow2", dev,
                                         j("k.qcow2")]))
            rm(j("k.qcow2"), j("k.qcow2.data"))
            verify = min(verify, timed(PY + ["convert", "--keep-ciphertext", "--verify", "-O",
                                             "qcow2", dev, j("k.qcow2")]))
            rm(j("k.qcow2"), j("k.qcow2.data"))
        print("  keep-ciphertext device -> qcow2-luks: cp %.2f s   pyqcrypt %.2f s   ratio %.2f "
              "(target <= 1.2)" % (cp, keep, keep / cp))
        print("  the same with --verify: %.2f s   ratio to cp %.2f   verify alone ~%.2f s "
              "(%.2fx the copy)" % (verify, verify / cp, verify - keep, (verify - keep) / keep))
        payload = attach(vol, 2 << 20)
        devices.append(payload)
        adopt = float("inf")
        for _ in range(args.rounds):
            rm(j("e.qcow2"))
            adopt = min(adopt, timed(PY + ["convert", "--keep-ciphertext", "-O", "qcow2", "-o",
                                           "data_file=%s,data_file_existing=on" % payload, dev,
                                           j("e.qcow2")]))
        rm(j("e.qcow2"))
        print("  payload device adopted as data file, %d MiB: %.3f s (target < 1 s)"
              % (args.size_mib, adopt))
        for x in reversed(devices):
            run(["losetup", "-d", x])
        devices = []
        rm(vol)
        big = luks_volume(d, "big.luks", args.sparse_gib << 30)
        whole, part = attach(big), attach(big, 2 << 20)
        devices += [whole, part]
        adopt_big = float("inf")
        for _ in range(args.rounds):
            rm(j("b.qcow2"))
            adopt_big = min(adopt_big, timed(PY + ["convert", "--keep-ciphertext", "-O", "qcow2",
                                                   "-o", "data_file=%s,data_file_existing=on" % part,
                                                   whole, j("b.qcow2")]))
        print("  payload device adopted as data file, %d GiB sparse: %.3f s (target < 1 s)"
              % (args.sparse_gib, adopt_big))
    finally:
        for x in reversed(devices):
            subprocess.run(["losetup", "-d", x], check=False)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
