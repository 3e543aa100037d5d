# SPDX-License-Identifier: LGPL-2.1-or-later
"""Extended L2 entries (``extended_l2=on``: 32 subclusters a cluster),
plain and LUKS, against qemu-img and qemu-io 7.2.

qemu's writes at subcluster-unaligned offsets (data, zero writes, unmapping
zero writes, discards) read back through pyqcrypt byte for byte, and our
allocation map (``is_allocated``, ``zero_runs``) matches ``qemu-img map``
at subcluster granularity.  Our writes are read back by qemu-io and leave
``qemu-img check`` clean; a new cluster is allocated whole with only the
written subclusters marked allocated.  ``create -o extended_l2=on`` writes
what qemu-img writes.
"""

import json
import os
import struct
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt.qcow2 import create_qcow2
from pyqcrypt.qcow2.check import check_qcow2

from conftest import qemu_img, qemu_io, qemu_secret, tool

pytestmark = pytest.mark.interop

PW = b"extended l2"
MiB = 1 << 20
SIZE = 24 * MiB


class Img:
    def __init__(self, workdir, name, cluster_size, encrypted):
        self.workdir = workdir
        self.path = os.path.join(workdir, name)
        self.cs = cluster_size
        self.sc = cluster_size // 32
        self.encrypted = encrypted
        self.obj = qemu_secret(workdir, PW) if encrypted else None

    def opts(self):
        o = "driver=qcow2,file.filename=%s" % self.path
        return o + (",encrypt.key-secret=sec0" if self.encrypted else "")

    def qemu_args(self):
        if self.encrypted:
            return ["--object", self.obj, "--image-opts", self.opts()]
        return ["-f", "qcow2", self.path]

    def create_options(self):
        o = "extended_l2=on,cluster_size=%d" % self.cs
        if self.encrypted:
            o += ",encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
        return o

    def qemu_create(self, size=SIZE):
        args = ["create", "-f", "qcow2"] + (["--object", self.obj] if self.encrypted else [])
        qemu_img(*(args + ["-o", self.create_options(), self.path, str(size)]))

    def io(self, *cmds):
        if self.encrypted:
            return qemu_io(self.opts(), *cmds, objects=[self.obj]).stdout
        return qemu_io(self.path, *cmds, fmt="qcow2").stdout

    def raw(self):
        out = os.path.join(self.workdir, "out.raw")
        if os.path.exists(out):
            os.unlink(out)
        qemu_img(*(["convert"] + self.qemu_args() + ["-O", "raw", out]))
        with open(out, "rb") as fh:
            data = fh.read()
        os.unlink(out)
        return data

    def check(self):
        proc = qemu_img("check", "--output=json", *self.qemu_args(), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def map(self):
        """qemu-img map's extents: [(start, length, data)]."""
        proc = qemu_img("map", "--output=json", *self.qemu_args())
        return [(e["start"], e["length"], e["data"]) for e in json.loads(proc.stdout)]

    def open(self, writable=False):
        return pyqcrypt.image.open_image(self.path, passphrase=PW if self.encrypted else None,
                                         writable=writable)


CASES = [("32k-plain", 32 << 10, False), ("64k-plain", 64 << 10, False),
         ("2M-plain", 2 << 20, False), ("32k-luks", 32 << 10, True),
         ("64k-luks", 64 << 10, True), ("2M-luks", 2 << 20, True)]


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def ext_image(request, workdir):
    _, cs, encrypted = request.param
    img = Img(workdir, "ext.qcow2", cs, encrypted)
    img.qemu_create()
    return img


def _qemu_ops(cs):
    """qemu-io commands at subcluster-unaligned offsets, and their effect
    on a model: (command, offset, length, byte or None for zeros)."""
    sc = cs // 32
    l2_span = cs * (cs // 16)
    ops = [("write -P 0x11 %d %d", 1000, 3000, 0x11),                 # inside subclusters 0-1
           ("write -P 0x12 %d %d", cs + sc * 3 + 17, sc * 5, 0x12),   # across subclusters
           ("write -P 0x13 %d %d", 3 * cs - 100, cs + 300, 0x13),     # across clusters
           ("write -z %d %d", cs + sc * 4, sc * 2, None),             # whole subclusters zero
           ("write -z %d %d", 3 * cs + 7, 100, None),                 # partial subcluster zero
           ("write -P 0x14 %d %d", 6 * MiB + 5, 3 * sc, 0x14),
           ("write -z -u %d %d", 6 * MiB - 6 * MiB % cs, cs, None),   # whole cluster, unmapped
           ("write -P 0x15 %d %d", 12 * MiB + 1, 2 * cs, 0x15),
           ("discard %d %d", 12 * MiB - 12 * MiB % cs + cs, cs, None),
           ("write -P 0x16 %d %d", SIZE - 3000, 3000, 0x16)]
    if l2_span < SIZE - 4 * MiB:
        ops.append(("write -P 0x17 %d %d", l2_span - 3 * sc - 1, 7 * sc, 0x17))   # an L2 boundary
    return ops


def _model_apply(model, off, n, byte):
    model[off:off + n] = bytes([byte]) * n if byte is not None else bytes(n)


def _qemu_fill(img):
    model = bytearray(SIZE)
    for cmd, off, n, byte in _qemu_ops(img.cs):
        img.io(cmd % (off, n))
        _model_apply(model, off, n, byte)
    return model


def _assert_map_matches(img, ours):
    """Our is_allocated agrees with qemu-img map on every extent, and every
    range our zero_runs names reads as zeros in qemu's view."""
    for start, length, data in img.map():
        assert ours.is_allocated(start, length) == data, (start, length, data)
        if not data and length > 1:     # no data anywhere inside: each subcluster agrees
            sc = img.sc
            for off in range(start, start + length, max(sc, length // 64 // sc * sc or sc)):
                assert not ours.is_allocated(off, 1), off


def test_qemu_writes_read_back(ext_image):
    img = ext_image
    model = _qemu_fill(img)
    assert img.raw() == bytes(model)
    with img.open() as ours:
        assert ours.read(0, SIZE) == bytes(model)
        # Unaligned small reads inside and across subclusters.
        for off, n in ((999, 3), (img.cs + img.sc * 3 + 10, 40), (3 * img.cs - 101, 302)):
            assert ours.read(off, n) == bytes(model[off:off + n])
        _assert_map_matches(img, ours)
        for a, b in ours.zero_runs():
            assert not any(model[a:b]), (a, b)


def _our_ops(img, model):
    cs, sc = img.cs, img.sc
    jobs = [(7, os.urandom(10)),                                 # in a qemu-allocated subcluster
            (cs + sc * 9 + 3, os.urandom(sc)),                   # allocated cluster, unallocated subclusters
            (cs + sc * 4 + 100, os.urandom(50)),                 # into qemu's zeroed subclusters
            (9 * MiB + sc * 5 + 7, b"\x5a" * 100),               # a new cluster: one subcluster
            (10 * MiB - 1000, os.urandom(2 * cs + 2000)),        # new clusters, partial ends
            (14 * MiB, os.urandom(3 * cs)),                      # whole new clusters
            (12 * MiB + 1 + 2 * cs - 10, os.urandom(20))]
    with img.open(writable=True) as ours:
        for off, data in jobs:
            ours.write(off, data)
            model[off:off + len(data)] = data
        for off, n, unmap in ((14 * MiB + sc + 3, 3 * sc, False),        # whole subclusters + ends
                              (14 * MiB + cs, cs, False),                # a whole cluster, kept
                              (14 * MiB + 2 * cs, cs, True),             # a whole cluster, freed
                              (1000, 10, False)):                        # inside one subcluster
            ours.write_zeroes(off, n, unmap=unmap)
            model[off:off + n] = bytes(n)
        ours.discard(10 * MiB - 10 * MiB % cs + cs, cs)                  # a whole cluster
        model[10 * MiB - 10 * MiB % cs + cs:10 * MiB - 10 * MiB % cs + 2 * cs] = bytes(cs)
        ours.discard(7 * MiB + 5, sc)                                    # partial: advice only
    return model


def test_our_writes_read_by_qemu(ext_image):
    img = ext_image
    model = _qemu_fill(img)
    _our_ops(img, model)
    img.check()
    assert check_qcow2(img.path).exit_code == 0
    img.io("read -P 0x5a %d 100" % (9 * MiB + img.sc * 5 + 7))
    assert img.raw() == bytes(model)
    with img.open() as ours:
        assert ours.read(0, SIZE) == bytes(model)
        _assert_map_matches(img, ours)


def test_new_cluster_marks_only_written_subclusters(workdir):
    img = Img(workdir, "one.qcow2", 64 << 10, True)
    img.qemu_create(4 * MiB)
    sc = img.sc
    with img.open(writable=True) as ours:
        ours.write(MiB + 5 * sc + 7, b"\x42" * 100)
        ours.write(2 * MiB + 3 * sc - 1, b"\x43" * (sc + 2))     # touches subclusters 2, 3, 4
    extents = [(s, n) for s, n, data in img.map() if data]
    assert extents == [(MiB + 5 * sc, sc), (2 * MiB + 2 * sc, 3 * sc)], extents
    img.io("read -P 0 %d %d" % (MiB, 5 * sc + 7), "read -P 0x42 %d 100" % (MiB + 5 * sc + 7),
           "read -P 0 %d %d" % (MiB + 5 * sc + 107, sc - 107),
           "read -P 0x43 %d %d" % (2 * MiB + 3 * sc - 1, sc + 2))
    img.check()
    # The L2 entry: the new cluster, COPIED, only subcluster 5 allocated.
    with open(img.path, "rb") as fh:
        data = fh.read()
    l1 = struct.unpack_from(">Q", data, 40)[0]
    l2 = struct.unpack_from(">Q", data, l1)[0] & 0x00FFFFFFFFFFFE00
    entry, bitmap = struct.unpack_from(">QQ", data, l2 + 16 * (MiB // img.cs))
    assert bitmap == 1 << 5 and entry & (1 << 63)


def _pyqcrypt(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + list(args), capture_output=True,
                          text=True)


@pytest.mark.parametrize("cs", [16 << 10, 32 << 10, 64 << 10, 2 << 20])
def test_create_plain_identical_to_qemu_img(workdir, cs):
    ours = os.path.join(workdir, "ours.qcow2")
    theirs = os.path.join(workdir, "theirs.qcow2")
    proc = _pyqcrypt("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=%d" % cs,
                     ours, "5G")
    assert proc.returncode == 0, proc.stderr
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=%d" % cs,
             theirs, "5G")
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    info = [subprocess.run([tool("qemu-img"), "info", "--output=json", p], capture_output=True,
                           text=True).stdout for p in (ours, theirs)]
    assert json.loads(info[0])["format-specific"]["data"]["extended-l2"] is True
    a, b = json.loads(info[0]), json.loads(info[1])
    for d in (a, b):
        del d["filename"], d["actual-size"]
    assert a == b


@pytest.mark.parametrize("cs", [32 << 10, 2 << 20])
def test_create_luks_like_qemu_img(workdir, cs):
    """Our LUKS image with extended L2 entries: the same header cluster,
    layout and info as qemu-img's (keys and salts differ); qemu-io writes
    and reads it, and our reads agree."""
    obj = qemu_secret(workdir, PW)
    ours = Img(workdir, "ours.qcow2", cs, True)
    theirs = Img(workdir, "theirs.qcow2", cs, True)
    proc = _pyqcrypt("create", "-q", "-f", "qcow2", "--object", obj,
                     "-o", ours.create_options(), ours.path, str(SIZE))
    assert proc.returncode == 0, proc.stderr
    theirs.qemu_create()
    with open(ours.path, "rb") as a, open(theirs.path, "rb") as b:
        da, db = a.read(), b.read()
    assert len(da) == len(db)
    assert da[:4096] == db[:4096]             # header and extensions (FDE offsets included)
    infos = []
    for p in (ours.path, theirs.path):
        info = json.loads(subprocess.run([tool("qemu-img"), "info", "--output=json", p],
                                         capture_output=True, text=True).stdout)
        enc = info["format-specific"]["data"]["encrypt"]
        del info["filename"], info["actual-size"], enc["uuid"], enc["master-key-iters"]
        for slot in enc["slots"]:
            slot.pop("iters", None)
        infos.append(info)
    assert infos[0] == infos[1]
    assert infos[0]["format-specific"]["data"]["extended-l2"] is True
    model = _qemu_fill(ours)
    ours.check()
    with ours.open() as img:
        assert img.read(0, SIZE) == bytes(model)


def test_create_refuses_what_qemu_refuses(workdir):
    for opts in ("extended_l2=on,cluster_size=8k", "extended_l2=on,compat=0.10"):
        proc = _pyqcrypt("create", "-f", "qcow2", "-o", opts, os.path.join(workdir, "x.qcow2"), "1G")
        assert proc.returncode == 1 and "extended L2" in proc.stderr, proc.stderr
        assert not os.path.exists(os.path.join(workdir, "x.qcow2"))


@pytest.mark.parametrize("encrypted", [False, True])
def test_info_identical_to_qemu_img(workdir, encrypted):
    img = Img(workdir, "info.qcow2", 64 << 10, encrypted)
    img.qemu_create()
    _qemu_fill(img)
    for fmt in ("human", "json"):
        ours = _pyqcrypt("info", "--output", fmt, img.path)
        theirs = subprocess.run([tool("qemu-img"), "info", "--output=" + fmt, img.path],
                                capture_output=True, text=True)
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout
    assert "extended l2: true" in _pyqcrypt("info", img.path).stdout


def test_our_created_image_used_by_qemu(workdir):
    """pyqcrypt creates (API), qemu-io writes and zeroes, we write, qemu reads."""
    img = Img(workdir, "api.qcow2", 64 << 10, True)
    create_qcow2(img.path, SIZE, cluster_size=img.cs, encrypt_format="luks", passphrase=PW,
                 iterations=1000, extended_l2=True)
    model = _qemu_fill(img)
    _our_ops(img, model)
    img.check()
    assert img.raw() == bytes(model)


def test_hostile_bitmaps(workdir):
    img = Img(workdir, "bad.qcow2", 64 << 10, False)
    img.qemu_create(4 * MiB)
    img.io("write -P 0x11 0 1000")
    with open(img.path, "rb") as fh:
        data = bytearray(fh.read())
    l1 = struct.unpack_from(">Q", data, 40)[0]
    l2 = struct.unpack_from(">Q", data, l1)[0] & 0x00FFFFFFFFFFFE00
    cases = [(l2 + 8, struct.pack(">Q", 1 | 1 << 32), "L2 bitmap"),         # allocated and zero
             (l2 + 16 + 8, struct.pack(">Q", 1 << 3), "L2 bitmap")]         # allocated, no cluster
    for off, raw, field in cases:
        bad = bytearray(data)
        bad[off:off + len(raw)] = raw
        with open(img.path, "wb") as fh:
            fh.write(bad)
        with pyqcrypt.open(img.path) as ours:
            with pytest.raises(pyqcrypt.FormatError) as info:
                ours.read(0, 2 * img.cs)
            assert info.value.field == field and info.value.offset == off
    # Extended L2 entries with 4 KiB clusters (subclusters under 512 bytes).
    small = os.path.join(workdir, "small.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", small, "1M")
    with open(small, "r+b") as fh:
        fh.seek(72)
        fh.write(struct.pack(">Q", 1 << 4))
    with pytest.raises(pyqcrypt.FormatError) as info:
        pyqcrypt.open(small)
    assert info.value.field == "cluster_bits"


def test_snapshots_with_subclusters(workdir):
    """Copy-on-write of a shared cluster keeps its subcluster bitmap: the
    snapshot reads its old bytes, the active layer ours."""
    img = Img(workdir, "snap.qcow2", 64 << 10, True)
    img.qemu_create()
    model = _qemu_fill(img)
    qemu_img("snapshot", "--object", img.obj, "--image-opts", "-c", "s1", img.opts())
    old = bytes(model)
    _our_ops(img, model)
    img.check()
    assert img.raw() == bytes(model)
    out = os.path.join(workdir, "s1.raw")
    qemu_img("convert", "--object", img.obj, "--image-opts", "-l", "snapshot.name=s1", img.opts(),
             "-O", "raw", out)
    with open(out, "rb") as fh:
        assert fh.read() == old


def test_qemu_extended_l2_with_raw_data_file(workdir):
    """qemu-img makes extended L2 + data_file_raw images (subclusters left
    unallocated at creation): read and written like qemu; creating one
    ourselves is refused in words."""
    path = os.path.join(workdir, "xr.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             "extended_l2=on,data_file=xr.raw,data_file_raw=on", path, "4M")
    qemu_io(path, "write -P 0x11 1000 5000", fmt="qcow2")
    with pyqcrypt.open(path, writable=True) as img:
        assert img.read(0, 8192) == bytes(1000) + b"\x11" * 5000 + bytes(2192)
        img.write(300000, b"\x66" * 70000)
    assert json.loads(qemu_img("check", "--output=json", path).stdout).get("corruptions", 0) == 0
    qemu_io(path, "read -P 0x66 300000 70000", "read -P 0x11 1000 5000", "read -P 0 6144 290000",
            fmt="qcow2")
    proc = _pyqcrypt("create", "-f", "qcow2", "-o", "extended_l2=on,data_file=o.raw,data_file_raw=on",
                     os.path.join(workdir, "o.qcow2"), "4M")
    assert proc.returncode == 1 and "data_file_raw" in proc.stderr and "Traceback" not in proc.stderr
