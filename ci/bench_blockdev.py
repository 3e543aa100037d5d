# SPDX-License-Identifier: LGPL-2.1-or-later
"""Conversion of *block devices* (loop devices over /dev/shm), against cp
and qemu-img convert -W -m 16, measured in the same run.

--size-mib of random data (1 GiB by default), best of --rounds, every
contender of every path alternating in each round, whole processes:
* a raw device -> a qcow2-luks file (``cp /dev/loopN FILE`` for cp);
* a qcow2-luks file -> a raw device, written in place with -n
  (``cp FILE /dev/loopM``);
* a cryptsetup LUKS1 device (aes-xts-plain64, 512-bit key) -> qcow2-luks
  keep-ciphertext (the payload copied into X.qcow2.data; qemu-img has to
  re-encrypt), and the same with ``--verify``;
* the payload device itself adopted as the data file
  (``-o data_file=/dev/loopM,data_file_existing=on``, a loop device with an
  offset), for the same volume and for a 64 GiB sparse one.
Every contender starts with the devices' page cache flushed (``blockdev
--flushbufs``), as a conversion of a disk does.  Load and free memory are
printed with the figures.  Needs root and loop
devices; prints why when it cannot run.
"""

import argparse
import os
import shutil
import subprocess
import time

from benchlib import PY, Path, machine, race, report, rm, scratch_dir, sparse_extents, timed
from benchlib import run as lib_run


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def timed_s(cmd):
    start = time.perf_counter()
    run(cmd)
    return time.perf_counter() - start


def attach(path, offset=None):
    cmd = ["losetup", "-f", "--show"] + (["-o", str(offset)] if offset else []) + [path]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


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
    ap.add_argument("--memory-gib", type=int, default=16)
    ap.add_argument("--memory-only", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        print("block-device benchmark skipped: needs root and loop devices")
        return
    size = args.size_mib << 20
    d, j, obj = scratch_dir("pyqcrypt-bench-dev-")
    devices = []
    try:
        if args.memory_only:
            memory(j, obj, args.memory_gib, devices)
            return
        enc = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10"
        qconv = ["qemu-img", "convert", "-W", "-m", "16", "--object", obj]
        pconv = PY + ["convert", "--object", obj]
        run(["dd", "if=/dev/urandom", "of=%s" % j("src.raw"), "bs=1M",
             "count=%d" % args.size_mib, "status=none"])
        vol = luks_volume(d, "vol.luks", size, j("src.raw"))
        lib_run(qconv + ["-f", "raw", j("src.raw"), "-O", "qcow2", "-o", enc, j("src.qcow2")])
        with open(j("target.img"), "wb") as fh:
            fh.truncate(size)
        raw_dev, luks_dev, out_dev = attach(j("src.raw")), attach(vol), attach(j("target.img"))
        devices += [raw_dev, luks_dev, out_dev]
        qsrc = "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % j("src.qcow2")
        def cold():
            # Every contender starts with the devices' page cache empty,
            # as a conversion of a real disk does: cp reads through that
            # cache (a second cp of a loop device reads memory), pyqcrypt's
            # O_DIRECT reads and qemu-img's -W reads do not.
            for dev in devices:
                run(["blockdev", "--flushbufs", dev])

        def out(*names):
            def before(who):
                rm(*[j(who + n) for n in names])
                cold()
            return before
        paths = [
            Path("raw device -> qcow2-luks file", cp=["cp", raw_dev, j("cp.out")],
                 qemu=qconv + ["-f", "raw", raw_dev, "-O", "qcow2", "-o", enc, j("qemu-img.q")],
                 pyqcrypt=pconv + ["-f", "raw", raw_dev, "-O", "qcow2", "-o", enc, j("pyqcrypt.q")],
                 before=out(".q", ".out"), goals={"cp": 1.3, "qemu-img": 0.3}),
            Path("qcow2-luks file -> raw device (-n)", cp=["cp", j("src.raw"), out_dev],
                 qemu=qconv + ["-n", "--image-opts", qsrc, "-O", "raw", out_dev],
                 pyqcrypt=pconv + ["-n", "--image-opts", qsrc, "-O", "raw", out_dev],
                 before=lambda who: cold(), goals={"cp": 1.3, "qemu-img": 0.3}),
            Path("LUKS1 device -> qcow2-luks, keep-ciphertext", cp=["cp", luks_dev, j("cp.out")],
                 qemu=qconv + ["--image-opts", "driver=luks,file.filename=%s,key-secret=s"
                               % luks_dev, "-O", "qcow2", "-o", enc, j("qemu-img.k")],
                 pyqcrypt=PY + ["convert", "--keep-ciphertext", "-O", "qcow2", luks_dev,
                                j("pyqcrypt.k")],
                 before=out(".k", ".k.data", ".out"), goals={"cp": 1.1, "qemu-img": 0.3}),
            Path("LUKS1 device -> qcow2-luks, keep-ciphertext --verify",
                 cp=["cp", luks_dev, j("cp.out")],
                 pyqcrypt=PY + ["convert", "--keep-ciphertext", "--verify", "-O", "qcow2", luks_dev,
                                j("pyqcrypt.v")],
                 before=out(".v", ".v.data", ".out")),
        ]
        print("block devices: %d MiB on loop devices over /dev/shm, best of %d alternating runs "
              "(whole processes)" % (args.size_mib, args.rounds))
        print("  before: %s" % machine())
        race(paths, args.rounds)
        report(paths)
        print("  after: %s" % machine())
        payload = attach(vol, 2 << 20)
        devices.append(payload)
        adopt = float("inf")
        for _ in range(args.rounds):
            rm(j("e.qcow2"))
            adopt = min(adopt, timed_s(PY + ["convert", "--keep-ciphertext", "-O", "qcow2", "-o",
                                             "data_file=%s,data_file_existing=on" % payload,
                                             luks_dev, j("e.qcow2")]))
        rm(j("e.qcow2"))
        print("  payload device adopted as data file, %d MiB: %.3f s (target < 1 s)"
              % (args.size_mib, adopt))
        for x in reversed(devices):
            run(["losetup", "-d", x])
        devices = []
        for name in os.listdir(d):
            if name != "secret":
                rm(j(name))
        big = luks_volume(d, "big.luks", args.sparse_gib << 30)
        whole, part = attach(big), attach(big, 2 << 20)
        devices += [whole, part]
        adopt_big = float("inf")
        for _ in range(args.rounds):
            rm(j("b.qcow2"))
            adopt_big = min(adopt_big, timed_s(PY + ["convert", "--keep-ciphertext", "-O", "qcow2",
                                                     "-o", "data_file=%s,data_file_existing=on"
                                                     % part, whole, j("b.qcow2")]))
        print("  payload device adopted as data file, %d GiB sparse: %.3f s (target < 1 s)"
              % (args.sparse_gib, adopt_big))
        for x in reversed(devices):
            run(["losetup", "-d", x])
        devices[:] = []
        rm(big, j("b.qcow2"))
        memory(j, obj, args.memory_gib, devices)
    finally:
        for x in reversed(devices):
            subprocess.run(["losetup", "-d", x], check=False)
        shutil.rmtree(d, ignore_errors=True)


def memory(j, obj, gib, devices):
    """Peak memory and time of a *gib* GiB raw loop device holding 1 GiB of
    random data (16 extents of 64 MiB; the rest reads as zeros, which stay
    unallocated) converted to a qcow2-luks file."""
    sparse_extents(j("big.raw"), gib << 30)
    dev = attach(j("big.raw"))
    devices.append(dev)
    enc = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10"
    print("peak memory, %d GiB raw loop device with 1 GiB of random data in 16 extents"
          " -> qcow2-luks file" % gib)
    print("  before: %s" % machine())
    took, rss = timed(PY + ["convert", "--object", obj, "-f", "raw", dev, "-O", "qcow2", "-o", enc,
                            j("big.qcow2")])
    rm(j("big.qcow2"))
    qtook, qrss = timed(["qemu-img", "convert", "-W", "-m", "16", "--object", obj, "-f", "raw", dev,
                         "-O", "qcow2", "-o", enc, j("big.qcow2")])
    rm(j("big.qcow2"))
    print("  pyqcrypt %6.2f s, %4.0f MiB (goal <= 200)   qemu-img %6.2f s, %4.0f MiB"
          % (took, rss, qtook, qrss))
    print("  after: %s" % machine())


if __name__ == "__main__":
    main()
