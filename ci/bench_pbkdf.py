# SPDX-License-Identifier: LGPL-2.1-or-later
"""New LUKS1 keyslot costs against the tools pyqcrypt mirrors, in one run:
iteration counts of the master-key digest and keyslot 0 that pyqcrypt
writes for the same --iter-time as ``qemu-img create -f luks`` (QEMU's
rules, timed with nettle) and ``cryptsetup luksFormat --type luks1``
(OpenSSL here), printed with their ratios.  Counts come from CPU-time
benchmarks, so they move with the machine; run it a few times."""

import os
import struct
import subprocess
import sys
import tempfile

from benchlib import PY, run

TIMES = (200, 1000)


def counts(path):
    with open(path, "rb") as fh:
        head = fh.read(592)
    return struct.unpack_from(">I", head, 164)[0], struct.unpack_from(">I", head, 212)[0]


def qemu_create(path, secret, ms):
    for _ in range(10):        # qemu-img's own benchmark fails at random on a busy machine
        if os.path.exists(path):
            os.unlink(path)
        proc = subprocess.run(["qemu-img", "create", "-f", "luks", "--object",
                               "secret,id=s,file=%s" % secret, "-o",
                               "key-secret=s,iter-time=%d" % ms, path, "1M"], capture_output=True)
        if proc.returncode == 0:
            return
    sys.exit("qemu-img create kept failing: %s" % proc.stderr.decode())


def main():
    d = tempfile.mkdtemp(prefix="pyqcrypt-bench-pbkdf-", dir="/dev/shm")
    secret = os.path.join(d, "pw")
    with open(secret, "wb") as fh:
        fh.write(b"bench passphrase")
    print("LUKS1 keyslot costs for the same --iter-time (aes-xts-plain64, 512-bit key, sha256)")
    print("%-34s %8s %12s %12s %8s %8s" % ("", "ms", "digest", "keyslot", "digest", "keyslot"))
    try:
        for ms in TIMES:
            a, b = os.path.join(d, "q.luks"), os.path.join(d, "p.luks")
            qemu_create(a, secret, ms)
            if os.path.exists(b):
                os.unlink(b)
            run(PY + ["create", "-q", "-f", "luks", "--object", "secret,id=s,file=%s" % secret,
                      "-o", "key-secret=s,iter-time=%d" % ms, b, "1M"])
            q, p = counts(a), counts(b)
            print("%-34s %8d %12d %12d" % ("qemu-img create -f luks", ms, q[0], q[1]))
            print("%-34s %8d %12d %12d %8.2f %8.2f" % ("pyqcrypt create -f luks", ms, p[0], p[1],
                                                         p[0] / q[0], p[1] / q[1]))
            c, e = os.path.join(d, "c.img"), os.path.join(d, "e.img")
            for f in (c, e):
                with open(f, "wb") as fh:
                    fh.truncate(8 << 20)
            run(["cryptsetup", "luksFormat", "-q", "--type", "luks1", "--iter-time", str(ms),
                 "--key-file", secret, c])
            run(PY + ["format", "-q", "--iter-time", str(ms), "--key-file", secret, e])
            c_, e_ = counts(c), counts(e)
            print("%-34s %8d %12d %12d" % ("cryptsetup luksFormat --type luks1", ms, c_[0], c_[1]))
            print("%-34s %8d %12d %12d %8.2f %8.2f" % ("pyqcrypt format", ms, e_[0], e_[1],
                                                         e_[0] / c_[0], e_[1] / c_[1]))
    finally:
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
