# SPDX-License-Identifier: LGPL-2.1-or-later
"""Conversion speed against cp and qemu-img, measured in the same run.

Files on /dev/shm, --size-mib of random data (1 GiB by default); each path
is timed as whole processes against ``cp`` of a file of the same size and
against ``qemu-img convert -W -m 16`` doing the same conversion (for
keep-ciphertext, the re-encrypting conversion qemu-img has to do instead),
best of --rounds, every contender of every path alternating in each round:

* raw -> qcow2-luks (aes-256-xts-plain64, iter-time 10);
* qcow2-luks -> raw;
* LUKS1 -> qcow2-luks, re-encrypting;
* LUKS1 -> qcow2-luks keep-ciphertext (the payload copied to a raw data
  file), and the same with --verify;
* the payload adopted as an existing data file.

Then the peak memory (max RSS of the child) and time of conversions of a
--memory-gib sparse image holding 1 GiB of random data in 16 extents.
Load and free memory are printed before each part (tmpfs page allocation
under memory pressure doubles every write-heavy figure: empty /dev/shm of
your own scratch first).
"""

import argparse
import os
import shutil

from benchlib import PY, Path, machine, race, report, rm, run, scratch_dir, sparse_extents, timed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory-gib", type=int, default=16)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    size = args.size_mib << 20
    d, j, obj = scratch_dir()
    try:
        enc = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10"
        qconv = ["qemu-img", "convert", "-W", "-m", "16", "--object", obj]
        pconv = PY + ["convert", "--object", obj]
        run(["dd", "if=/dev/urandom", "of=%s" % j("src.raw"), "bs=1M", "count=%d" % args.size_mib,
             "status=none"])
        run(qconv + ["-f", "raw", j("src.raw"), "-O", "qcow2", "-o", enc, j("src.qcow2")])
        run(["qemu-img", "create", "-q", "-f", "luks", "--object", obj, "-o",
             "key-secret=s,iter-time=10", j("vol.luks"), str(size)])
        run(["qemu-img", "convert", "-n", "-W", "-m", "16", "--object", obj, "-f", "raw", j("src.raw"),
             "--target-image-opts", "driver=luks,file.filename=%s,key-secret=s" % j("vol.luks")])
        # Existing data file: the payload of a detached-header volume.
        run(["truncate", "-s", str(size), j("payload.img")])
        run(PY + ["format", "-q", "--key-file", j("secret"), "--pbkdf-force-iterations", "1000",
                  "--header", j("hdr.img"), j("payload.img")])
        qsrc = "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % j("src.qcow2")
        lsrc = "driver=luks,file.filename=%s,key-secret=s" % j("vol.luks")
        def out(*names):
            return (lambda who: rm(*[j(who + n) for n in names]))
        cp = ["cp", j("src.raw"), j("cp.out")]
        paths = [
            Path("raw -> qcow2-luks", cp=cp,
                 qemu=qconv + ["-f", "raw", j("src.raw"), "-O", "qcow2", "-o", enc, j("qemu-img.q")],
                 pyqcrypt=pconv + ["-f", "raw", j("src.raw"), "-O", "qcow2", "-o", enc,
                                   j("pyqcrypt.q")],
                 before=out(".q", ".out"), goals={"cp": 1.3, "qemu-img": 0.3}),
            Path("qcow2-luks -> raw", cp=cp,
                 qemu=qconv + ["--image-opts", qsrc, "-O", "raw", j("qemu-img.r")],
                 pyqcrypt=pconv + ["--image-opts", qsrc, "-O", "raw", j("pyqcrypt.r")],
                 before=out(".r", ".out"), goals={"cp": 1.3, "qemu-img": 0.3}),
            Path("LUKS1 -> qcow2-luks, re-encrypting", cp=cp,
                 qemu=qconv + ["--image-opts", lsrc, "-O", "qcow2", "-o", enc, j("qemu-img.l")],
                 pyqcrypt=pconv + ["--image-opts", lsrc, "-O", "qcow2", "-o", enc,
                                   j("pyqcrypt.l")],
                 before=out(".l", ".out"), goals={"qemu-img": 0.3}),
            Path("LUKS1 -> qcow2-luks, keep-ciphertext", cp=cp,
                 qemu=qconv + ["--image-opts", lsrc, "-O", "qcow2", "-o", enc, j("qemu-img.k")],
                 pyqcrypt=PY + ["convert", "--keep-ciphertext", "-O", "qcow2", j("vol.luks"),
                                j("pyqcrypt.k")],
                 before=out(".k", ".k.data", ".out"), goals={"cp": 1.1, "qemu-img": 0.3}),
            Path("LUKS1 -> qcow2-luks, keep-ciphertext --verify", cp=cp,
                 pyqcrypt=PY + ["convert", "--keep-ciphertext", "--verify", "-O", "qcow2",
                                j("vol.luks"), j("pyqcrypt.v")],
                 before=out(".v", ".v.data", ".out")),
        ]
        print("conversion, %d MiB of random data in files on /dev/shm, best of %d alternating "
              "runs (whole processes)" % (args.size_mib, args.rounds))
        print("  before: %s" % machine())
        race(paths, args.rounds)
        report(paths)
        existing = min(timed(PY + ["convert", "--keep-ciphertext", "-O", "qcow2", "--image-opts",
                                   "driver=luks,file.filename=%s,header=%s" % (j("payload.img"),
                                                                              j("hdr.img")),
                                   "-o", "data_file=%s,data_file_existing=on" % j("payload.img"),
                                   j("e%d.qcow2" % i)])[0] for i in range(args.rounds))
        print("  keep-ciphertext with the payload as existing data file: %6.3f s (target < 0.5)"
              % existing)
        print("  after: %s" % machine())
        for name in os.listdir(d):
            if name != "secret":
                rm(j(name))
        if not args.skip_memory:
            memory(j, obj, enc, args.memory_gib)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def memory(j, obj, enc, gib):
    """Peak memory of conversions of a *gib* GiB sparse image holding 1 GiB
    of random data (16 extents of 64 MiB spread over it)."""
    big = gib << 30
    step = big // 16
    sparse_extents(j("big.raw"), big)
    # A LUKS1 volume of the same size whose payload holds the same extents
    # of ciphertext (random bytes) and holes elsewhere.
    run(["truncate", "-s", str(big + (2 << 20)), j("big.luks")])
    run(["cryptsetup", "luksFormat", "--type", "luks1", "-q", "--pbkdf-force-iterations", "1000",
         "--key-file", j("secret"), j("big.luks")])
    for i in range(16):
        run(["dd", "if=/dev/urandom", "of=%s" % j("big.luks"), "bs=1M", "count=64",
             "seek=%d" % (2 + i * step // (1 << 20)), "conv=notrunc", "status=none"])
    print("peak memory, %d GiB sparse image with 1 GiB of random data in 16 extents" % gib)
    print("  before: %s" % machine())
    pconv = PY + ["convert", "--object", obj]
    rows = [
        ("raw -> qcow2-luks", pconv + ["-f", "raw", j("big.raw"), "-O", "qcow2", "-o", enc,
                                       j("big.qcow2")], []),
        ("qcow2-luks -> raw", pconv + ["--image-opts", "driver=qcow2,file.filename=%s,"
                                       "encrypt.key-secret=s" % j("big.qcow2"), "-O", "raw",
                                       j("back.raw")], ["back.raw"]),
        ("LUKS1 -> qcow2-luks keep-ciphertext", PY + ["convert", "--keep-ciphertext", "-O", "qcow2",
                                                      j("big.luks"), j("keep.qcow2")],
         ["keep.qcow2", "keep.qcow2.data"]),
        # (Not LUKS1 re-encrypting: a LUKS payload has no holes to keep, its
        # unwritten sectors decrypt to noise, so the output would be 16 GiB.)
    ]
    for name, cmd, made in rows:
        took, rss = timed(cmd)
        qcmd = ["qemu-img"] + cmd[cmd.index("convert"):]
        qcmd[qcmd.index("convert") + 1:qcmd.index("convert") + 1] = ["-W", "-m", "16"]
        qline = ""
        if "--keep-ciphertext" not in cmd:
            qout = cmd[-1] + ".qemu"
            qcmd[-1] = qout
            qtook, qrss = timed(qcmd)
            rm(qout)
            qline = "   qemu-img %6.2f s, %4.0f MiB" % (qtook, qrss)
        print("  %-38s pyqcrypt %6.2f s, %4.0f MiB (goal <= 200)%s" % (name, took, rss, qline))
        for m in made:
            rm(j(m))
    print("  after: %s" % machine())


if __name__ == "__main__":
    main()
