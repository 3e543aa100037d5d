# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt snapshot`` against ``qemu-img snapshot`` on copies of the
same image (plain, qcow2-luks, extended L2, 4 KiB clusters): every step of
a script of -c / -l / -d / -a (with qemu-io writes in between) gives the
same exit code and stdout on both (dates masked where the snapshots were
made at different moments), ``qemu-img check`` finds pyqcrypt's copy clean
and, at the end, every snapshot applied by qemu-img on each copy reads the
same guest bytes.  Then crashes: a create, delete or apply stopped at each
of its writes leaves an image with leaks at most, the active data of
before or after, and every listed snapshot holding its data."""

import os
import re
import shutil
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt import storage
from conftest import power_cut_at, qemu_img, qemu_io, tool

PW = b"snap-pw"
DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


class Image:
    """One copy of a test image and the arguments that name it."""

    def __init__(self, path, secret=None):
        self.path = path
        self.secret = secret
        if secret:
            self.objects = ["--object", "secret,id=s0,file=%s" % secret]
            self.spec = "driver=qcow2,file.filename=%s,encrypt.key-secret=s0" % path
            self.args = self.objects + ["--image-opts", self.spec]
        else:
            self.objects, self.spec, self.args = [], None, [path]

    def copy(self, suffix):
        new = self.path + suffix
        shutil.copyfile(self.path, new)
        return Image(new, self.secret)

    def io(self, *cmds, check=True):
        if self.secret:
            return qemu_io(self.spec, *cmds, objects=[self.objects[1]], check=check)
        return qemu_io(self.path, *cmds, fmt="qcow2", check=check)


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _snapshot(tool_args, img, *opts):
    return _run(tool_args + ["snapshot"] + img.objects + list(opts) +
                (["--image-opts", img.spec] if img.spec else [img.path]))


def _qemu(img, *opts):
    return _snapshot([tool("qemu-img")], img, *opts)


def _pyq(img, *opts):
    return _snapshot([sys.executable, "-m", "pyqcrypt"], img, *opts)


def _masked(text):
    return DATE.sub("DATE", text)


def _make(workdir, kind):
    path = os.path.join(workdir, kind + ".qcow2")
    opts = {"plain": [], "l2ext": ["-o", "extended_l2=on,cluster_size=64k"],
            "c4k": ["-o", "cluster_size=4096"], "v2": ["-o", "compat=0.10"],
            "rc64": ["-o", "refcount_bits=64,cluster_size=512"]}.get(kind)
    secret = None
    if kind in ("luks", "aes"):
        secret = os.path.join(workdir, "pw")
        with open(secret, "wb") as f:
            f.write(PW)
        opts = ["--object", "secret,id=s0,file=%s" % secret, "-o",
                "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10" if kind == "luks"
                else "encrypt.format=aes,encrypt.key-secret=s0"]
    qemu_img("create", "-q", "-f", "qcow2", *opts, path, "4M")
    img = Image(path, secret)
    img.io("write -P 1 0 128k", "write -P 2 1M 64k", "write -P 9 3M 4k")
    if not secret:          # QEMU writes no compressed cluster into an encrypted image
        img.io("write -c -P 8 2M 64k")
    return img


# (qemu-io commands run on both copies before it, snapshot options)
SCRIPT = [
    ((), ("-l",)),
    ((), ("-c", "s1")),
    (("write -P 3 0 64k", "write -P 4 2M 4k"), ("-c", "s2")),
    (("write -z 1M 64k",), ("-c", "s1")),
    (("write -P 5 64k 64k", "write -P 6 68k 2k"), ("-l",)),
    ((), ("-d", "s1")),
    ((), ("-d", "1")),
    (("write -P 7 0 4k",), ("-a", "s2")),
    ((), ("-a", "3")),
    (("discard 0 128k",), ("-a", "nope")),
    ((), ("-d", "nope")),
    ((), ("-c", "x" * 300)),
    ((), ("-q", "-l")),
    ((), ("-U", "-l")),
    ((), ("-U", "-c", "shared")),
    ((), ()),
    ((), ("-l", "-d", "s2")),
    ((), ("-d", "s2")),
    ((), ("-l",)),
]


def _assert_same(a, b, step):
    assert b.returncode == a.returncode, (step, a.stderr, b.stderr)
    assert _masked(b.stdout) == _masked(a.stdout), step
    if a.returncode:
        assert b.stderr.startswith("pyqcrypt: ") and not a.stdout and not b.stdout, (step, b.stderr)


def _check_clean(img):
    res = qemu_img("check", *img.objects, *(["--image-opts", img.spec] if img.spec else [img.path]),
                   check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def _contents(img, workdir, name):
    """The guest bytes of *img*, as qemu-img converts them to raw."""
    out = os.path.join(workdir, name + ".raw")
    qemu_img("convert", *img.objects, "-O", "raw",
             *(["--image-opts", img.spec] if img.spec else ["-f", "qcow2", img.path]), out)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def _snapshot_ids(img):
    lines = _qemu(img, "-l").stdout.splitlines()[2:]
    return [line.split()[0] for line in lines]


@pytest.mark.parametrize("kind", ["plain", "luks", "aes", "l2ext", "c4k", "v2", "rc64"])
def test_snapshot_script_matches_qemu_img(workdir, kind):
    src = _make(workdir, kind)
    a, b = src.copy(".qemu"), src.copy(".pyq")
    for step, (cmds, opts) in enumerate(SCRIPT):
        for img in (a, b):
            for c in cmds:
                img.io(c)
        ra, rb = _qemu(a, *opts), _pyq(b, *opts)
        _assert_same(ra, rb, (step, opts))
        _check_clean(b)
        assert _masked(_qemu(b, "-l").stdout) == _masked(_qemu(a, "-l").stdout), step
    assert _contents(a, workdir, "a") == _contents(b, workdir, "b")
    ids = _snapshot_ids(a)
    assert len(ids) == 2
    for sid in ids:
        ca, cb = a.copy(".a" + sid), b.copy(".a" + sid)
        for img in (ca, cb):
            assert _qemu(img, "-a", sid).returncode == 0
        assert _contents(ca, workdir, "a") == _contents(cb, workdir, "b"), sid


@pytest.mark.parametrize("kind", ["plain", "luks"])
def test_list_of_qemu_made_snapshots_is_byte_identical(workdir, kind):
    img = _make(workdir, kind)
    assert _pyq(img, "-l").stdout == ""           # no snapshots: nothing printed
    for name in ("first", "a much longer snapshot name than the column", "first", ""):
        assert _qemu(img, "-c", name).returncode == 0
    img.io("write -P 8 0 64k")
    assert _qemu(img, "-d", "first").returncode == 0
    ra, rb = _qemu(img, "-l"), _pyq(img, "-l")
    assert (rb.returncode, rb.stdout) == (ra.returncode, ra.stdout)
    assert rb.stdout.startswith("Snapshot list:\nID        TAG")


def test_formats_without_snapshots(workdir):
    raw = Image(os.path.join(workdir, "r.raw"))
    with open(raw.path, "wb") as f:
        f.truncate(1 << 20)
    for opts in (("-l",), ("-c", "s"), ("-d", "s"), ("-a", "s")):
        ra = _run([tool("qemu-img"), "snapshot", *opts, raw.path])
        rb = _pyq(raw, *opts)
        assert (rb.returncode, rb.stdout) == (ra.returncode, ra.stdout), opts
        if ra.returncode:
            assert _first_error(rb.stderr) == _first_error(ra.stderr), opts


@pytest.mark.parametrize("resize", [("3M",), ("--shrink", "512k")], ids=["grown", "shrunk"])
def test_apply_restores_the_snapshot_disk_size(workdir, resize):
    src = Image(os.path.join(workdir, "z.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", src.path, "1M")
    src.io("write -P 1 0 64k", "write -P 3 960k 64k")
    assert _qemu(src, "-c", "s").returncode == 0
    qemu_img("resize", "-q", src.path, *resize)
    src.io("write -P 2 0 4k")
    a, b = src.copy(".qemu"), src.copy(".pyq")
    ra, rb = _qemu(a, "-a", "s"), _pyq(b, "-a", "s")
    assert (rb.returncode, rb.stdout) == (ra.returncode, ra.stdout) == (0, "")
    _check_clean(b)
    assert len(_contents(b, workdir, "b")) == 1 << 20
    assert _contents(a, workdir, "a") == _contents(b, workdir, "b")


def test_refcount_overflow_refused_as_qemu_img_refuses_it(workdir):
    src = Image(os.path.join(workdir, "rc1.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", src.path, "1M")
    src.io("write -P 1 0 64k")
    a, b = src.copy(".qemu"), src.copy(".pyq")
    ra, rb = _qemu(a, "-c", "s"), _pyq(b, "-c", "s")
    assert (rb.returncode, rb.stdout) == (ra.returncode, ra.stdout) and ra.returncode == 1
    assert "overflow" in rb.stderr
    with open(src.path, "rb") as f, open(b.path, "rb") as g:
        assert f.read() == g.read()                 # untouched (qemu-img leaks a cluster)
    _check_clean(b)


def test_a_refcount_too_low_is_refused_before_any_write(workdir):
    """A data cluster whose refcount says 0 though two L1 tables reach
    it: deleting the snapshot would take it below 0; one line, no write."""
    import json
    import struct
    src = Image(os.path.join(workdir, "low.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", src.path, "1M")
    src.io("write -P 1 0 64k")
    assert _qemu(src, "-c", "s").returncode == 0
    host = json.loads(qemu_img("map", "--output=json", src.path).stdout)[0]["offset"]
    with open(src.path, "r+b") as f:
        head = f.read(64)
        table = struct.unpack_from(">Q", head, 48)[0]
        f.seek(table)
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(block + 2 * (host >> 16))            # 16-bit refcounts, 64 KiB clusters
        f.write(b"\0\0")
    with open(src.path, "rb") as f:
        before = f.read()
    res = _pyq(src, "-d", "s")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("pyqcrypt: ") and "negative refcount" in res.stderr
    with open(src.path, "rb") as f:
        assert f.read() == before


def _first_error(text):
    lines = [line for line in text.splitlines() if line.startswith(("qemu-img: ", "pyqcrypt: "))]
    return lines[0].split(": ", 1)[1] if lines else ""


# what each state reads: (qemu-io read commands)
KEEP = ("read -P 1 0 128k",)
ACTIVE = ("read -P 2 0 64k", "read -P 1 64k 64k")


def _holds(img, reads):
    proc = img.io(*reads, check=False)
    return proc.returncode == 0 and "failed" not in (proc.stdout + proc.stderr).lower()


@pytest.mark.parametrize("opts", [(), ("-o", "extended_l2=on,cluster_size=16k")], ids=["plain", "l2ext"])
@pytest.mark.parametrize("action,name", [("create", "new"), ("delete", "keep"), ("apply", "keep")])
def test_a_crash_at_any_write_leaves_a_sound_image(workdir, action, name, opts):
    from pyqcrypt.qcow2.snapshot_ops import change_snapshots
    src = Image(os.path.join(workdir, "c.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", *opts, src.path, "1M")
    src.io("write -P 1 0 128k")
    assert _qemu(src, "-c", "keep").returncode == 0
    src.io("write -P 2 0 64k")
    probe = src.copy(".probe")
    hook, seen = power_cut_at(1 << 30)
    with storage.injected_faults(hook):
        change_snapshots(probe.path, action, name)
    total = seen["write"]
    assert total >= 3
    after = KEEP if action == "apply" else ACTIVE
    for n in range(1, total + 1):
        img = src.copy(".crash%d" % n)
        hook, _ = power_cut_at(n)
        with storage.injected_faults(hook), pytest.raises(pyqcrypt.Error):
            change_snapshots(img.path, action, name)
        res = qemu_img("check", img.path, check=False)
        assert res.returncode in (0, 3), (n, res.stdout, res.stderr)     # leaks at most
        assert _holds(img, ACTIVE) or _holds(img, after), n
        listing = _qemu(img, "-l").stdout.splitlines()[2:]
        for line in listing:
            sid, tag = line.split()[:2]
            probe = img.copy(".s" + sid)
            assert _qemu(probe, "-a", sid).returncode == 0
            assert _holds(probe, KEEP if tag == "keep" else ACTIVE), (n, tag)
        os.unlink(img.path)


def test_pyqcrypt_writes_keep_a_pyqcrypt_snapshot(workdir):
    """A snapshot pyqcrypt made survives pyqcrypt's own writes to the
    active layer (copy-on-write of what it shares), and applying it with
    pyqcrypt brings its data back."""
    img = Image(os.path.join(workdir, "w.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", img.path, "2M")
    img.io("write -P 1 0 192k")
    assert _pyq(img, "-c", "s").returncode == 0
    with pyqcrypt.open(img.path, writable=True) as disk:
        disk.write(0, b"\x05" * 4096)
        disk.write(1 << 20, b"\x06" * 4096)
    _check_clean(img)
    img.io("read -P 5 0 4k", "read -P 1 4k 188k", "read -P 6 1M 4k")
    assert _pyq(img, "-a", "s").returncode == 0
    _check_clean(img)
    img.io("read -P 1 0 192k", "read -P 0 1M 4k")
