# SPDX-License-Identifier: LGPL-2.1-or-later
"""rebase and commit against qemu-img rebase and qemu-img commit.

A qcow2 base full of random data and an overlay over it with every other
MiB rewritten, plain and qcow2-luks (a secret per layer).  Each tool, on a
fresh copy of the chain each run: ``rebase -b ""`` (the overlay takes in
everything the base provides), ``rebase -b other -F qcow2`` onto an empty
base (plain; the same copy, through the comparison of both chains) and
``commit`` (the overlay's clusters into the base, then the overlay
emptied).  Whole processes, best of --rounds, alternating; prints each
ratio.
"""

import argparse
import os
import shutil
import tempfile

from benchlib import PY, machine, run, timed

ITER = "encrypt.iter-time=10"


def _chain(d, size_mib, enc):
    """Build the pristine chain in *d*: base.qcow2, other.qcow2 (empty)
    and top.qcow2; returns (the --object options, FILENAME arguments)."""
    objs = []
    for sid in ("a", "b", "c"):
        with open(os.path.join(d, sid), "wb") as fh:
            fh.write(b"pass " + sid.encode())
        objs += ["--object", "secret,id=%s,file=%s" % (sid, os.path.join(d, sid))]

    def o(sid):
        return ["-o", "encrypt.format=luks,encrypt.key-secret=%s,%s" % (sid, ITER)] if enc else []
    raw = os.path.join(d, "src.raw")
    run(["dd", "if=/dev/urandom", "of=" + raw, "bs=1M", "count=%d" % size_mib, "status=none"])
    run(["qemu-img", "convert", *objs, "-f", "raw", raw, "-O", "qcow2", *o("a"),
         os.path.join(d, "base.qcow2")])
    os.unlink(raw)
    run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(d, "other.qcow2"),
         "%dM" % size_mib])
    run(["qemu-img", "create", "-q", "-f", "qcow2", *objs, *o("b"), "-b", "base.qcow2", "-F",
         "qcow2", os.path.join(d, "top.qcow2")])
    top = ["top.qcow2"]
    if enc:
        top = objs + ["--image-opts", "driver=qcow2,file.filename=top.qcow2,encrypt.key-secret=b,"
                                      "backing.encrypt.key-secret=a"]
    writes = []
    for mib in range(0, size_mib, 2):
        writes += ["-c", "write -P 0x5a %dM 1M" % mib]
    where = os.path.join(d, "top.qcow2")
    io = ["qemu-io", *objs, "--image-opts", top[-1].replace("=top.qcow2", "=" + where)] if enc \
        else ["qemu-io", "-f", "qcow2", where]
    run(io + writes)
    return top


def _time(pristine, work, cmd):
    """Seconds of *cmd* run in a fresh copy of the chain."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    here = os.getcwd()
    os.chdir(work)
    try:
        return timed(cmd)[0]
    finally:
        os.chdir(here)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="pyqcrypt-bench-rebase-",
                            dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        print("rebase / commit of a %d MiB overlay (every other MiB rewritten) over a %d MiB base, "
              "best of %d (whole processes); %s" % (args.size_mib, args.size_mib, args.rounds,
                                                    machine()))
        for enc in (False, True):
            pristine = os.path.join(root, "enc" if enc else "plain")
            os.mkdir(pristine)
            top = _chain(pristine, args.size_mib, enc)
            work = os.path.join(root, "w")
            # qemu-img finds no relative name from an --image-opts image: an absolute one
            other = os.path.join(work, "other.qcow2")
            for label, verb in (("rebase -b \"\"", ["rebase", "-b", ""]),
                                ("rebase onto an empty base", ["rebase", "-b", other, "-F", "qcow2"]),
                                ("commit", ["commit"])):
                q = o = float("inf")
                for _ in range(args.rounds):
                    q = min(q, _time(pristine, work, ["qemu-img", *verb, *top]))
                    o = min(o, _time(pristine, work, PY + [*verb, *top]))
                print("  %-10s %-28s qemu-img %6.2f s   pyqcrypt %6.2f s   ratio %.2f"
                      % ("qcow2-luks" if enc else "qcow2", label, q, o, o / q))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
