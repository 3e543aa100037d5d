# SPDX-License-Identifier: LGPL-2.1-or-later
"""Extended L2 overlays over backing files, against qemu-img and qemu-io 7.2.

A subcluster with neither its allocation nor its zero bit set reads from
the backing file.  qemu's writes into such an overlay (partial subclusters
are completed from the backing, zero writes and discards hide it) read back
through pyqcrypt byte for byte; our writes, with the same copy-on-write,
read back through qemu over the whole chain and leave ``qemu-img check``
clean.  Layers: raw, plain qcow2 and qcow2-luks bases under plain and LUKS
overlays, each with its own secret, including a base shorter than its
overlay.
"""

import json
import os
import subprocess
import sys

import pytest

import pyqcrypt

from conftest import qemu_img, qemu_io, qemu_secret, write_file

pytestmark = pytest.mark.interop

MiB = 1 << 20
SIZE = 12 * MiB
PW_BASE, PW_TOP = b"base secret", b"top secret"

# (id, cluster size, base format, base encrypted, overlay encrypted, base size);
# the overlay is SIZE or 16 clusters, whichever is larger.
CASES = [("64k-plain-over-raw", 64 << 10, "raw", False, False, SIZE),
         ("32k-luks-over-luks", 32 << 10, "qcow2", True, True, SIZE),
         ("64k-luks-over-plain-short", 64 << 10, "qcow2", False, True, 7 * MiB + 4096),
         ("2M-plain-over-luks", 2 << 20, "qcow2", True, False, SIZE)]


class Chain:
    def __init__(self, workdir, cs, base_fmt, base_enc, top_enc, base_size):
        self.workdir, self.cs, self.sc = workdir, cs, cs // 32
        self.size = size = max(SIZE, 16 * cs)
        self.base_fmt, self.base_enc, self.top_enc = base_fmt, base_enc, top_enc
        self.base = os.path.join(workdir, "base." + base_fmt)
        self.top = os.path.join(workdir, "top.qcow2")
        self.objs = [qemu_secret(workdir, PW_BASE, "a"), qemu_secret(workdir, PW_TOP, "b")]
        data = os.urandom(base_size)
        src = write_file(os.path.join(workdir, "base-src.raw"), data)
        if base_fmt == "raw":
            os.rename(src, self.base)
        else:
            opts = ["-o", "encrypt.format=luks,encrypt.key-secret=a,encrypt.iter-time=10"] \
                if base_enc else []
            qemu_img("convert", "--object", self.objs[0], "-O", "qcow2", *opts, src, self.base)
            os.unlink(src)
        self.model = bytearray(data[:size]) + bytearray(max(0, size - base_size))

    def create_top(self, ours=False):
        opts = "extended_l2=on,cluster_size=%d" % self.cs
        if self.top_enc:
            opts += ",encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10"
        args = ["create", "-f", "qcow2", "--object", self.objs[1], "-o", opts, "-b",
                os.path.basename(self.base), "-F", self.base_fmt, self.top, str(self.size)]
        if ours:
            proc = subprocess.run([sys.executable, "-m", "pyqcrypt"] + args, capture_output=True,
                                  text=True, cwd=self.workdir)
            assert proc.returncode == 0, proc.stderr
        else:
            qemu_img(*args)

    def opts(self):
        o = "driver=qcow2,file.filename=%s" % self.top
        if self.top_enc:
            o += ",encrypt.key-secret=b"
        if self.base_enc:
            o += ",backing.encrypt.key-secret=a"
        return o

    def io(self, *cmds):
        return qemu_io(self.opts(), *cmds, objects=self.objs)

    def flat(self):
        out = os.path.join(self.workdir, "flat.raw")
        if os.path.exists(out):
            os.unlink(out)
        qemu_img("convert", "--object", self.objs[0], "--object", self.objs[1], "--image-opts",
                 self.opts(), "-O", "raw", out)
        with open(out, "rb") as fh:
            data = fh.read()
        os.unlink(out)
        return data

    def check(self):
        proc = qemu_img("check", "--output=json", "--object", self.objs[0], "--object",
                        self.objs[1], "--image-opts", self.opts(), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report

    def open(self, writable=False):
        return pyqcrypt.open(self.top, passphrase=PW_TOP if self.top_enc else None,
                             backing_passphrase=PW_BASE if self.base_enc else None,
                             writable=writable)


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def chain(request, workdir):
    return Chain(workdir, *request.param[1:])


def _apply(model, off, n, data):
    model[off:off + n] = data if data is not None else bytes(n)


def _qemu_ops(cs):
    sc = cs // 32
    return [("write -P 0x21 %d %d", 1000, 3000),                   # partial subclusters 0-1
            ("write -P 0x22 %d %d", cs + 3 * sc + 17, 5 * sc),      # across subclusters
            ("write -P 0x23 %d %d", 3 * cs - 100, cs + 300),        # across clusters
            ("write -z %d %d", cs + 9 * sc, 2 * sc),               # whole subclusters: zero bits
            ("write -z %d %d", 5 * cs + 7, 100),                   # inside a subcluster
            ("write -z -u %d %d", 8 * cs, cs),                     # a whole cluster, unmapped
            ("discard %d %d", 10 * cs, cs),                        # hides the backing too
            ("write -P 0x24 %d %d", 7 * MiB - 50, 3 * sc)]          # past a short base's end


def _qemu_fill(ch):
    for cmd, off, n in _qemu_ops(ch.cs):
        ch.io(cmd % (off, n))
        byte = int(cmd.split()[2], 16) if "-P" in cmd else None
        _apply(ch.model, off, n, bytes([byte]) * n if byte is not None else None)


def test_qemu_writes_read_back(chain):
    chain.create_top()
    _qemu_fill(chain)
    assert chain.flat() == bytes(chain.model)            # the model is qemu's view
    with chain.open() as img:
        assert img.read(0, chain.size) == bytes(chain.model)
        sc = chain.sc
        for off, n in ((999, 3), (chain.cs + 3 * sc + 10, 40), (5 * chain.cs, sc + 9)):
            assert img.read(off, n) == bytes(chain.model[off:off + n])


def _our_ops(ch, img):
    cs, sc = ch.cs, ch.sc
    jobs = [(7, os.urandom(10)),                          # qemu-allocated subcluster
            (cs + 14 * sc + 3, os.urandom(sc)),           # allocated cluster, unallocated subclusters
            (cs + 9 * sc + 100, os.urandom(50)),          # into zero subclusters
            (4 * cs + 5 * sc + 7, os.urandom(100)),       # new cluster, one partial subcluster
            (6 * cs - 1000, os.urandom(2 * cs + 2000)),   # new clusters, partial ends
            (ch.size - 5 * sc - 3, os.urandom(5 * sc))]      # the image's last cluster
    for off, data in jobs:
        img.write(off, data)
        _apply(ch.model, off, len(data), data)
    for off, n, unmap in ((11 * cs + sc + 3, 3 * sc, False), (12 * cs, cs, True), (20, 9, False)):
        img.write_zeroes(off, n, unmap=unmap)
        _apply(ch.model, off, n, None)
    img.discard(14 * cs, cs)
    _apply(ch.model, 14 * cs, cs, None)


@pytest.mark.parametrize("who", ["qemu", "ours"])
def test_our_writes_read_by_qemu(chain, who):
    chain.create_top(ours=who == "ours")
    if who == "qemu":
        _qemu_fill(chain)
    with chain.open(writable=True) as img:
        _our_ops(chain, img)
    chain.check()
    assert chain.flat() == bytes(chain.model)
    with chain.open() as img:
        assert img.read(0, chain.size) == bytes(chain.model)


def test_partial_write_copies_the_backing_subcluster(workdir):
    """One byte into an empty overlay: exactly one subcluster is allocated,
    and it holds the backing's bytes around the written one."""
    ch = Chain(workdir, 64 << 10, "qcow2", False, False, SIZE)
    ch.create_top()
    sc = ch.sc
    with ch.open(writable=True) as img:
        img.write(3 * MiB + 4 * sc + 100, b"\xee")
    _apply(ch.model, 3 * MiB + 4 * sc + 100, 1, b"\xee")
    proc = qemu_img("map", "--output=json", ch.top)
    here = [(e["start"], e["length"]) for e in json.loads(proc.stdout) if e["depth"] == 0]
    assert here == [(3 * MiB + 4 * sc, sc)], here
    ch.check()
    assert ch.flat() == bytes(ch.model)


def test_flatten_to_raw_and_extended_l2(chain):
    chain.create_top()
    _qemu_fill(chain)
    out = os.path.join(chain.workdir, "ours.raw")
    args = [sys.executable, "-m", "pyqcrypt", "convert", "--object", chain.objs[0], "--object",
            chain.objs[1], "--image-opts", chain.opts()]
    subprocess.run(args + ["-O", "raw", out], check=True)
    assert open(out, "rb").read() == bytes(chain.model)
    ext = os.path.join(chain.workdir, "flat-ext.qcow2")
    subprocess.run(args + ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=%d" % chain.cs, ext],
                   check=True)
    info = json.loads(qemu_img("info", "--output=json", ext).stdout)
    assert info["format-specific"]["data"]["extended-l2"] is True
    flat = os.path.join(chain.workdir, "flat2.raw")
    qemu_img("convert", "-O", "raw", ext, flat)
    assert open(flat, "rb").read() == bytes(chain.model)


def test_create_overlay_identical_to_qemu_img(workdir):
    qemu_img("create", "-q", "-f", "qcow2", os.path.join(workdir, "b.qcow2"), "10M")
    for who, name in (("qemu", "theirs.qcow2"), ("ours", "ours.qcow2")):
        args = ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "b.qcow2", "-F",
                "qcow2", os.path.join(workdir, name)]
        if who == "qemu":
            qemu_img(*args)
        else:
            subprocess.run([sys.executable, "-m", "pyqcrypt"] + args, check=True, cwd=workdir)
    with open(os.path.join(workdir, "ours.qcow2"), "rb") as a, \
            open(os.path.join(workdir, "theirs.qcow2"), "rb") as b:
        assert a.read() == b.read()


def test_keep_ciphertext_refuses_extended_l2(workdir):
    from conftest import cs_format
    vol = cs_format(workdir, "v.luks", b"pw")
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "--keep-ciphertext", "-O",
                           "qcow2", "-o", "extended_l2=on", vol, os.path.join(workdir, "o.qcow2")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "extended_l2" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(workdir, "o.qcow2"))
