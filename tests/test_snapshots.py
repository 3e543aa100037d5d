# SPDX-License-Identifier: LGPL-2.1-or-later
"""Images with internal snapshots, made by qemu-img and qemu-io.

pyqcrypt lists the snapshots exactly as qemu-img info does, reads the
active layer as QEMU does, and writes it without touching any snapshot:
after our writes (in place into shared clusters, partial clusters, across
shared L2 tables, zero writes and discards), ``qemu-img check`` finds the
image clean, qemu reads our new data in the active layer, and every
snapshot, applied with ``qemu-img snapshot -a``, still reads its old bytes.
Hostile snapshot tables are FormatErrors; an I/O failure at any write or
sync of a copy-on-write leaves no corruption and the snapshot intact.
"""

import errno
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt import storage
from pyqcrypt.qcow2.check import check_qcow2

from conftest import qemu_img, qemu_io, qemu_secret, tool

pytestmark = pytest.mark.interop

PW = b"snapshot secret"
MiB = 1 << 20
SIZE = 8 * MiB

# Pattern writes by qemu-io: before s1, between s1 and s2, after s2.
BEFORE_S1 = [(0, 300 << 10, 0x11), (2 * MiB - 10000, 20000, 0x12), (5 * MiB + 123, 7000, 0x13),
             (SIZE - 4096, 4096, 0x14)]
BEFORE_S2 = [(100 << 10, 5000, 0x21), (3 * MiB, 64 << 10, 0x22), (2 * MiB - 3000, 1000, 0x23)]
AFTER_S2 = [(200 << 10, 1000, 0x31), (7 * MiB + 5, 9000, 0x32)]


class Img:
    """A qemu-made qcow2 image (plain or LUKS) and how qemu tools name it."""

    def __init__(self, workdir, name, cluster_size, encrypted):
        self.workdir = workdir
        self.path = os.path.join(workdir, name)
        self.encrypted = encrypted
        self.cs = cluster_size
        self.obj = qemu_secret(workdir, PW) if encrypted else None

    def opts(self, path=None):
        o = "driver=qcow2,file.filename=%s" % (path or self.path)
        return o + (",encrypt.key-secret=sec0" if self.encrypted else "")

    def qemu_args(self, path=None):
        """qemu-img arguments naming the image (with its secret)."""
        if self.encrypted:
            return ["--object", self.obj, "--image-opts", self.opts(path)]
        return ["-f", "qcow2", path or self.path]

    def io(self, *cmds, path=None):
        if self.encrypted:
            return qemu_io(self.opts(path), *cmds, objects=[self.obj]).stdout
        return qemu_io(path or self.path, *cmds, fmt="qcow2").stdout

    def create(self):
        o = "cluster_size=%d" % self.cs
        args = ["create", "-f", "qcow2"]
        if self.encrypted:
            args += ["--object", self.obj]
            o += ",encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
        qemu_img(*(args + ["-o", o, self.path, str(SIZE)]))

    def snapshot(self, *args, path=None):
        name = self.qemu_args(path)[-1]
        pre = self.qemu_args(path)[:-1] if self.encrypted else []   # snapshot takes no -f
        qemu_img("snapshot", *(pre + list(args) + [name]))

    def raw(self, path=None, snapshot=None):
        """The active layer (or a snapshot, read-only) as qemu-img converts it."""
        out = os.path.join(self.workdir, "out.raw")
        if os.path.exists(out):
            os.unlink(out)
        args = ["convert"] + self.qemu_args(path)[:-1]
        if snapshot:
            args += ["-l", "snapshot.name=" + snapshot]
        qemu_img(*(args + [self.qemu_args(path)[-1], "-O", "raw", out]))
        with open(out, "rb") as fh:
            data = fh.read()
        os.unlink(out)
        return data

    def check(self, path=None):
        """qemu-img check's JSON, asserting exit 0 (no corruption, no leak)."""
        proc = qemu_img("check", "--output=json", *self.qemu_args(path), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def open(self, writable=False, path=None):
        return pyqcrypt.image.open_image(path or self.path, passphrase=PW if self.encrypted else None,
                                         writable=writable)


def _apply(model, writes):
    for off, n, pat in writes:
        model[off:off + n] = bytes([pat]) * n


def _qemu_write(img, writes):
    img.io(*["write -P 0x%02x %d %d" % (pat, off, n) for off, n, pat in writes])


def _with_snapshots(workdir, cluster_size, encrypted, name="img.qcow2"):
    """An image with snapshots s1 and s2 and more writes after s2; returns
    (Img, {"s1": bytes, "s2": bytes, "active": bytearray})."""
    img = Img(workdir, name, cluster_size, encrypted)
    img.create()
    model = bytearray(SIZE)
    states = {}
    for label, writes in (("s1", BEFORE_S1), ("s2", BEFORE_S2), ("active", AFTER_S2)):
        _qemu_write(img, writes)
        _apply(model, writes)
        if label != "active":
            img.snapshot("-c", label)
            states[label] = bytes(model)
    states["active"] = model
    return img, states


CASES = [("4k-plain", 4096, False), ("64k-plain", 65536, False), ("4k-luks", 4096, True),
         ("64k-luks", 65536, True)]


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def snap_image(request, workdir):
    _, cs, encrypted = request.param
    return _with_snapshots(workdir, cs, encrypted)


def _pyqcrypt(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + list(args), capture_output=True,
                          text=True)


def test_info_identical_to_qemu_img(snap_image):
    img, _ = snap_image
    for fmt in ("human", "json"):
        ours = _pyqcrypt("info", "--output", fmt, img.path)
        theirs = subprocess.run([tool("qemu-img"), "info", "--output=" + fmt, img.path],
                                capture_output=True, text=True)
        assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
        assert ours.stdout == theirs.stdout
    assert "Snapshot list:" in ours.stdout or "snapshots" in ours.stdout


def test_info_shows_icount_clock_and_long_names(workdir):
    """Snapshot entries edited the way QEMU would write them from a running
    VM (VM state size, VM clock, icount absent or set, a long name): the
    table and the JSON still match qemu-img byte for byte."""
    img, _ = _with_snapshots(workdir, 65536, False)
    with open(img.path, "r+b") as fh:
        hdr = fh.read(72)
        nsnap, table = struct.unpack_from(">IQ", hdr, 60)
        fh.seek(table)
        entry = bytearray(fh.read(64))
        # Entry 0: 75 h 4 min 3.21 s of VM clock, 3 GiB of VM state, icount 12345.
        struct.pack_into(">Q", entry, 24, (75 * 3600 + 4 * 60 + 3) * 10 ** 9 + 210 * 10 ** 6 + 999)
        struct.pack_into(">I", entry, 32, 0)
        struct.pack_into(">QQQ", entry, 40, 3 << 30, SIZE, 12345)
        fh.seek(table)
        fh.write(entry)
    for fmt in ("human", "json"):
        ours = _pyqcrypt("info", "--output", fmt, img.path)
        theirs = subprocess.run([tool("qemu-img"), "info", "--output=" + fmt, img.path],
                                capture_output=True, text=True)
        assert ours.stdout == theirs.stdout, ours.stderr
    assert "3 GiB" in _pyqcrypt("info", img.path).stdout


def test_reads_equal_qemu(snap_image):
    img, states = snap_image
    with img.open() as ours:
        assert [s.name for s in ours.snapshots] == ["s1", "s2"]
        data = ours.read(0, SIZE)
    assert data == img.raw() == bytes(states["active"])


def _our_writes(img, model):
    """Writes into clusters and L2 tables that the snapshots share: in
    place, partial clusters, across an L2 boundary (4k clusters), into
    unallocated space, zero writes and discards; mirrored in *model*."""
    cs = img.cs
    rnd = os.urandom
    jobs = [(10, rnd(10)),                         # partial, shared by s1 and s2
            (2 * MiB - 5000, rnd(10000)),          # across the 2 MiB L2 boundary (4k)
            (100 * 1024 - 3, rnd(20000)),          # over qemu's post-s1 write
            (6 * MiB + 1, rnd(3000)),              # unallocated, in a shared L2 table
            (3 * MiB, bytes([0x5A]) * (2 * cs)),   # whole clusters, shared with s2
            (7 * MiB + 5, rnd(100))]               # active-only (COPIED) cluster
    with img.open(writable=True) as ours:
        for off, data in jobs:
            ours.write(off, data)
            model[off:off + len(data)] = data
        ours.write_zeroes(256 << 10, 3 * cs)                 # shared clusters become zero
        model[256 << 10:(256 << 10) + 3 * cs] = bytes(3 * cs)
        ours.write_zeroes(5 * MiB, 2 * cs, unmap=True)
        model[5 * MiB:5 * MiB + 2 * cs] = bytes(2 * cs)
        ours.discard(SIZE - cs, cs)
        model[SIZE - cs:] = bytes(cs)
    return jobs


def test_writes_keep_snapshots(snap_image):
    img, states = snap_image
    model = states["active"]
    _our_writes(img, model)
    img.check()
    assert check_qcow2(img.path).exit_code == 0
    # qemu reads our new data in the active layer.
    img.io("read -P 0x5a %d %d" % (3 * MiB, 2 * img.cs))
    assert img.raw() == bytes(model)
    with img.open() as ours:
        assert ours.read(0, SIZE) == bytes(model)
    # Every snapshot still reads its old bytes, read-only and once applied.
    for name in ("s1", "s2"):
        assert img.raw(snapshot=name) == states[name], name
        copy = os.path.join(img.workdir, "applied-%s.qcow2" % name)
        shutil.copy(img.path, copy)
        img.snapshot("-a", name, path=copy)
        assert img.raw(path=copy) == states[name], name
        img.check(path=copy)


def test_second_round_of_writes(workdir):
    """After a first round, the copies are the active layer's own (COPIED):
    writing again goes in place, allocates nothing, keeps the image clean."""
    img, states = _with_snapshots(workdir, 4096, True)
    model = states["active"]
    jobs = _our_writes(img, model)
    size_before = os.path.getsize(img.path)
    with img.open(writable=True) as ours:
        for off, data in jobs[:3]:
            new = os.urandom(len(data))
            ours.write(off, new)
            model[off:off + len(new)] = new
    assert os.path.getsize(img.path) == size_before
    img.check()
    assert img.raw() == bytes(model)
    assert img.raw(snapshot="s1") == states["s1"]


def _fresh(workdir):
    img, _ = _with_snapshots(workdir, 65536, False, name="hostile.qcow2")
    with open(img.path, "rb") as fh:
        data = fh.read()
    # Move the snapshot table into a new last cluster, so an entry that
    # grows runs past the end of the file.
    table = struct.unpack_from(">Q", data, 64)[0]
    new = -(-len(data) // 65536) * 65536
    data = bytearray(data) + bytes(new - len(data)) + data[table:table + 65536]
    struct.pack_into(">Q", data, 64, new)
    return img.path, bytes(data)


def _entry_offsets(data):
    nsnap, table = struct.unpack_from(">IQ", data, 60)
    offs, off = [], table
    for _ in range(nsnap):
        off = (off + 7) // 8 * 8
        offs.append(off)
        id_len, name_len = struct.unpack_from(">HH", data, off + 12)
        extra = struct.unpack_from(">I", data, off + 36)[0]
        off += 40 + extra + id_len + name_len
    return offs


def _hostile_cases(data):
    table = struct.unpack_from(">Q", data, 64)[0]
    e0, e1 = _entry_offsets(data)
    l1_active = struct.unpack_from(">Q", data, 40)[0]
    sn_l1 = struct.unpack_from(">Q", data, e0)[0]
    return [
        # (what, patches [(offset, bytes)], field, only when writable)
        ("too many snapshots", [(60, struct.pack(">I", 65537))], "nb_snapshots", False),
        ("table misaligned", [(64, struct.pack(">Q", table + 8))], "snapshots_offset", False),
        ("table past the end", [(64, struct.pack(">Q", 1 << 40))], "snapshots_offset", False),
        ("table on the header", [(64, struct.pack(">Q", 0))], "snapshots_offset", False),
        ("a third entry of zeros", [(60, struct.pack(">I", 3))], "id_str_size", False),
        ("huge extra data", [(e0 + 36, struct.pack(">I", 0xFFFFFFFF))], "extra_data_size", False),
        ("empty id", [(e0 + 12, struct.pack(">H", 0))], "id_str_size", False),
        ("name past the end", [(e1 + 14, struct.pack(">H", 0xFFFF))], "snapshot table", False),
        ("L1 misaligned", [(e0, struct.pack(">Q", sn_l1 + 8))], "l1_table_offset", False),
        ("L1 past the end", [(e0, struct.pack(">Q", 1 << 44))], "l1_table_offset", False),
        ("L1 huge", [(e0 + 8, struct.pack(">I", 0x10000000))], "l1_size", False),
        ("L1 on the header", [(e0, struct.pack(">Q", 0))], "l1_table_offset", False),
        ("L1 is the active L1", [(e0, struct.pack(">Q", l1_active))], "l1_table_offset", True),
        ("L1 is the snapshot table", [(e0, struct.pack(">Q", table))], "l1_table_offset", True),
        ("L1 entry outside the file", [(sn_l1, struct.pack(">Q", 1 << 50))],
         "snapshot L1 table", True),
        ("L1 entry on the refcount table",
         [(sn_l1, struct.pack(">Q", struct.unpack_from(">Q", data, 48)[0]))], "l1_table_offset",
         True),
    ]


def test_hostile_snapshot_tables(workdir):
    path, data = _fresh(workdir)
    assert len(data) == struct.unpack_from(">Q", data, 64)[0] + 65536   # the table is last
    for what, patches, field, writable_only in _hostile_cases(data):
        bad = bytearray(data)
        for off, raw in patches:
            bad[off:off + len(raw)] = raw
        with open(path, "wb") as fh:
            fh.write(bad)
        if not writable_only:
            with pytest.raises(pyqcrypt.FormatError) as info:
                pyqcrypt.open(path).close()
            assert info.value.field == field, (what, str(info.value))
            assert info.value.offset is not None, what
            proc = _pyqcrypt("info", path)
            assert proc.returncode == 1 and proc.stderr.startswith("pyqcrypt: "), (what, proc.stderr)
            assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, what
            # check reads the table as qemu-img check does (leniently): the same verdict.
            qemu = qemu_img("check", "-f", "qcow2", path, check=False)
            assert check_qcow2(path).exit_code == qemu.returncode, what
        with pytest.raises(pyqcrypt.FormatError) as info:
            pyqcrypt.open(path, writable=True).close()
        assert info.value.field == field, (what, str(info.value))
        with open(path, "rb") as fh:
            assert fh.read() == bytes(bad), what          # nothing written


def test_hostile_copied_flag_still_copies(workdir):
    """An L2 entry claiming COPIED while a snapshot shares its cluster
    (refcount 2): the write still copies, so the snapshot keeps its data."""
    img, states = _with_snapshots(workdir, 65536, False)
    with open(img.path, "r+b") as fh:
        data = fh.read()
        l1 = struct.unpack_from(">Q", data, 40)[0]
        l1e = struct.unpack_from(">Q", data, l1)[0]
        l2 = l1e & 0x00FFFFFFFFFFFE00
        e = struct.unpack_from(">Q", data, l2)[0]
        fh.seek(l1)
        fh.write(struct.pack(">Q", l1e | 1 << 63))
        fh.seek(l2)
        fh.write(struct.pack(">Q", e | 1 << 63))
    with img.open(writable=True) as ours:
        ours.write(0, b"\xee" * 100)
    assert img.raw(snapshot="s1") == states["s1"]
    assert img.raw(snapshot="s2") == states["s2"]
    assert img.raw()[:100] == b"\xee" * 100


KINDS = [("write", errno.EIO), ("sync", errno.EIO)]


def _injector(kind, n):
    seen = {"write": 0, "sync": 0, "truncate": 0}

    def hook(op, st, offset, length):
        seen[op] += 1
        if op == kind and seen[op] >= n:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    return hook, seen


def test_copy_on_write_survives_faults(workdir):
    """An I/O failure at every write and sync of a copy-on-write workload
    (data clusters, an L2 table, zero writes on shared clusters): qemu-img
    check finds no corruption (leaks at worst) and both snapshots read
    their old bytes."""
    img, states = _with_snapshots(workdir, 4096, False, name="base.qcow2")
    base = img.path

    def workload(path):
        with pyqcrypt.open(path, writable=True) as ours:
            ours.write(10, b"N" * 5000)
            ours.write(2 * MiB - 100, b"M" * 300)
            ours.write_zeroes(256 << 10, 2 * 4096)
            ours.discard(300 << 10, 4096)

    probe = os.path.join(workdir, "probe.qcow2")
    faults = 0
    for kind, _ in KINDS:
        shutil.copy(base, probe)
        hook, seen = _injector(kind, 1 << 30)
        with storage.injected_faults(hook):
            workload(probe)
        for n in range(1, seen[kind] + 1):
            path = os.path.join(workdir, "f.qcow2")
            shutil.copy(base, path)
            hook, _ = _injector(kind, n)
            with storage.injected_faults(hook):
                with pytest.raises(pyqcrypt.Error):
                    workload(path)
            proc = qemu_img("check", "--output=json", "-f", "qcow2", path, check=False)
            assert proc.returncode in (0, 3), (kind, n, proc.stdout, proc.stderr)
            assert json.loads(proc.stdout).get("corruptions", 0) == 0, (kind, n)
            for name in ("s1", "s2"):
                assert img.raw(path=path, snapshot=name) == states[name], (kind, n, name)
            faults += 1
    assert faults > 10
