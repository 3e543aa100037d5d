# SPDX-License-Identifier: LGPL-2.1-or-later
"""qemu-img convert's options pyqcrypt takes without effect (-m, -W, -t,
-T: checked as qemu-img checks them), implements (--target-is-zero with
-n --target-image-opts) or refuses (-c, -B, -F, -S, -C, -l, -r, --salvage,
--bitmaps, --skip-broken-bitmaps): each refusal is one line naming the
option, exit 1, no usage text, and no destination left behind."""

import os
import subprocess
import sys

import pytest

from conftest import qemu_img, qemu_io

pytestmark = pytest.mark.interop


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", "convert"] + [str(a) for a in args],
                          capture_output=True)


@pytest.fixture
def source(workdir):
    src = os.path.join(workdir, "src.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", src, "4M")
    qemu_io(src, "write -P 7 0 64k", "write -P 9 3M 64k", fmt="qcow2")
    return src


@pytest.mark.parametrize("flag", [("-c",), ("-B", "base.qcow2"), ("-F", "qcow2"), ("-S", "0"),
                                  ("-S", "4k"), ("-C",), ("-l", "snap"), ("-r", "1M"),
                                  ("--salvage",), ("--bitmaps",), ("--skip-broken-bitmaps",)],
                         ids=lambda f: f[0])
def test_refused_by_name(workdir, source, flag):
    dst = os.path.join(workdir, "out.qcow2")
    proc = _pyq(*(flag + ("-O", "qcow2", source, dst)))
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.count(b"\n") == 1 and b"usage" not in proc.stderr.lower()
    assert proc.stderr.startswith(b"pyqcrypt: %s is not supported: " % flag[0].encode())
    assert not os.path.exists(dst)


@pytest.mark.parametrize("args", [("-m", "0"), ("-m", "17"), ("-t", "bogus"), ("-T", "bogus"),
                                  ("--target-is-zero",)], ids=" ".join)
def test_checked_as_qemu_img_checks(workdir, source, args):
    theirs = qemu_img("convert", *args, "-O", "raw", source, os.path.join(workdir, "q.raw"),
                      check=False)
    dst = os.path.join(workdir, "p.raw")
    ours = _pyq(*(args + ("-O", "raw", source, dst)))
    assert ours.returncode == theirs.returncode == 1
    assert ours.stdout == theirs.stdout == b"" and ours.stderr.count(b"\n") == 1
    assert not os.path.exists(dst)


def test_accepted_without_effect(workdir, source):
    dst = os.path.join(workdir, "p.raw")
    proc = _pyq("-m", "16", "-W", "-t", "none", "-T", "writeback", "-O", "raw", source, dst)
    assert proc.returncode == 0, proc.stderr
    qemu_img("compare", "-f", "qcow2", "-F", "raw", source, dst)


def test_target_is_zero_leaves_zero_ranges_unwritten(workdir, source):
    sizes = {}
    for flag in ((), ("--target-is-zero",)):
        dst = os.path.join(workdir, "t%d.qcow2" % len(flag))
        qemu_img("create", "-q", "-f", "qcow2", dst, "4M")
        proc = _pyq(*(flag + ("-n", "--target-image-opts", source,
                              "driver=qcow2,file.filename=" + dst)))
        assert proc.returncode == 0, proc.stderr
        qemu_img("compare", "-f", "qcow2", "-F", "qcow2", source, dst)
        sizes[flag] = os.path.getsize(dst)
    assert sizes[("--target-is-zero",)] + (3 << 20) <= sizes[()]
    no_n = _pyq("--target-is-zero", "--target-image-opts", source,
                "driver=qcow2,file.filename=" + dst)
    assert no_n.returncode == 1 and b"-n" in no_n.stderr
    raw_n = _pyq("--target-is-zero", "-n", "-O", "raw", source, os.path.join(workdir, "x.raw"))
    assert raw_n.returncode == 1 and raw_n.stderr.count(b"\n") == 1
