# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt create -f raw`` against ``qemu-img create -f raw``: the same
"Formatting" line and exit code, the same file length (rounded up to 512
bytes), the same ``qemu-img info`` (disk size included: both write the
first block), equal contents (qemu-img compare), preallocation honoured;
and, unlike qemu-img (which truncates it), an existing file is refused
and left as it was."""

import os
import subprocess
import sys

import pytest

from conftest import qemu_img, write_file

pytestmark = pytest.mark.interop


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", "create"] + [str(a) for a in args],
                          capture_output=True)


def _info(path):
    out = qemu_img("info", "-f", "raw", path).stdout.decode()
    return [line for line in out.splitlines() if not line.startswith("image:")]


@pytest.mark.parametrize("size", ["0", "1", "1000", "4096", "1M", "3000001"])
@pytest.mark.parametrize("opts", [(), ("-f", "raw"), ("-f", "raw", "-o", "preallocation=off"),
                                  ("-f", "raw", "-o", "preallocation=falloc"),
                                  ("-f", "raw", "-o", "preallocation=full")],
                         ids=["default", "raw", "off", "falloc", "full"])
def test_same_file_as_qemu_img(workdir, size, opts):
    theirs_path = os.path.join(workdir, "q.img")
    ours_path = os.path.join(workdir, "p.img")
    theirs = qemu_img("create", *opts, theirs_path, size)
    ours = _pyq(*(opts + (ours_path, size)))
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout.replace(b"q.img", b"p.img")
    assert os.path.getsize(ours_path) == os.path.getsize(theirs_path)
    assert _info(ours_path) == _info(theirs_path)
    qemu_img("compare", "-f", "raw", "-F", "raw", theirs_path, ours_path)
    if "preallocation=full" in opts or "preallocation=falloc" in opts:
        assert os.stat(ours_path).st_blocks * 512 >= os.path.getsize(ours_path)


def test_size_option_and_quiet(workdir):
    path = os.path.join(workdir, "s.img")
    ours = _pyq("-f", "raw", "-o", "size=64k", path)
    theirs = qemu_img("create", "-f", "raw", "-o", "size=64k", os.path.join(workdir, "t.img"))
    assert ours.stdout == theirs.stdout.replace(b"t.img", b"s.img")
    assert os.path.getsize(path) == 65536
    quiet = _pyq("-q", "-f", "raw", os.path.join(workdir, "quiet.img"), "1M")
    assert quiet.returncode == 0 and quiet.stdout == b""


def test_refusals(workdir):
    bad = _pyq("-f", "raw", "-o", "preallocation=metadata", os.path.join(workdir, "m.img"), "1M")
    theirs = qemu_img("create", "-f", "raw", "-o", "preallocation=metadata",
                      os.path.join(workdir, "n.img"), "1M", check=False)
    assert bad.returncode == theirs.returncode == 1 and b"metadata" in bad.stderr
    assert not os.path.exists(os.path.join(workdir, "m.img"))
    no_size = _pyq("-f", "raw", os.path.join(workdir, "z.img"))
    assert no_size.returncode == 1 and not os.path.exists(os.path.join(workdir, "z.img"))


def test_existing_file_is_never_replaced(workdir):
    """qemu-img create truncates an existing file; pyqcrypt refuses, and the
    file keeps its bytes."""
    victim = write_file(os.path.join(workdir, "keep.img"), b"precious" * 1000)
    proc = _pyq("-f", "raw", victim, "1M")
    assert proc.returncode == 1 and proc.stdout == b""
    assert b"keep.img" in proc.stderr and proc.stderr.count(b"\n") == 1
    with open(victim, "rb") as fh:
        assert fh.read() == b"precious" * 1000
    assert sorted(os.listdir(workdir)) == ["keep.img"]
    qemu_img("create", "-q", "-f", "raw", victim, "1M")         # qemu-img's rule differs
    assert os.path.getsize(victim) == 1 << 20
