# SPDX-License-Identifier: LGPL-2.1-or-later
"""Small things a conversion must get right (issue 21, item 5): a missing
source is "No such file", '-' is not a destination, a source that is not
whole sectors is said to be rounded (and the rounding reads as zeros), and
a conversion killed half-way leaves one visible temporary per file, never
a temporary of a temporary."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import qemu_img, qemu_secret, tool, write_file

PW = b"edges passphrase"


def pyq(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + [str(a) for a in args],
                          capture_output=True, text=True, cwd=cwd)


def test_missing_source_is_no_such_file(workdir):
    for extra in (["--keep-ciphertext", "-O", "qcow2"], ["-O", "raw"]):
        proc = pyq("convert", *extra, os.path.join(workdir, "nosuch.luks"),
                   os.path.join(workdir, "x.out"))
        assert proc.returncode == 1 and "No such file or directory" in proc.stderr, proc.stderr
    assert os.listdir(workdir) == []


def test_dash_is_not_a_destination(workdir):
    raw = write_file(os.path.join(workdir, "p.raw"), os.urandom(4096))
    proc = pyq("convert", "-O", "raw", raw, "-", cwd=workdir)
    assert proc.returncode == 1 and "'-' is not a destination" in proc.stderr, proc.stderr
    assert not os.path.exists(os.path.join(workdir, "-"))


@pytest.mark.interop
def test_partial_sector_source_is_rounded_with_zeros_and_said(workdir):
    data = os.urandom(1000)
    raw = write_file(os.path.join(workdir, "p.raw"), data)
    obj = qemu_secret(workdir, PW, "s")
    out = os.path.join(workdir, "o.luks")
    proc = pyq("convert", "--object", obj, "-O", "luks", "-o", "key-secret=s,iter-time=10", raw, out)
    assert proc.returncode == 0, proc.stderr
    assert "holds 1000 bytes" in proc.stderr and "1024 bytes" in proc.stderr, proc.stderr
    back = os.path.join(workdir, "back.raw")
    qemu_img("convert", "--object", obj, "--image-opts",
             "driver=luks,file.filename=%s,key-secret=s" % out, "-O", "raw", back)
    with open(back, "rb") as fh:
        assert fh.read() == data + bytes(24)


@pytest.mark.interop
@pytest.mark.parametrize("fmt", ["luks", "luks2"])
def test_killed_conversion_leaves_single_suffixed_temporaries(workdir, fmt):
    raw = write_file(os.path.join(workdir, "p.raw"), os.urandom(1 << 20))
    obj = qemu_secret(workdir, PW, "s")
    out = os.path.join(workdir, "o.vol")
    opts = "key-secret=s,iter-time=10" + (",pbkdf=pbkdf2,pbkdf-force-iterations=1000"
                                           if fmt == "luks2" else "")
    cmd = [tool("strace"), "-f", "-o", "/dev/null", "-e", "trace=pwrite64,pwritev,write",
           "-e", "inject=pwrite64,pwritev,write:signal=KILL:when=6",
           sys.executable, "-m", "pyqcrypt", "convert", "--object", obj, "-O", fmt, "-o", opts,
           raw, out]
    proc = subprocess.run(cmd, capture_output=True)
    assert proc.returncode in (-9, 137), proc.stderr
    left = [n for n in os.listdir(workdir) if n.startswith("o.vol")]
    assert left and all(n.count(".pyqcrypt-") == 1 for n in left), left
    assert "o.vol" not in left
    # the next run names what was left, and works
    proc = pyq("convert", "--object", obj, "-O", fmt, "-o", opts, raw, out)
    assert proc.returncode == 0 and "left over" in proc.stderr, proc.stderr
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.interop
def test_backing_file_that_is_no_image_is_read_with_a_warning(workdir):
    """A backing file outside the image's directory that is no image (like
    /etc/shadow) is read as qemu-img reads it, with a warning; a raw base
    declared beside the overlay reads without one."""
    outside = os.path.join(workdir, "elsewhere")
    os.mkdir(outside)
    secret = write_file(os.path.join(outside, "shadow"), b"root:x:0:0\n" + bytes(4085))
    top = os.path.join(workdir, "sub", "top.qcow2")
    os.mkdir(os.path.dirname(top))
    qemu_img("create", "-f", "qcow2", "-b", secret, "-F", "raw", top, "1M")
    out = os.path.join(workdir, "o.raw")
    proc = pyq("convert", "-O", "raw", top, out)
    assert proc.returncode == 0, proc.stderr
    assert "not an image pyqcrypt can identify and lies outside" in proc.stderr, proc.stderr
    theirs = os.path.join(workdir, "q.raw")
    qemu_img("convert", "-O", "raw", top, theirs)
    with open(out, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()                     # the same bytes as qemu-img
    base = write_file(os.path.join(workdir, "sub", "base.raw"), os.urandom(4096))
    top2 = os.path.join(workdir, "sub", "top2.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top2, "1M")
    proc = pyq("convert", "-O", "raw", top2, os.path.join(workdir, "o2.raw"))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert base


@pytest.mark.interop
def test_relative_data_file_lives_beside_the_image_and_is_stored_as_given(workdir):
    from conftest import cs_format
    vol = cs_format(workdir, "v.luks", PW, size=4 << 20)
    sub = os.path.join(workdir, "sub")
    os.mkdir(sub)
    img = os.path.join(sub, "k.qcow2")
    here = os.path.join(workdir, "cwd")
    os.mkdir(here)
    proc = pyq("convert", "--keep-ciphertext", "--verify", "-O", "qcow2", "-o", "data_file=rel.data",
               vol, img, cwd=here)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(here) == [] and sorted(os.listdir(sub)) == ["k.qcow2", "rel.data"]
    info = qemu_img("info", "--output", "json", img).stdout.decode()
    assert '"data-file": "rel.data"' in info, info
