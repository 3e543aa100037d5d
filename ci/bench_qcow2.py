# SPDX-License-Identifier: LGPL-2.1-or-later
"""Sequential write throughput into a new qcow2-luks image, against qemu-io.

Both write 1 GiB (by default) into a freshly created qcow2 image with LUKS
(aes-256-xts-plain64, 64 KiB clusters) on /dev/shm: pyqcrypt through its
API in 1 MiB writes followed by a flush, qemu-io with one ``write`` command.
Rounds alternate; the best of each is printed with the ratio.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time

import pyqcrypt
from pyqcrypt.qcow2 import create_qcow2

from benchlib import run        # retries qemu-img's random PBKDF-timing failure

PW = b"bench passphrase"


def ours(path, size, chunk):
    create_qcow2(path, size, encrypt_format="luks", passphrase=PW, iterations=1000)
    buf = bytes(range(256)) * (chunk // 256)
    start = time.perf_counter()
    with pyqcrypt.open(path, passphrase=PW, writable=True) as img:
        for off in range(0, size, chunk):
            img.write(off, buf)
        img.flush()
    return time.perf_counter() - start


def qemu(path, size, secret_file):
    obj = "secret,id=s,file=%s" % secret_file
    run(["qemu-img", "create", "-q", "-f", "qcow2", "--object", obj, "-o",
         "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", path, str(size)])
    start = time.perf_counter()
    subprocess.run(["qemu-io", "--object", obj, "--image-opts",
                    "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path,
                    "-c", "write -P 0x5a 0 %d" % size, "-c", "flush"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib << 20
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix="pyqcrypt-bench-", dir=base)
    try:
        secret = os.path.join(d, "secret")
        with open(secret, "wb") as fh:
            fh.write(PW)
        best_ours = best_qemu = float("inf")
        for _ in range(args.rounds):
            for name in ("o.qcow2", "q.qcow2"):
                p = os.path.join(d, name)
                if os.path.exists(p):
                    os.unlink(p)
            best_ours = min(best_ours, ours(os.path.join(d, "o.qcow2"), size, 1 << 20))
            best_qemu = min(best_qemu, qemu(os.path.join(d, "q.qcow2"), size, secret))
        def mbs(seconds):
            return size / seconds / 1e6
        print("qcow2-luks sequential write, %d MiB, aes-256-xts-plain64, 64 KiB clusters, "
              "/dev/shm; best of %d" % (args.size_mib, args.rounds))
        print("  qemu-io write:           %8.1f MB/s" % mbs(best_qemu))
        print("  pyqcrypt (1 MiB writes): %8.1f MB/s   ratio %.2f" % (mbs(best_ours), best_qemu / best_ours))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
