# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 robustness: malformed images give FormatError (never a crash, hang
or huge allocation), and a crash at any write or sync leaves an image that
``qemu-img check`` finds free of corruption, with acknowledged data intact."""

import json
import os
import shutil
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyqcrypt
from pyqcrypt import storage
from pyqcrypt.info_report import image_info
from pyqcrypt.qcow2 import create_qcow2
from pyqcrypt.qcow2.check import check_qcow2

from conftest import run, tool, write_file


def _image(workdir, name="base.qcow2", **kw):
    path = os.path.join(workdir, name)
    create_qcow2(path, 32 << 20, cluster_size=kw.pop("cluster_size", 4096), **kw)
    with pyqcrypt.open(path, writable=True) as img:
        img.write(0, b"A" * 10000)
        img.write(5 << 20, b"B" * 70000)
    return path


def _patch(path, offset, raw):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(raw)


def _l1_and_first_l2(path):
    with open(path, "rb") as fh:
        data = fh.read()
    l1_off = struct.unpack_from(">Q", data, 40)[0]
    l2 = struct.unpack_from(">Q", data, l1_off)[0] & 0x00FFFFFFFFFFFE00
    return l1_off, l2


@pytest.mark.parametrize("what,offset,raw,field", [
    ("cluster_bits too large", 20, struct.pack(">I", 30), "cluster_bits"),
    ("cluster_bits too small", 20, struct.pack(">I", 8), "cluster_bits"),
    ("absurd l1_size", 36, struct.pack(">I", 0xFFFFFFFF), "l1_size"),
    ("L1 past the end", 40, struct.pack(">Q", 1 << 40), "l1_table_offset"),
    ("L1 misaligned", 40, struct.pack(">Q", 4096 + 8), "l1_table_offset"),
    ("refcount table on the header", 48, struct.pack(">Q", 0), "refcount_table_offset"),
    ("refcount table huge", 56, struct.pack(">I", 0xFFFFFFF), "refcount_table_clusters"),
    ("unknown incompatible bit", 72, struct.pack(">Q", 1 << 40), "incompatible_features"),
    ("refcount_order 7", 96, struct.pack(">I", 7), "refcount_order"),
    ("bad version", 4, struct.pack(">I", 9), "version"),
    ("bad magic", 0, b"QFI\x00", "magic"),
    ("bad crypt method", 32, struct.pack(">I", 5), "crypt_method"),
    ("header length short", 100, struct.pack(">I", 50), "header_length"),
    ("snapshot table on the header", 60, struct.pack(">I", 3), "snapshots_offset"),
    ("too many snapshots", 60, struct.pack(">I", 65537), "nb_snapshots"),
])
def test_malformed_header_fields(workdir, what, offset, raw, field):
    path = _image(workdir)
    _patch(path, offset, raw)
    with pytest.raises(pyqcrypt.FormatError) as info:
        pyqcrypt.open(path, format="qcow2")
    assert info.value.field == field, (what, str(info.value))


def test_truncated_images(workdir):
    path = _image(workdir)
    data = open(path, "rb").read()
    for n in (0, 3, 50, 100, 4096, 8192, len(data) // 2):
        cut = write_file(os.path.join(workdir, "cut.qcow2"), data[:n])
        with pytest.raises(pyqcrypt.Error):
            with pyqcrypt.open(cut, format="qcow2") as img:
                img.read(0, img.size)


def test_l2_entry_outside_file(workdir):
    path = _image(workdir)
    _, l2 = _l1_and_first_l2(path)
    _patch(path, l2, struct.pack(">Q", (1 << 63) | (1 << 45)))
    with pyqcrypt.open(path) as img:
        with pytest.raises(pyqcrypt.FormatError, match="outside the file"):
            img.read(0, 512)
    res = check_qcow2(path)
    assert res.exit_code == 2 and res.corruptions


def test_l1_entry_outside_file(workdir):
    path = _image(workdir)
    l1, _ = _l1_and_first_l2(path)
    _patch(path, l1, struct.pack(">Q", (1 << 63) | (1 << 44)))
    with pytest.raises(pyqcrypt.FormatError, match="L1 entry 0"):
        pyqcrypt.open(path)


def test_shared_l2_table_is_a_corruption_not_a_hang(workdir):
    path = _image(workdir)
    l1, l2 = _l1_and_first_l2(path)
    with open(path, "rb") as fh:
        fh.seek(l1)
        n = struct.unpack_from(">I", open(path, "rb").read(), 36)[0]
    _patch(path, l1, struct.pack(">%dQ" % n, *([(1 << 63) | l2] * n)))
    res = check_qcow2(path)
    # qemu-img's verdict: the L2 table (4 KiB clusters) is referenced n times, refcount 1.
    assert res.exit_code == 2
    assert "ERROR cluster %d refcount=1 reference=%d" % (l2 // 4096, n) in res.corruptions


def test_corrupt_and_dirty_bits(workdir):
    path = _image(workdir)
    _patch(path, 72, struct.pack(">Q", 2))           # corrupt
    with pytest.raises(pyqcrypt.FormatError, match="corrupt"):
        pyqcrypt.open(path, writable=True)
    with pyqcrypt.open(path) as img:                   # read-only is allowed
        assert img.read(0, 4) == b"AAAA"
    _patch(path, 72, struct.pack(">Q", 1))           # dirty
    with pytest.raises(pyqcrypt.FormatError, match="dirty"):
        pyqcrypt.open(path, writable=True)


def test_unknown_extension_kept(workdir):
    """Unknown header extensions survive our writes (and qemu agrees)."""
    path = os.path.join(workdir, "ext.qcow2")
    run([tool("qemu-img"), "create", "-q", "-f", "qcow2", path, "16M"])
    from pyqcrypt.qcow2.header import Qcow2Header
    from pyqcrypt.storage import Storage
    with Storage(path, writable=True) as stg:
        hdr = Qcow2Header.parse(stg.pread(0, 4096), stg.size())
        hdr.set_extension(0x12345678, b"keep me!")
        stg.pwrite(0, hdr.pack())
    with pyqcrypt.open(path, writable=True) as img:
        img.write(0, b"x" * 100000)
    with Storage(path) as stg:
        assert Qcow2Header.parse(stg.pread(0, 4096), stg.size()).extension(0x12345678) == b"keep me!"
    run([tool("qemu-img"), "check", path])


@pytest.fixture(scope="module")
def seed_image(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("seed"))
    path = _image(d, "seed.qcow2", refcount_bits=16)
    return open(path, "rb").read()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 4 * 4096 - 1), st.integers(0, 255)),
                      min_size=1, max_size=6))
def test_mutated_images_only_raise_errors(workdir, seed_image, edits):
    """Mutations of the header, refcount table/block, L1 and L2 clusters."""
    buf = bytearray(seed_image)
    for off, val in edits:
        buf[off] = val
    path = write_file(os.path.join(workdir, "m.qcow2"), bytes(buf))
    try:
        with pyqcrypt.open(path, format="qcow2") as img:
            for off in (0, 5 << 20, img.size - 512 if img.size >= 512 else 0):
                if off + 512 <= img.size:
                    img.read(off, 512)
    except pyqcrypt.Error:
        pass
    for probe in (image_info, check_qcow2):
        try:
            probe(path)
        except pyqcrypt.Error:
            pass


class Crash(BaseException):
    pass


def _crashing(n):
    events = []

    def hook(kind, stg, offset, length):
        if n is not None and len(events) >= n:
            raise Crash()
        events.append(kind)
    return hook, events


def _workload(path, passphrase, events, marks):
    """Writes with two explicit flushes; *marks* gets the event count at
    which each flush returned (what it acknowledged)."""
    with pyqcrypt.open(path, passphrase=passphrase, writable=True) as img:
        img.write(0, b"1" * 9000)
        img.flush()
        marks.append(len(events))
        img.write(3 << 20, b"2" * 300000)          # new L2 table and clusters
        img.write(4096, b"3" * 100)                # in place
        img.flush()
        marks.append(len(events))
        img.write(20 << 20, b"4" * 5000)


# What must read back after 0, 1 or 2 completed flushes.  Bytes 4096..4196
# are rewritten in place after the first flush, so until the second flush
# they may hold the old or the new data (an unacknowledged write).
ACKED = [[], [(0, b"1" * 4096), (4196, b"1" * 4804)],
         [(0, b"1" * 4096), (4096, b"3" * 100), (4196, b"1" * 4804), (3 << 20, b"2" * 300000)]]


@pytest.mark.parametrize("enc", [None, "luks"])
def test_crash_at_every_write_and_sync(workdir, enc):
    kw = dict(cluster_size=4096, refcount_bits=16)
    if enc:
        kw.update(encrypt_format="luks", passphrase=b"pw", iterations=1000)
    base = os.path.join(workdir, "crash-base.qcow2")
    create_qcow2(base, 32 << 20, **kw)
    pw = b"pw" if enc else None
    probe = os.path.join(workdir, "probe.qcow2")
    shutil.copy(base, probe)
    hook, events = _crashing(None)
    marks = []
    with storage.injected_faults(hook):
        _workload(probe, pw, events, marks)
    assert check_qcow2(probe).exit_code == 0 and len(marks) == 2
    obj = "secret,id=s,data=pw"
    for n in range(len(events) + 1):
        path = os.path.join(workdir, "crash.qcow2")
        shutil.copy(base, path)
        hook, seen = _crashing(n)
        with storage.injected_faults(hook):
            try:
                _workload(path, pw, seen, [])
            except Crash:
                pass
        res = check_qcow2(path)
        assert not res.corruptions, (n, res.corruptions)
        args = [tool("qemu-img"), "check", "--output=json"]
        args += (["--object", obj, "--image-opts",
                  "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path] if enc else [path])
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode in (0, 3), (n, proc.stdout, proc.stderr)
        assert json.loads(proc.stdout).get("corruptions", 0) == 0
        acked = ACKED[sum(1 for m in marks if m <= n)]
        with pyqcrypt.open(path, passphrase=pw) as img:
            for off, data in acked:
                assert img.read(off, len(data)) == data, (n, off)
            if len(acked) == 2:
                assert img.read(4096, 100) in (b"1" * 100, b"3" * 100), n
        os.unlink(path)
    print("%s: %d faults injected" % (enc or "plain", len(events) + 1))
