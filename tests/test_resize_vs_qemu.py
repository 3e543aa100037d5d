# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt resize`` against ``qemu-img resize`` on copies of the same
image: the same exit code and first message, the same virtual size after,
both images clean under ``qemu-img check``, and ``qemu-img compare``
finding the same guest bytes (zeros in a grown range, also over a backing
file whose data must not show through).  Then crashes: a resize stopped at
each of its writes (every later write and sync failing too, as after a
power cut) leaves an image qemu-img calls free of corruption, with the old
data in place and either the old size or the new one."""

import os
import shutil
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt import storage
from conftest import cs_format, power_cut_at, qemu_img, qemu_io, tool

PW = b"resize-pw"


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _pyq(*args):
    return _run([sys.executable, "-m", "pyqcrypt", "resize", *args])


def _qemu(*args):
    return _run([tool("qemu-img"), "resize", *args])


def _first_error(text):
    lines = [line for line in text.splitlines() if line]
    return lines[0].split(": ", 1)[1] if lines else ""


def _vsize(path, *opts):
    out = qemu_img("info", *opts, "--output=json", path).stdout
    import json
    return json.loads(out)["virtual-size"]


def _pair(workdir, src):
    a, b = os.path.join(workdir, "q_" + os.path.basename(src)), os.path.join(workdir, "p_" + os.path.basename(src))
    shutil.copyfile(src, a)
    shutil.copyfile(src, b)
    return a, b


def _qcow2(workdir, name, size="1M", opts=(), pattern=True):
    path = os.path.join(workdir, name)
    qemu_img("create", "-q", "-f", "qcow2", *opts, path, size)
    if pattern:
        qemu_io(path, "write -P 7 0 512K", fmt="qcow2")
    return path


CASES = {
    "grow-l1": ("qcow2", ("+2G",)),                 # the L1 table grows
    "grow-small": ("qcow2", ("2M",)),
    "same": ("qcow2", ("1M",)),
    "shrink-refused": ("qcow2", ("512K",)),
    "shrink": ("qcow2", ("--shrink", "256K")),
    "shrink-relative": ("qcow2", ("--shrink", "--", "-768K")),
    "negative": ("qcow2", ("--shrink", "--", "-2M")),
    "bad-size": ("qcow2", ("+1X",)),
    "snapshots-grow": ("snap", ("+1G",)),
    "snapshots-shrink": ("snap", ("--shrink", "256K")),
    "extended-l2": ("extl2", ("+1G",)),
    "empty": ("empty", ("100M",)),
    "raw-grow": ("raw", ("-f", "raw", "+3M")),
    "raw-shrink-refused": ("raw", ("-f", "raw", "512K")),
    "raw-shrink": ("raw", ("-f", "raw", "--shrink", "512K")),
}


def _source(workdir, kind):
    if kind == "raw":
        path = os.path.join(workdir, "r.raw")
        with open(path, "wb") as fh:
            fh.write(os.urandom(1 << 20))
        return path
    if kind == "snap":
        path = _qcow2(workdir, "s.qcow2")
        qemu_img("snapshot", "-c", "one", path)
        qemu_io(path, "write -P 9 0 64K", fmt="qcow2")
        return path
    if kind == "extl2":
        return _qcow2(workdir, "e.qcow2", opts=("-o", "extended_l2=on,cluster_size=64K"))
    if kind == "empty":
        return _qcow2(workdir, "z.qcow2", size="0", pattern=False)
    return _qcow2(workdir, "q.qcow2")


@pytest.mark.parametrize("case", sorted(CASES))
def test_resize_matches_qemu_img(workdir, case):
    kind, args = CASES[case]
    a, b = _pair(workdir, _source(workdir, kind))
    theirs = _qemu(*args[:-1], a, args[-1]) if args[-1:] else None
    ours = _pyq(*args[:-1], b, args[-1])
    assert ours.returncode == theirs.returncode, (ours, theirs)
    assert ours.stdout == theirs.stdout, (ours.stdout, theirs.stdout)
    assert _first_error(ours.stderr) == _first_error(theirs.stderr), (ours.stderr, theirs.stderr)
    if kind == "raw":
        assert os.path.getsize(a) == os.path.getsize(b)
        assert qemu_img("compare", "-f", "raw", "-F", "raw", a, b, check=False).returncode == 0
        return
    assert _vsize(a) == _vsize(b)
    for path in (a, b):
        assert qemu_img("check", path, check=False).returncode == 0, qemu_img("check", path,
                                                                              check=False).stdout
    assert qemu_img("compare", "-s" if kind != "snap" else "-q", a, b, check=False).returncode == 0
    if kind == "snap":                               # the snapshot still holds its data
        qemu_img("snapshot", "-a", "one", b)
        qemu_io(b, "read -P 7 0 256K", fmt="qcow2")


def test_growing_over_a_backing_file_reads_zeros(workdir):
    base = os.path.join(workdir, "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 5 0 4M", fmt="qcow2")
    top = os.path.join(workdir, "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "1M")
    a, b = _pair(workdir, top)
    assert _qemu(a, "3M").returncode == 0
    assert _pyq(b, "3M").returncode == 0
    qemu_io(b, "read -P 5 0 1M", "read -P 0 1M 2M", fmt="qcow2")     # not the backing's 5s
    assert qemu_img("compare", a, b, check=False).returncode == 0
    assert qemu_img("check", b, check=False).returncode == 0


def test_encrypted_images_grow_without_their_secret(workdir):
    pw = os.path.join(workdir, "pw")
    with open(pw, "wb") as fh:
        fh.write(PW)
    obj = "secret,id=s0,file=%s" % pw
    q = os.path.join(workdir, "enc.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "--object", obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", q, "1M")
    opts = "driver=qcow2,file.filename=%s,encrypt.key-secret=s0" % q
    qemu_io(opts, "write -P 3 0 1M", objects=(obj,))
    assert _pyq(q, "+1G").returncode == 0
    qemu_io(opts, "read -P 3 0 1M", "read -P 0 1M 1M", objects=(obj,))
    assert _vsize(q) == (1 << 30) + (1 << 20)
    assert qemu_img("check", "--object", obj, "--image-opts", opts, check=False).returncode == 0
    # LUKS1: the file grows by the same amount; qemu-img (with the key)
    # sees the payload grow, as after its own resize of the same volume
    vol = cs_format(workdir, "v.luks", PW)
    theirs, ours = _pair(workdir, vol)
    lopts = "driver=luks,file.filename=%s,key-secret=s0"
    before = _vsize(lopts % ours, "--object", obj, "--image-opts")
    assert _pyq("-f", "luks", ours, "+1M").returncode == 0
    assert _qemu("--object", obj, "--image-opts", lopts % theirs, "+1M").returncode == 0
    assert os.path.getsize(ours) == os.path.getsize(theirs) == os.path.getsize(vol) + (1 << 20)
    assert _vsize(lopts % ours, "--object", obj, "--image-opts") == before + (1 << 20)
    qemu_io(lopts % ours, "read 0 64K", objects=(obj,))
    assert qemu_img("compare", "--object", obj, "--image-opts", lopts % ours, lopts % theirs,
                    check=False).returncode == 0


def test_bitmaps_are_refused_untouched(workdir):
    q = _qcow2(workdir, "b.qcow2")
    qemu_img("bitmap", "--add", q, "bm0")
    before = open(q, "rb").read()
    res = _pyq(q, "+1G")
    assert res.returncode == 1 and "persistent bitmaps" in res.stderr
    assert open(q, "rb").read() == before


@pytest.mark.parametrize("args", [("+2G",), ("--shrink", "256K")], ids=["grow-l1", "shrink"])
def test_a_crash_at_any_write_leaves_a_sound_image(workdir, args):
    src = _qcow2(workdir, "c.qcow2")
    qemu_img("snapshot", "-c", "keep", src)
    shrink = args[0] == "--shrink"
    new = (256 << 10) if shrink else (1 << 20) + (2 << 30)
    probe = os.path.join(workdir, "probe.qcow2")
    shutil.copyfile(src, probe)
    hook, seen = power_cut_at(1 << 30)
    with storage.injected_faults(hook):
        pyqcrypt.resize(probe, new, shrink=shrink)
    total = seen["write"]
    assert total >= 3
    for n in range(1, total + 1):
        img = os.path.join(workdir, "crash%d.qcow2" % n)
        shutil.copyfile(src, img)
        hook, _ = power_cut_at(n)
        with storage.injected_faults(hook), pytest.raises(pyqcrypt.Error):
            pyqcrypt.resize(img, new, shrink=shrink)
        res = qemu_img("check", img, check=False)
        assert res.returncode in (0, 3), (n, res.stdout, res.stderr)     # leaks at most
        size = _vsize(img)
        assert size in (1 << 20, new), (n, size)
        qemu_io(img, "read -P 7 0 256K", fmt="qcow2")
        if size == new and not shrink:
            qemu_io(img, "read -P 0 1M 1M", fmt="qcow2")
        os.unlink(img)
