# SPDX-License-Identifier: LGPL-2.1-or-later
"""The last qemu-img 7.2 spellings of the parity table, each run through
qemu-img and pyqcrypt on copies of the same image: the verbs pyqcrypt
refuses (bench, bitmap, dd) in one line and exit 1, never a usage dump;
compare -T, amend -t and -p, create -u."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import qemu_img, tool

PW = b"options-pw"


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *args], capture_output=True,
                          stdin=subprocess.DEVNULL)


def _qemu(*args):
    return subprocess.run([tool("qemu-img"), *args], capture_output=True, stdin=subprocess.DEVNULL)


def _message(stderr):
    return stderr.decode().strip().split(": ", 1)[1]


@pytest.mark.parametrize("argv", [["bench", "-c", "1", "-f", "qcow2", "x.qcow2"],
                                  ["bitmap", "--add", "x.qcow2", "bm0"],
                                  ["dd", "if=a", "of=b", "bs=1M"]])
def test_refused_verbs_say_why_in_one_line(argv):
    res = _pyq(*argv)
    assert res.returncode == 1
    lines = res.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyqcrypt: %s is not implemented: " % argv[0])
    assert b"usage" not in res.stderr and not res.stdout


def test_compare_cache_mode(workdir):
    a = os.path.join(workdir, "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", a, "1M")
    for mode, code in (("none", 0), ("writeback", 0), ("bogus", 2)):
        ours, theirs = _pyq("compare", "-T", mode, a, a), _qemu("compare", "-T", mode, a, a)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) \
            and ours.returncode == code, (ours, theirs)
        if code:
            assert _message(ours.stderr) == _message(theirs.stderr)


def _luks_qcow2(workdir, name):
    pw = os.path.join(workdir, "pw")
    with open(pw, "wb") as fh:
        fh.write(PW)
    path = os.path.join(workdir, name)
    obj = "secret,id=s0,file=%s" % pw
    qemu_img("create", "-q", "-f", "qcow2", "--object", obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", path, "1M")
    return path, obj


def test_amend_progress_and_cache_mode(workdir):
    src, obj = _luks_qcow2(workdir, "src.qcow2")
    a, b = os.path.join(workdir, "a.qcow2"), os.path.join(workdir, "b.qcow2")
    shutil.copyfile(src, a)
    shutil.copyfile(src, b)
    args = ["--object", obj, "--image-opts", "-p", "-t", "none", "-o",
            "encrypt.state=active,encrypt.new-secret=s0,encrypt.iter-time=10"]
    theirs = _qemu("amend", *args[:-2], "driver=qcow2,file.filename=%s,encrypt.key-secret=s0" % a,
                   *args[-2:])
    ours = _pyq("amend", *args[:-2], "driver=qcow2,file.filename=%s,encrypt.key-secret=s0" % b,
                *args[-2:])
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), (ours, theirs)
    assert ours.stdout == b"    (0.00/100%)\r    (100.00/100%)\r\n"
    bad = ["amend", "-t", "bogus", "-o", "encrypt.state=inactive", a]
    ours, theirs = _pyq(*bad), _qemu(*bad)
    assert ours.returncode == theirs.returncode == 1
    assert _message(ours.stderr) == _message(theirs.stderr) == "Invalid cache option: bogus"


def test_create_unsafe_backing(workdir):
    for tool_run, name in ((_qemu, "q.qcow2"), (_pyq, "p.qcow2")):
        path = os.path.join(workdir, name)
        res = tool_run("create", "-q", "-f", "qcow2", "-u", "-b", "later.qcow2", "-F", "qcow2",
                       path, "1M")
        assert res.returncode == 0, res
        info = qemu_img("info", "-U", "--output=json", path).stdout
        info = info.decode() if isinstance(info, bytes) else info
        assert '"backing-filename": "later.qcow2"' in info
        res = tool_run("create", "-q", "-f", "qcow2", "-u", "-b", "later.qcow2", "-F", "qcow2",
                       path + ".nosize")
        assert res.returncode == 1 and b"needs a size parameter" in res.stderr
    res = _pyq("create", "-q", "-f", "qcow2", "-b", "later.qcow2", "-F", "qcow2",
               os.path.join(workdir, "safe.qcow2"), "1M")
    assert res.returncode == 1          # without -u the backing file must exist
