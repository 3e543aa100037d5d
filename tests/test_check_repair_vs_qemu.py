# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt check -r leaks|all`` against ``qemu-img check -r``.

Each damaged image (built with qemu-img and qemu-io, then edited with the
struct helpers of test_check_vs_qemu) is copied twice; qemu-img repairs
one copy, pyqcrypt the other.  Both must print the same stdout and stderr
and exit with the same code, leave byte-identical files (qemu-img
discards a freed cluster, pyqcrypt zeroes it), after which ``qemu-img
check`` says the same of both and the guest reads the same bytes as before
the repair.  What qemu-img repairs by rebuilding the refcount structure or
rewriting L2 entries pyqcrypt refuses, writing nothing; an image another
process writes is refused by both.
"""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import qemu_img, qemu_io, tool
from test_check_vs_qemu import COPIED, MASK, Layout, make

pytestmark = pytest.mark.interop

WRITES = ("write -P 0x11 0 64k", "write -P 0x22 1M 8k")


def _pyqcrypt(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + list(args), capture_output=True)


def _guest(path):
    """The guest's bytes, as qemu-img reads them."""
    raw = path + ".raw"
    qemu_img("convert", "-U", "-O", "raw", path, raw)
    with open(raw, "rb") as fh:
        data = fh.read()
    os.unlink(raw)
    return data


def _qemu_check(path):
    proc = subprocess.run([tool("qemu-img"), "check", "-U", path], capture_output=True)
    return proc.stdout, proc.stderr, proc.returncode


def repair_both(damaged, *args):
    """Repair copies of *damaged* with both tools; assert the same output,
    exit code, file and later check; return qemu-img's (out, err, rc) and
    the repaired copy's path."""
    theirs_path, ours_path = damaged + ".qemu", damaged + ".ours"
    shutil.copyfile(damaged, theirs_path)
    shutil.copyfile(damaged, ours_path)
    theirs = subprocess.run([tool("qemu-img"), "check"] + list(args) + [theirs_path],
                            capture_output=True)
    ours = _pyqcrypt("check", *args, ours_path)
    name = lambda b: b.replace(b".ours", b".qemu")      # noqa: E731 - the one difference
    assert (name(ours.stdout), name(ours.stderr), ours.returncode) == \
        (theirs.stdout, theirs.stderr, theirs.returncode)
    with open(theirs_path, "rb") as a, open(ours_path, "rb") as b:
        assert a.read() == b.read(), "the repaired files differ"
    assert _qemu_check(ours_path)[1:] == _qemu_check(theirs_path)[1:]
    return (theirs.stdout, theirs.stderr, theirs.returncode), ours_path


# ---- damage --------------------------------------------------------------------------------
def leaked(lay):
    lay.put(lay.l2, ">Q", 0)                                       # unmap guest cluster 0


def refcount_two(lay):
    lay.set_refcount((lay.q(lay.l2 + 8) & MASK) // lay.cs, 2)      # leak + wrong COPIED


def refcount_too_low(lay):
    lay.put(lay.l2 + 8, ">Q", lay.q(lay.l2))                      # two refs, refcount 1


def copied_cleared(lay):
    lay.put(lay.l2 + 8, ">Q", lay.q(lay.l2 + 8) & ~COPIED)
    lay.put(lay.l1, ">Q", lay.q(lay.l1) & ~COPIED)


def leak_and_past_eof(lay):
    lay.put(lay.l2, ">Q", COPIED | 0x400000)                       # not repairable


def dirty_and_leak(lay):
    leaked(lay)
    lay.put(72, ">Q", lay.q(72) | 1)


def corrupt_bit_and_leak(lay):
    leaked(lay)
    lay.put(72, ">Q", lay.q(72) | 2)


DAMAGE = [leaked, refcount_two, refcount_too_low, copied_cleared, leak_and_past_eof,
          dirty_and_leak, corrupt_bit_and_leak]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("mode", ["leaks", "all"])
def test_repair_same_as_qemu(workdir, damage, mode):
    path = make(workdir, 4096, writes=WRITES)
    before = _guest(path)
    lay = Layout(path)
    damage(lay)
    lay.save()
    damaged_guest = _guest(path)
    (out, err, rc), repaired = repair_both(path, "-r", mode)
    assert b"Repairing" in err, err
    assert _guest(repaired) == damaged_guest
    if damage is not leak_and_past_eof:
        assert damaged_guest[64 << 10:] == before[64 << 10:]
    qemu_io(repaired, "read -P 0x22 1M 8k", fmt="qcow2")


@pytest.mark.parametrize("cs", [4096, 65536])
@pytest.mark.parametrize("fmt", ["human", "json"])
def test_repair_output_formats(workdir, cs, fmt):
    lay = Layout(make(workdir, cs, writes=WRITES))
    refcount_too_low(lay)
    (out, _, rc), _ = repair_both(lay.save(), "--output=" + fmt, "-r", "all")
    assert rc == 0 and (b"corruptions-fixed" in out if fmt == "json" else b"3 corruptions" in out)


def test_quiet_prints_nothing_on_stdout(workdir):
    lay = Layout(make(workdir, writes=WRITES))
    leak_and_past_eof(lay)
    (out, err, rc), _ = repair_both(lay.save(), "-q", "-r", "leaks")
    assert out == b"" and rc == 2 and b"Repairing cluster" in err
    lay2 = Layout(make(workdir, name="clean.qcow2", writes=WRITES))
    for args in (["-q"], ["-q", "-T", "none"], ["-T", "writeback", "--output=json"]):
        theirs = subprocess.run([tool("qemu-img"), "check"] + args + [lay2.path],
                                capture_output=True)
        ours = _pyqcrypt("check", *args, lay2.path)
        assert (ours.stdout, ours.stderr, ours.returncode) == \
            (theirs.stdout, theirs.stderr, theirs.returncode)


def test_other_refcount_bits_and_snapshots(workdir):
    lay = Layout(make(workdir, 4096, ",refcount_bits=4", writes=WRITES, name="rc4.qcow2"))
    lay.put(lay.l2, ">Q", 0)
    repair_both(lay.save(), "-r", "leaks")
    path = make(workdir, 4096, writes=("write -P 0x11 0 64k",), name="snap.qcow2")
    qemu_img("snapshot", "-c", "s1", path)
    qemu_io(path, "write -P 0x33 0 8k", fmt="qcow2")
    lay = Layout(path)
    lay.put(lay.l2 + 16, ">Q", lay.q(lay.l2 + 16) | COPIED)      # shared with the snapshot
    repair_both(lay.save(), "-r", "all")


def test_refcount_zero_needs_a_rebuild(workdir):
    """-r leaks: qemu-img's "need to rebuild" failure, byte for byte;
    -r all: qemu-img rebuilds, pyqcrypt refuses and writes nothing."""
    lay = Layout(make(workdir, writes=WRITES))
    lay.set_refcount((lay.q(lay.l2) & MASK) // lay.cs, 0)
    path = lay.save()
    (_, err, rc), _ = repair_both(path, "-r", "leaks")
    assert rc == 1 and b"ERROR need to rebuild refcount structures" in err
    with open(path, "rb") as fh:
        original = fh.read()
    ours = _pyqcrypt("check", "-r", "all", path)
    assert ours.returncode == 1 and b"refcount structure rebuilt" in ours.stderr, ours.stderr
    with open(path, "rb") as fh:
        assert fh.read() == original


def test_unsupported_l2_rewrite_refused(workdir):
    lay = Layout(make(workdir, writes=WRITES))
    lay.put(lay.l2 + 40, ">Q", COPIED | 0x7200 | 1)     # preallocated zero cluster, misaligned
    path = lay.save()
    with open(path, "rb") as fh:
        original = fh.read()
    ours = _pyqcrypt("check", "-r", "all", path)
    assert ours.returncode == 1 and b"nothing was written" in ours.stderr
    with open(path, "rb") as fh:
        assert fh.read() == original
    repair_both(path, "-r", "leaks")                    # -r leaks does not touch it


@pytest.mark.parametrize("args", [["-r", "foo"], ["-T", "foo"], ["-U", "-r", "all"]])
def test_bad_options_exit_1(workdir, args):
    path = make(workdir, writes=WRITES)
    theirs = subprocess.run([tool("qemu-img"), "check"] + args + [path], capture_output=True)
    ours = _pyqcrypt("check", *args, path)
    assert theirs.returncode == ours.returncode == 1, (theirs, ours)


def test_image_in_use_is_refused(workdir):
    lay = Layout(make(workdir, writes=WRITES))
    leaked(lay)
    path = lay.save()
    with open(path, "rb") as fh:
        original = fh.read()
    holder = subprocess.Popen([tool("qemu-io"), "-f", "qcow2", path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        holder.stdin.write(b"read 0 512\n")
        holder.stdin.flush()
        holder.stdout.readline()                        # qemu-io has the image open
        theirs = subprocess.run([tool("qemu-img"), "check", "-r", "leaks", path],
                                capture_output=True)
        ours = _pyqcrypt("check", "-r", "leaks", path)
    finally:
        holder.stdin.close()
        holder.wait()
    assert theirs.returncode == ours.returncode == 1
    assert b'"write" lock' in theirs.stderr and b"in use" in ours.stderr, ours.stderr
    import pyqcrypt
    with pyqcrypt.open(path, writable=True):            # a pyqcrypt writer holds it
        ours = _pyqcrypt("check", "-r", "all", path)
    assert ours.returncode == 1 and b"in use" in ours.stderr
    assert _qemu_check(path)[2] == 3                    # the leak is still there
    with open(path, "rb") as fh:
        assert fh.read()[4096:] == original[4096:]


@pytest.mark.parametrize("mode", ["leaks", "all"])
def test_extended_l2_compressed_and_v2(workdir, mode):
    """COPIED on an extended L2 entry (16 bytes wide), a leak inside a
    host cluster shared by compressed clusters (3 -> 2), a leak in a
    version 2 image (no dirty/corrupt bits to clear)."""
    lay = Layout(make(workdir, 65536, ",extended_l2=on", writes=("write -P 0x11 0 128k",),
                      name="ext.qcow2"))
    lay.put(lay.l2 + 16, ">Q", lay.q(lay.l2 + 16) & ~COPIED)
    repair_both(lay.save(), "-r", mode)
    lay = Layout(make(workdir, 4096, writes=("write -c -P 0x11 0 4k", "write -c -P 0x12 4k 4k",
                                             "write -c -P 0x13 8k 4k"), name="comp.qcow2"))
    lay.put(lay.l2 + 8, ">Q", 0)
    (_, err, rc), repaired = repair_both(lay.save(), "-r", mode)
    assert b"refcount=3 reference=2" in err and rc == 0
    qemu_io(repaired, "read -P 0x13 8k 4k", fmt="qcow2")
    lay = Layout(make(workdir, 4096, ",compat=0.10", writes=WRITES, name="v2.qcow2"))
    leaked(lay)
    repair_both(lay.save(), "-r", mode)


def test_persistent_bitmaps_refused(workdir):
    """qemu-img rewrites persistent bitmaps when it opens an image for
    writing; pyqcrypt does not repair such an image and writes nothing."""
    lay = Layout(make(workdir, writes=WRITES))
    leaked(lay)
    path = lay.save()
    qemu_img("bitmap", "--add", path, "b0")
    with open(path, "rb") as fh:
        original = fh.read()
    ours = _pyqcrypt("check", "-r", "leaks", path)
    assert ours.returncode == 1 and b"persistent bitmaps" in ours.stderr, ours.stderr
    assert len(ours.stderr.splitlines()) == 1
    with open(path, "rb") as fh:
        assert fh.read() == original
