# SPDX-License-Identifier: LGPL-2.1-or-later
"""Conversion speed against qemu-img and cp, measured in the same run.

On /dev/shm with 1 GiB of random data (default):
* raw -> qcow2-luks: ``pyqcrypt convert`` vs ``qemu-img convert -W -m 16``
  with the same encryption options (aes-256-xts-plain64, iter-time 10);
* qcow2-luks -> raw, likewise;
* keep-ciphertext LUKS1 -> qcow2-luks (payload copied) vs ``cp`` of a file
  the payload's size, and with the payload adopted as an existing data file;
* peak memory (max RSS) of a 4 GiB keep-ciphertext and re-encrypting convert.
Each timing is the best of --rounds; both sides are whole processes.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

PY = [sys.executable, "-m", "pyqcrypt"]


def timed(cmd, **kw):
    """Seconds one run of *cmd* takes.  qemu-img's LUKS key setup fails at
    random on busy machines ("Unable to get accurate CPU usage", its own
    PBKDF timing): such a run is repeated and not counted."""
    for _ in range(20):
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        took = time.perf_counter() - start
        if proc.returncode == 0:
            return took
        if b"Unable to get accurate CPU usage" not in proc.stderr:
            break
    raise SystemExit("failed: %s\n%s" % (" ".join(cmd), proc.stderr.decode(errors="replace")))


def best(rounds, setup, cmd):
    out = float("inf")
    for _ in range(rounds):
        setup()
        out = min(out, timed(cmd))
    return out


def rm(*paths):
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def peak_rss_mib(cmd):
    """Max RSS of one child process (children are measured one at a time)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit("command failed: %s" % " ".join(cmd))
    return usage.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--memory-gib", type=int, default=4)
    args = ap.parse_args()
    size = args.size_mib << 20
    d = tempfile.mkdtemp(prefix="pyqcrypt-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        def j(name):
            return os.path.join(d, name)
        with open(j("secret"), "wb") as fh:
            fh.write(b"bench pass")
        obj = "secret,id=s,file=%s" % j("secret")
        subprocess.run(["dd", "if=/dev/urandom", "of=%s" % j("src.raw"), "bs=1M",
                        "count=%d" % args.size_mib, "status=none"], check=True)
        enc = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10"
        q_to = best(args.rounds, lambda: rm(j("q.qcow2")),
                    ["qemu-img", "convert", "-W", "-m", "16", "--object", obj, "-f", "raw", j("src.raw"),
                     "-O", "qcow2", "-o", enc, j("q.qcow2")])
        o_to = best(args.rounds, lambda: rm(j("o.qcow2")),
                    PY + ["convert", "--object", obj, "-f", "raw", j("src.raw"), "-O", "qcow2", "-o", enc,
                          j("o.qcow2")])
        src = "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % j("o.qcow2")
        q_from = best(args.rounds, lambda: rm(j("q.raw")),
                      ["qemu-img", "convert", "-W", "-m", "16", "--object", obj, "--image-opts", src,
                       "-O", "raw", j("q.raw")])
        o_from = best(args.rounds, lambda: rm(j("o.raw")),
                      PY + ["convert", "--object", obj, "--image-opts", src, "-O", "raw", j("o.raw")])
        # A LUKS1 volume holding the data, for keep-ciphertext.
        timed(["qemu-img", "create", "-q", "-f", "luks", "--object", obj, "-o",
               "key-secret=s,iter-time=10", j("vol.luks"), str(size)])
        subprocess.run(["qemu-img", "convert", "-n", "-W", "-m", "16", "--object", obj, "-f", "raw",
                        j("src.raw"), "--target-image-opts",
                        "driver=luks,file.filename=%s,key-secret=s" % j("vol.luks")], check=True)
        cp = best(args.rounds, lambda: rm(j("cp.out")), ["cp", j("src.raw"), j("cp.out")])
        keep = best(args.rounds, lambda: rm(j("k.qcow2"), j("k.qcow2.data")),
                    PY + ["convert", "--keep-ciphertext", "-O", "qcow2", j("vol.luks"), j("k.qcow2")])
        # Existing data file: the payload of a detached-header volume.
        subprocess.run(["truncate", "-s", str(size), j("payload.img")], check=True)
        subprocess.run(PY + ["format", "-q", "--key-file", j("secret"), "--pbkdf-force-iterations",
                             "1000", "--header", j("hdr.img"), j("payload.img")], check=True)
        existing = best(args.rounds, lambda: rm(j("e.qcow2")),
                        PY + ["convert", "--keep-ciphertext", "-O", "qcow2", "--image-opts",
                              "driver=luks,file.filename=%s,header=%s" % (j("payload.img"), j("hdr.img")),
                              "-o", "data_file=%s,data_file_existing=on" % j("payload.img"), j("e.qcow2")])
        print("conversion, %d MiB of random data on /dev/shm, best of %d (whole processes)"
              % (args.size_mib, args.rounds))
        print("  raw -> qcow2-luks: qemu-img -W -m 16 %6.2f s   pyqcrypt %6.2f s   ratio %.2f (target <= 0.5)"
              % (q_to, o_to, o_to / q_to))
        print("  qcow2-luks -> raw: qemu-img -W -m 16 %6.2f s   pyqcrypt %6.2f s   ratio %.2f (target <= 0.5)"
              % (q_from, o_from, o_from / q_from))
        print("  keep-ciphertext LUKS1 -> qcow2-luks: cp %6.2f s   pyqcrypt %6.2f s   ratio %.2f (target <= 1.2)"
              % (cp, keep, keep / cp))
        print("  keep-ciphertext with the payload as existing data file: %6.3f s (target < 0.5)" % existing)
        # Peak memory on a larger, sparse conversion.
        big = args.memory_gib << 30
        rm(j("src.raw"), j("q.qcow2"), j("o.qcow2"), j("q.raw"), j("o.raw"), j("cp.out"), j("k.qcow2"),
           j("k.qcow2.data"), j("vol.luks"))
        timed(["qemu-img", "create", "-q", "-f", "luks", "--object", obj, "-o",
               "key-secret=s,iter-time=10", j("big.luks"), str(big)])
        mem_keep = peak_rss_mib(PY + ["convert", "--keep-ciphertext", "-O", "qcow2", j("big.luks"),
                                      j("big.qcow2")])
        rm(j("big.qcow2.data"), j("big.qcow2"))
        mem_re = peak_rss_mib(PY + ["convert", "--object", obj, "--image-opts",
                                    "driver=luks,file.filename=%s,key-secret=s" % j("big.luks"),
                                    "-O", "qcow2", "-o", enc, j("big.qcow2")])
        print("  peak memory, %d GiB: keep-ciphertext %.0f MiB, re-encrypting %.0f MiB (target < 200)"
              % (args.memory_gib, mem_keep, mem_re))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
