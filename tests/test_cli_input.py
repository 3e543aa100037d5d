# SPDX-License-Identifier: LGPL-2.1-or-later
"""Bad command-line input: one clear line and the right exit code, never a
traceback, and never an image neither tool can open.

Each case was a traceback, a silently ignored option or a wrong exit code.
"""

import os
import struct
import subprocess
import sys

import pytest

import pyqcrypt

from conftest import qemu_img, write_file

PW = b"input pass"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)], capture_output=True,
                          stdin=subprocess.DEVNULL, cwd=cwd)


@pytest.fixture
def images(workdir):
    key = write_file(os.path.join(workdir, "k"), PW)
    wrong = write_file(os.path.join(workdir, "wrong"), b"not it")
    qcow = os.path.join(workdir, "e.qcow2")
    pyqcrypt.create(qcow, 4 << 20, "qcow2", passphrase=PW, iterations=1000)
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, 1 << 20, "luks", passphrase=PW, iterations=1000)
    return {"k": key, "wrong": wrong, "qcow": qcow, "vol": vol, "dir": workdir}


AMEND = ["amend", "--object", "secret,id=s,file={k}", "--image-opts",
         "driver=qcow2,file.filename={qcow},encrypt.key-secret=s"]

CASES = [
    (AMEND + ["-o", "encrypt.state=active,encrypt.new-secret=s,encrypt.keyslot=abc"], 1,
     "encrypt.keyslot must be an integer"),
    (AMEND + ["-o", "encrypt.state=active,encrypt.new-secret=s,encrypt.keyslot=8"], 1,
     "encrypt.keyslot must be 0..7"),
    (AMEND + ["-o", "encrypt.state=inactive,encrypt.keyslot=9"], 1, "must be 0..7"),
    (AMEND + ["-o", "encrypt.state=active,encrypt.new-secret=s,encrypt.iter-time=abc"], 1,
     "encrypt.iter-time must be an integer"),
    (["create", "-f", "qcow2", "-o", "refcount_bits=x", "{dir}/x.qcow2", "1M"], 1,
     "refcount_bits must be an integer"),
    (["create", "-f", "qcow2", "{dir}/x.qcow2", "7E"], 1, "too large"),
    (["create", "-f", "qcow2", "{dir}/x.qcow2", "1E"], 1, "too large"),
    (["create", "-f", "qcow2", "{dir}/x.qcow2", "4P"], 1, "too large"),
    (["create", "-f", "qcow2", "{dir}/x.qcow2", "8E"], 1, "invalid size"),
    (["create", "-f", "qcow2", "{dir}/x.qcow2", "0.3K"], 1, "not a whole number of bytes"),
    (["info", "-f", "qcow2", "{vol}"], 1, "is not in qcow2 format"),
    (["info", "-f", "luks", "{qcow}"], 1, "is not in luks format"),
    (["info", "-f", "vmdk", "{qcow}"], 1, "unknown format"),
    (["check", "-f", "raw", "{qcow}"], 63, "does not support checks"),     # qemu-img's 63
    (["check", "{vol}"], 63, "does not support checks"),
    (["check", "-f", "qcow2", "{vol}"], 1, "is not in qcow2 format"),
    (["amend", "-f", "luks", "--object", "secret,id=s,file={k}", "-o",
      "encrypt.state=inactive,encrypt.keyslot=0", "{qcow}"], 1, "is not in luks format"),
    (["convert", "--target-image-opts", "{qcow}", "driver=raw,file.filename={dir}/t.raw"], 1,
     "--target-image-opts needs -n"),
    (["convert", "-n", "-O", "luks", "--target-image-opts", "{qcow}",
      "driver=raw,file.filename={k}"], 1, "-O luks contradicts the target's driver=raw"),
    (["convert", "-n", "--target-image-opts", "{k}", "driver=raw,file.filename={k}"], 1,
     "is the source"),
    (["create", "-f", "qcow2", "-o", "preallocation=full", "{dir}/x.qcow2", "1M"], 1,
     "preallocation=full is not supported"),
    (["convert", "-O", "qcow2", "-o", "preallocation=full", "{k}", "{dir}/x.qcow2"], 1,
     "preallocation=full is not supported"),
    (["convert", "--image-opts", "-O", "raw", "driver=raw,file.filename={k},bogus=1",
      "{dir}/x.raw"], 1, "unknown option(s) for --image-opts (driver=raw): bogus"),
    (["convert", "--keep-ciphertext", "-O", "luks", "--header", "{dir}/h", "{qcow}",
      "{dir}/other"], 1, "give no other destination"),
    (["check", "{dir}/missing.qcow2"], 1, "No such file or directory"),
    (["test-passphrase", "--key-file", "{k}", "-S", "3", "{vol}"], 1, "keyslot 3"),
    (["test-passphrase", "--key-file", "{wrong}", "{vol}"], 2, "No key available"),
    (["--debug", "test-passphrase", "--key-file", "{wrong}", "{vol}"], 2, "No key available"),
]


@pytest.mark.parametrize("args,code,message", CASES, ids=[" ".join(c[0][:2]) + " #%d" % i
                                                           for i, c in enumerate(CASES)])
def test_bad_input_is_one_clear_line(images, args, code, message):
    proc = cli(*[a.format(**images) for a in args])
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert message in err, err
    if "--debug" not in args:
        assert "Traceback" not in err and err.count("\n") == 1, err
    assert not os.path.exists(os.path.join(images["dir"], "x.qcow2"))


@pytest.mark.parametrize("text,size", [
    ("9007199254740993", 9007199254740993),         # 2**53 + 1: a float would say ...992
    ("9223372036854775807", (1 << 63) - 1),
    ("1.5G", 3 << 29), ("1.5k", 1536), ("0.5K", 512), ("2.25M", 9 << 18), ("8EiB", None),
    ("7.999999999999999999E", None), ("1e3", None), ("-1", None), ("0.3K", None),
    ("512M", 512 << 20), ("10g", 10 << 30), ("1TB", 1 << 40), ("100b", 100),
])
def test_parse_size_is_exact(text, size):
    """Sizes are parsed in integer arithmetic; a decimal only when it comes
    to a whole number of bytes."""
    from pyqcrypt.cli.common import parse_size
    if size is None:
        with pytest.raises(pyqcrypt.Error, match="invalid size"):
            parse_size(text)
    else:
        assert parse_size(text) == size


def test_info_and_check_honour_format_and_force_share(images):
    """-f forces the format (raw shows any file as raw, as qemu-img does),
    -U reads without the lock a writer's lock would refuse."""
    import json
    qcow, vol = images["qcow"], images["vol"]
    proc = cli("info", "--output", "json", "-f", "raw", qcow)
    info = json.loads(proc.stdout)
    assert proc.returncode == 0 and info["format"] == "raw"
    assert info["virtual-size"] == os.path.getsize(qcow)
    proc = cli("info", "--output", "json", "-f", "luks", vol)
    assert proc.returncode == 0 and json.loads(proc.stdout)["format"] == "luks"
    with pyqcrypt.open(qcow, passphrase=PW, writable=True):       # holds QEMU's write lock
        for cmd in ("info", "check"):
            proc = cli(cmd, qcow)
            assert proc.returncode == 1 and "is in use" in proc.stderr.decode(), (cmd, proc.stderr)
            proc = cli(cmd, "-U", qcow)
            assert proc.returncode == 0, (cmd, proc.stderr)
    assert cli("check", "-f", "qcow2", qcow).returncode == 0


def test_sizes_round_up_to_a_sector_like_qemu_img(workdir):
    ours, theirs = os.path.join(workdir, "ours.qcow2"), os.path.join(workdir, "theirs.qcow2")
    assert cli("create", "-q", "-f", "qcow2", ours, "1000").returncode == 0
    qemu_img("create", "-q", "-f", "qcow2", theirs, "1000")
    info = [qemu_img("info", "--output=json", p).stdout for p in (ours, theirs)]
    assert b'"virtual-size": 1024' in info[0] and b'"virtual-size": 1024' in info[1]


def test_keyslot_change_refused_on_an_image_marked_corrupt(images):
    qcow = images["qcow"]
    with open(qcow, "r+b") as fh:
        fh.seek(72)
        bits = struct.unpack(">Q", fh.read(8))[0]
        fh.seek(72)
        fh.write(struct.pack(">Q", bits | 2))              # incompatible bit 1: corrupt
    before = open(qcow, "rb").read()
    new = write_file(os.path.join(images["dir"], "new"), b"new pass")
    proc = cli("add-key", "--key-file", images["k"], "--pbkdf-force-iterations", 1000, qcow, new)
    assert proc.returncode == 1 and "marked corrupt" in proc.stderr.decode()
    assert open(qcow, "rb").read() == before


@pytest.mark.parametrize("how", ["json", "json+image-opts", "json-bad-driver", "json-not-json"])
def test_convert_takes_a_json_filename_as_qemu_img_does(images, how):
    """``json:{...}`` source names (qemu-img's, nested objects as dotted
    keys): both tools succeed or fail alike, and the plaintext they write
    is the same."""
    import json
    with pyqcrypt.open(images["qcow"], passphrase=PW, writable=True) as img:
        img.write(70000, b"through json" * 500)
    tree = {"driver": "qcow2", "encrypt": {"key-secret": "s"},
            "file": {"driver": "nbd" if how == "json-bad-driver" else "file",
                     "filename": images["qcow"]}}
    name = "json:" + (json.dumps(tree) if how != "json-not-json" else "{driver")
    extra = ["--image-opts"] if how == "json+image-opts" else []
    obj = ["--object", "secret,id=s,file=%s" % images["k"]]
    outs = [os.path.join(images["dir"], n) for n in ("q.raw", "p.raw")]
    q = subprocess.run(["qemu-img", "convert", *obj, *extra, "-O", "raw", name, outs[0]],
                       capture_output=True)
    p = cli("convert", *obj, *extra, "-O", "raw", name, outs[1])
    assert b"Traceback" not in p.stderr
    assert (q.returncode == 0) == (p.returncode == 0), (q.stderr, p.stderr)
    if q.returncode == 0:
        with open(outs[0], "rb") as a, open(outs[1], "rb") as b:
            assert a.read() == b.read()
    else:
        assert not os.path.exists(outs[1]) and p.stderr.count(b"\n") == 1, p.stderr
