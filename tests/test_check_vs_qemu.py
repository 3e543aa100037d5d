# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt check`` against ``qemu-img check``, byte for byte.

Each image is made by qemu-img (and qemu-io), then damaged with struct
edits parsed here independently of pyqcrypt: leaked and over-referenced
clusters, entries past the end of the file or misaligned, refcount blocks
in the wrong place, truncated compressed images, snapshots with wrong
refcounts, 1-bit refcounts, extended L2 entries, an external data file.
For each, ``pyqcrypt check`` and ``qemu-img check`` must print the same
stdout and stderr and exit with the same code, in human and JSON output.
Every case also asserts that qemu-img saw the damage it was made for, so
a case cannot pass by comparing two clean reports.
"""

import os
import struct
import subprocess
import sys

import pytest

from conftest import qemu_img, run, tool, write_file

pytestmark = pytest.mark.interop

MASK = 0x00FFFFFFFFFFFE00
COPIED, COMPRESSED = 1 << 63, 1 << 62
SIZES = [4096, 65536]


def _both(path, fmt):
    """(stdout, stderr, exit code) of qemu-img check and of pyqcrypt check."""
    out = "--output=" + fmt
    theirs = subprocess.run([tool("qemu-img"), "check", out, path], capture_output=True)
    ours = subprocess.run([sys.executable, "-m", "pyqcrypt", "check", out, path],
                          capture_output=True)
    return ((theirs.stdout, theirs.stderr, theirs.returncode),
            (ours.stdout, ours.stderr, ours.returncode))


def same_as_qemu(path, rc, *expect):
    """Assert both outputs match qemu-img's, which exits *rc* and prints
    every string of *expect* on stderr; returns qemu-img's human stderr."""
    for fmt in ("human", "json"):
        theirs, ours = _both(path, fmt)
        assert theirs[2] == rc, theirs
        for text in expect:
            assert text.encode() in theirs[1], (text, theirs[1][:2000])
        assert ours[2] == theirs[2], (fmt, ours, theirs)
        assert ours[1] == theirs[1], (fmt, ours[1][:3000], theirs[1][:3000])
        assert ours[0] == theirs[0], (fmt, ours[0], theirs[0])
        if fmt == "human":
            human_err = theirs[1]
    return human_err


class Layout:
    """Where a qcow2 file keeps things (header fields, L1, the first L2
    table and refcount block), parsed with struct."""

    def __init__(self, path):
        with open(path, "rb") as fh:
            self.data = data = bytearray(fh.read())
        self.path = path
        self.cs = 1 << struct.unpack_from(">I", data, 20)[0]
        self.l1_size, self.l1 = struct.unpack_from(">IQ", data, 36)
        self.rt = struct.unpack_from(">Q", data, 48)[0]
        self.rb = struct.unpack_from(">Q", data, self.rt)[0]
        self.refcount_bits = 16 if struct.unpack_from(">I", data, 4)[0] == 2 else \
            1 << struct.unpack_from(">I", data, 96)[0]
        self.l2 = self.q(self.l1) & MASK

    def q(self, off):
        return struct.unpack_from(">Q", self.data, off)[0]

    def put(self, off, fmt, *values):
        struct.pack_into(fmt, self.data, off, *values)

    def set_refcount(self, cluster, value):
        assert self.refcount_bits == 16
        self.put(self.rb + 2 * cluster, ">H", value)

    def save(self):
        write_file(self.path, bytes(self.data))
        return self.path


def make(workdir, cs=4096, opts="", writes=("write -P 0x11 0 64k", "write -P 0x22 1M 8k"),
         size="4M", name="t.qcow2"):
    path = os.path.join(workdir, name)
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=%d%s" % (cs, opts), path, size)
    if writes:
        args = [tool("qemu-io"), "-f", "qcow2"]
        for w in writes:
            args += ["-c", w]
        run(args + [path])
    return path


# ---- clean images -----------------------------------------------------------------------------
@pytest.mark.parametrize("cs", SIZES)
def test_healthy(workdir, cs):
    path = make(workdir, cs, writes=("write -P 1 0 64k", "write -z 256k 64k", "write -P 2 2M 4k"))
    same_as_qemu(path, 0)


def test_healthy_v2_and_small_clusters(workdir):
    same_as_qemu(make(workdir, 512, ",compat=0.10", name="v2.qcow2"), 0)


# ---- refcounts against references -------------------------------------------------------------
@pytest.mark.parametrize("cs", SIZES)
def test_leaked_cluster(workdir, cs):
    lay = Layout(make(workdir, cs))
    lay.put(lay.l2, ">Q", 0)                               # unmap guest cluster 0
    same_as_qemu(lay.save(), 3, "Leaked cluster")


@pytest.mark.parametrize("cs", SIZES)
def test_refcount_zero_on_used_cluster(workdir, cs):
    lay = Layout(make(workdir, cs))
    lay.set_refcount((lay.q(lay.l2) & MASK) // cs, 0)
    same_as_qemu(lay.save(), 2, "refcount=0 reference=1", "ERROR OFLAG_COPIED data cluster")


@pytest.mark.parametrize("cs", SIZES)
def test_l2_entry_past_eof(workdir, cs):
    lay = Layout(make(workdir, cs))
    eof = len(lay.data)
    assert eof % cs == 0
    lay.put(lay.l2, ">Q", COPIED | 0x400000)
    lay.put(lay.l2 + 8, ">Q", COPIED | eof)                # the cluster just past the end
    lay.put(lay.l2 + 16, ">Q", COPIED | (eof - cs))        # the last cluster: no such error
    same_as_qemu(lay.save(), 2, "ERROR: counting reference for region exceeding the end of the "
                                "file by one cluster or more: offset 0x400000 size 0x%x" % cs,
                 "more: offset 0x%x size" % eof)


def test_misaligned_l2_table(workdir):
    lay = Layout(make(workdir))
    lay.put(lay.l1, ">Q", COPIED | (lay.l2 + 0x200))
    same_as_qemu(lay.save(), 2, "Table is not cluster aligned; L1 entry corrupted")


@pytest.mark.parametrize("cs", SIZES)
def test_misaligned_data_clusters(workdir, cs):
    lay = Layout(make(workdir, cs, writes=("write -P 1 0 64k", "write -z 1M 64k")))
    lay.put(lay.l2, ">Q", lay.q(lay.l2) + 0x200)
    zero = lay.l2 + 8 * ((1 << 20) // cs)
    lay.put(zero, ">Q", COPIED | 1 | 0x300200)             # a misaligned preallocated zero cluster
    same_as_qemu(lay.save(), 2, "Data cluster is not properly aligned",
                 "Preallocated cluster is not properly aligned")


def test_reserved_bits(workdir):
    lay = Layout(make(workdir))
    lay.put(lay.l1, ">Q", lay.q(lay.l1) | (1 << 57))
    lay.put(lay.l2 + 8, ">Q", lay.q(lay.l2 + 8) | (1 << 58) | 2)
    lay.put(lay.rt + 8, ">Q", 0x5000 | 1)
    same_as_qemu(lay.save(), 2, "ERROR found L1 entry with reserved bits set",
                 "ERROR found l2 entry with reserved bits set",
                 "ERROR refcount table entry 1 has reserved bits set")


# ---- refcount blocks ----------------------------------------------------------------------------
@pytest.mark.parametrize("cs", SIZES)
def test_refcount_block_past_eof(workdir, cs):
    lay = Layout(make(workdir, cs))
    lay.put(lay.rt, ">Q", 1 << 30)
    lay.put(lay.rt + 8, ">Q", 1 << 31)
    same_as_qemu(lay.save(), 2, "ERROR refcount block 0 is outside image",
                 "ERROR refcount block 1 is outside image", "refcount=0 reference=1")


def test_refcount_block_misaligned(workdir):
    lay = Layout(make(workdir))
    lay.put(lay.rt, ">Q", lay.rb + 0x200)
    same_as_qemu(lay.save(), 1, "is not cluster aligned; refcount table entry corrupted",
                 "qcow2: Image is corrupt: Refblock offset",
                 "Can't get refcount for cluster 0: Input/output error", "qemu-img: Check failed")


def test_refcount_block_shared_with_l2_table(workdir):
    lay = Layout(make(workdir))
    lay.put(lay.rt + 8, ">Q", lay.l2)
    same_as_qemu(lay.save(), 2, "ERROR refcount block 1 refcount=2")


# ---- compressed images --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compressible(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("compressible") / "text.raw")
    text = b"".join(b"line %08d of compressible text\n" % i for i in range(140000))
    write_file(raw, text[:4 << 20])
    return raw


@pytest.mark.parametrize("cs", SIZES)
@pytest.mark.parametrize("cut", ["more", "less"])
def test_compressed_truncated(workdir, compressible, cs, cut):
    """Descriptors running past the new end of the file by a cluster or
    more are each an error; by less than a cluster, they are counted."""
    path = os.path.join(workdir, "c.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=%d" % cs, compressible, path)
    same_as_qemu(path, 0)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size - (3 * cs + 1000 if cut == "more" else 700))
    err = same_as_qemu(path, 2 if cut == "more" else 0)
    exceeding = err.count(b"counting reference for region exceeding the end of the file")
    assert (exceeding > 1) if cut == "more" else (exceeding == 0), err[:2000]


# ---- snapshots ----------------------------------------------------------------------------------
def _snapshot_image(workdir):
    path = make(workdir, writes=("write -P 1 0 64k",))
    qemu_img("snapshot", "-c", "one", path)
    run([tool("qemu-io"), "-f", "qcow2", "-c", "write -P 2 0 8k", path])
    qemu_img("snapshot", "-c", "two", path)
    return path


def test_snapshot_image_and_copied_flags(workdir):
    path = _snapshot_image(workdir)
    same_as_qemu(path, 0)
    lay = Layout(path)
    for c in range(2, 25):                                 # as if nothing were shared
        lay.set_refcount(c, 1 if lay.data[lay.rb + 2 * c:lay.rb + 2 * c + 2] != b"\0\0" else 0)
    lay.save()
    same_as_qemu(path, 2, "ERROR OFLAG_COPIED data cluster", "refcount=1 reference=3")


def test_snapshot_l2_refcount_too_high(workdir):
    lay = Layout(_snapshot_image(workdir))
    lay.set_refcount(lay.l2 // lay.cs, 5)
    lay.put(lay.l1, ">Q", lay.q(lay.l1) | COPIED)
    same_as_qemu(lay.save(), 2, "ERROR OFLAG_COPIED L2 cluster: l1_index=0", "Leaked cluster")


def _snapshot_entries(lay):
    """Offsets of the snapshot table's entries."""
    off, out = lay.q(64), []
    for _ in range(struct.unpack_from(">I", lay.data, 60)[0]):
        off = (off + 7) // 8 * 8
        out.append(off)
        id_len, name_len = struct.unpack_from(">HH", lay.data, off + 12)
        off += 40 + struct.unpack_from(">I", lay.data, off + 36)[0] + id_len + name_len
    return out


def test_snapshot_table_damage(workdir):
    lay = Layout(_snapshot_image(workdir))
    first, last = _snapshot_entries(lay)
    lay.put(first, ">Q", lay.q(first) + 8)                 # snapshot one's L1 misaligned
    lay.put(last + 36, ">I", 8)                            # the last entry's extra data short
    same_as_qemu(lay.save(), 2, "L1 table is not cluster aligned; snapshot table entry corrupted",
                 "ERROR snapshot table entry 1 is incomplete")
    lay.put(first + 36, ">I", 5000)                        # more extra data than QEMU reads
    same_as_qemu(lay.save(), 1, "Too much extra metadata in snapshot table entry 0",
                 "qemu-img: Check failed: File too large")


# ---- other layouts ------------------------------------------------------------------------------
def test_refcount_bits_1_shared_cluster(workdir):
    lay = Layout(make(workdir, opts=",refcount_bits=1"))
    lay.put(lay.l2 + 8, ">Q", lay.q(lay.l2))               # guest clusters 0 and 1 share one
    same_as_qemu(lay.save(), 2, "ERROR: overflow cluster offset=",
                 "Use qemu-img amend to increase the refcount entry width")


def test_extended_l2(workdir):
    path = make(workdir, 65536, ",extended_l2=on",
                writes=("write -P 1 0 64k", "write -P 2 200k 4k", "write -z 1M 64k",
                        "write -P 3 2M 100k"))
    same_as_qemu(path, 0)
    lay = Layout(path)
    lay.put(lay.l2 + 8, ">Q", (1 << 64) - 1)               # allocated and zero at once
    lay.put(lay.l2 + 16 * 9 + 8, ">Q", 1)                  # unallocated with an allocated bit
    lay.put(lay.l2 + 16 * 10, ">QQ", COMPRESSED | 0x1000, 1)
    same_as_qemu(lay.save(), 2, "Allocated cluster has corrupted subcluster allocation bitmap",
                 "ERROR: Unallocated cluster has non-zero subcluster allocation map",
                 "with non-zero subcluster allocation bitmap")


def test_data_file(workdir):
    data = os.path.join(workdir, "d.raw")
    path = make(workdir, 65536, ",data_file=%s" % data,
                writes=("write -P 1 0 64k", "write -P 2 1M 64k"))
    same_as_qemu(path, 0)
    lay = Layout(path)
    lay.put(lay.l2 + 8 * 3, ">Q", COMPRESSED | COPIED | 0x12345)
    lay.put(lay.l2 + 8 * 5, ">Q", 0x50000)                 # refcount 1 without COPIED
    same_as_qemu(lay.save(), 2, "with data file, entry=0x", "copied flag must never be set",
                 "ERROR OFLAG_COPIED data cluster: l2_entry=50000 refcount=1")


def test_persistent_bitmaps(workdir):
    path = make(workdir, size="16M", writes=())
    qemu_img("bitmap", "--add", "-g", "512", path, "b0")
    run([tool("qemu-io"), "-f", "qcow2", "-c", "write -P 1 0 64k", "-c", "write -P 2 8M 2M", path])
    same_as_qemu(path, 0)
    lay = Layout(path)
    lay.put(88, ">Q", 0)                                   # bitmaps written by a program unaware
    same_as_qemu(lay.save(), 3, "a program lacking bitmap support modified this file",
                 "Leaked cluster")


def test_api_counts_match_qemu(workdir):
    """check_qcow2's counts are qemu-img's JSON numbers."""
    import json
    from pyqcrypt.qcow2.check import check_qcow2
    lay = Layout(make(workdir))
    lay.put(lay.l2, ">Q", 0)
    lay.set_refcount((lay.q(lay.l2 + 8) & MASK) // lay.cs, 0)
    path = lay.save()
    theirs = json.loads(_both(path, "json")[0][0])
    res = check_qcow2(path)
    assert res.exit_code == 2 and res.as_dict() == theirs
    assert len(res.corruptions) == theirs["corruptions"] and len(res.leaks) == theirs["leaks"]
