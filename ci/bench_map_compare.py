# SPDX-License-Identifier: LGPL-2.1-or-later
"""map and compare against qemu-img, and compare --ciphertext against cmp,
measured in the same run.

Scratch files on /dev/shm: a --size-mib (1 GiB by default) sparse raw
file holding 16 extents of random data (half of it), the same as qcow2 and
as qcow2-luks (iter-time 10); a LUKS1 volume (cryptsetup, 1000
iterations) whose payload is all random bytes and its keep-ciphertext
qcow2-luks copy with a raw data file.  Each figure is the best of
--rounds whole-process runs, the contenders alternating in each round:

* map --output=json of the qcow2 image and of the raw file;
* compare qcow2 vs raw, and qcow2-luks vs raw (decrypting);
* compare --ciphertext of the keep-ciphertext pair vs cmp of the payload
  and the data file (qemu-img has no such verb).
"""

import argparse
import shutil

from benchlib import PY, machine, run, scratch_dir, sparse_extents, timed


def _race(jobs, rounds):
    """{name: {contender: best seconds}}, contenders alternating."""
    best = {}
    for _ in range(rounds):
        for name, cmds in jobs:
            for who, cmd in cmds.items():
                took, _ = timed(cmd)
                slot = best.setdefault(name, {})
                slot[who] = min(took, slot.get(who, float("inf")))
    return best


def _report(jobs, best):
    for name, cmds in jobs:
        b = best[name]
        peer = next(w for w in cmds if w != "pyqcrypt")
        print("  %-40s pyqcrypt %7.3f s  %s %7.3f s  ratio %5.2f"
              % (name, b["pyqcrypt"], peer, b[peer], b["pyqcrypt"] / b[peer]))


def _payload_offset(vol):
    with open(vol, "rb") as fh:
        head = fh.read(108)
    return int.from_bytes(head[104:108], "big") * 512


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib << 20
    d, j, obj = scratch_dir()
    try:
        sparse_extents(j("b.raw"), size, extents=16, extent_mib=args.size_mib // 32)
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", j("b.raw"), j("a.qcow2")])
        run(["qemu-img", "convert", "--object", obj, "-f", "raw", "-O", "qcow2", "-o",
             "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", j("b.raw"),
             j("e.qcow2")])
        run(["truncate", "-s", str(size + (2 << 20)), j("v.luks")])
        run(["cryptsetup", "luksFormat", "--type", "luks1", "--batch-mode",
             "--pbkdf-force-iterations", "1000", "--key-file", j("secret"), j("v.luks")])
        start = _payload_offset(j("v.luks"))
        run(["dd", "if=/dev/urandom", "of=%s" % j("v.luks"), "bs=1M", "seek=%d" % (start >> 20),
             "count=%d" % args.size_mib, "conv=notrunc", "status=none"])
        run(PY + ["convert", "--keep-ciphertext", "-O", "qcow2", "-o",
                  "data_file=%s,data_file_raw=on" % j("k.data"), j("v.luks"), j("k.qcow2")])
        enc = "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % j("e.qcow2")
        jobs = [
            ("map --output=json qcow2", {
                "pyqcrypt": PY + ["map", "--output=json", j("a.qcow2")],
                "qemu-img": ["qemu-img", "map", "--output=json", j("a.qcow2")]}),
            ("map --output=json raw (holes)", {
                "pyqcrypt": PY + ["map", "--output=json", j("b.raw")],
                "qemu-img": ["qemu-img", "map", "--output=json", j("b.raw")]}),
            ("compare qcow2 raw", {
                "pyqcrypt": PY + ["compare", j("a.qcow2"), j("b.raw")],
                "qemu-img": ["qemu-img", "compare", j("a.qcow2"), j("b.raw")]}),
            ("compare qcow2-luks raw (decrypting)", {
                "pyqcrypt": PY + ["compare", "--object", obj, "--image-opts", enc,
                                  "driver=raw,file.filename=%s" % j("b.raw")],
                "qemu-img": ["qemu-img", "compare", "--object", obj, "--image-opts", enc,
                             "driver=raw,file.filename=%s" % j("b.raw")]}),
            ("compare --ciphertext LUKS1 qcow2-luks", {
                "pyqcrypt": PY + ["compare", "--ciphertext", j("v.luks"), j("k.qcow2")],
                "cmp": ["cmp", "-i", "%d:0" % start, "-n", str(size), j("v.luks"), j("k.data")]}),
        ]
        print("map/compare, %d MiB images (%s)" % (args.size_mib, machine()))
        _report(jobs, _race(jobs, args.rounds))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
