# SPDX-License-Identifier: LGPL-2.1-or-later
"""Hostile qcow2 metadata opened for writing (QEMU's overlap check).

Each image starts as a real qemu-img image (plain or LUKS) and is patched
with struct so that a data cluster lands on metadata, two L1 entries share
an L2 table, the refcount table names one block many times, and so on.
A writable open plus writes must then either refuse with a FormatError
(leaving every metadata byte as it was, the file no bigger) or leave an
image that ``qemu-img check`` finds free of corruption.  A property test
does the same for random mutations of the header, L1/L2 entries and the
refcount table and blocks.
"""

import json
import os
import shutil
import struct
import subprocess
import time
import zlib

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyqcrypt
from pyqcrypt.qcow2.check import check_qcow2

from conftest import qemu_img, qemu_io, qemu_secret, scratch_dir, tool

pytestmark = pytest.mark.interop

PW = b"hostile pass"
CS = 4096
COPIED = 1 << 63
ZERO_FLAG = 1
MASK = 0x00FFFFFFFFFFFE00
EXT_FDE = 0x0537BE77
SIZE_SLACK = 16 << 20           # what a few small writes may add to a file


# ---- building images ---------------------------------------------------------------------
def _opts(path):
    return "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % path


def make_image(workdir, enc, name="base.qcow2"):
    """An 8 MiB qemu-img image with 4 KiB clusters: data at 0 (64 KiB),
    2 MiB (8 KiB) and 4 MiB (4 KiB), so three L2 tables exist."""
    path = os.path.join(workdir, name)
    obj = qemu_secret(workdir, PW)
    opts = "cluster_size=%d" % CS
    if enc:
        opts += ",encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
    qemu_img("create", "-q", "-f", "qcow2", "--object", obj, "-o", opts, path, "8M")
    cmds = ["write -P 0x11 0 64k", "write -P 0x22 2M 8k", "write -P 0x33 4M 4k"]
    if enc:
        qemu_io(_opts(path), *cmds, objects=[obj])
    else:
        qemu_io(path, *cmds, fmt="qcow2")
    return path


class Layout:
    """Where a qcow2 file keeps its metadata (parsed here with struct,
    independently of pyqcrypt)."""

    def __init__(self, path):
        with open(path, "rb") as fh:
            self.data = data = fh.read()
        (self.cluster_bits,) = struct.unpack_from(">I", data, 20)
        self.cs = 1 << self.cluster_bits
        self.l1_size, self.l1_off, self.rt_off, self.rt_clusters = struct.unpack_from(">IQQI", data, 36)
        self.l1 = list(struct.unpack_from(">%dQ" % self.l1_size, data, self.l1_off))
        self.rt = list(struct.unpack_from(">%dQ" % (self.rt_clusters * self.cs // 8), data, self.rt_off))
        self.l2 = [e & MASK for e in self.l1 if e & MASK]
        self.blocks = [e for e in self.rt if e]
        self.fde = None
        off = struct.unpack_from(">I", data, 100)[0]
        while off + 8 <= self.cs:
            t, n = struct.unpack_from(">II", data, off)
            if t == 0:
                break
            if t == EXT_FDE:
                self.fde = struct.unpack_from(">QQ", data, off + 8)
            off += 8 + (n + 7) // 8 * 8
        # Data clusters mapped by the first L2 table.
        first = struct.unpack_from(">%dQ" % (self.cs // 8), data, self.l2[0])
        self.data_clusters = [e & MASK for e in first if e & MASK]

    def metadata_ranges(self):
        ranges = [(self.l1_off, self.l1_size * 8), (self.rt_off, self.rt_clusters * self.cs)]
        ranges += [(b, self.cs) for b in set(self.blocks)] + [(t, self.cs) for t in set(self.l2)]
        if self.fde:
            ranges.append(self.fde)
        return sorted(ranges)


def patch(path, offset, fmt, *values):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(fmt, *values))


def qemu_check(path, enc, workdir):
    """qemu-img check: (exit code, parsed JSON or None, output)."""
    args = [tool("qemu-img"), "check", "--output=json"]
    if enc:
        args += ["--object", qemu_secret(workdir, PW), "--image-opts", _opts(path)]
    else:
        args += ["-f", "qcow2", path]
    proc = subprocess.run(args, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = None
    return proc.returncode, report, proc.stdout + proc.stderr


WRITES = [(0, b"\xa1" * 4096), (2 << 20, b"\xa2" * 1000), (CS + 100, b"\xa3" * 9000),
          (6 << 20, b"\xa4" * 70000)]


def write_through(path, enc, writes=WRITES):
    """Open writable, write, close; returns the pyqcrypt.Error raised (or None)."""
    try:
        with pyqcrypt.open(path, passphrase=PW if enc else None, writable=True) as img:
            for off, data in writes:
                img.write(off, data)
    except pyqcrypt.Error as exc:
        return exc
    return None


# ---- the named hostile cases ----------------------------------------------------------------
def _l2_entry_to(target):
    def apply(path, lay):
        patch(path, lay.l2[0], ">Q", COPIED | target(lay))   # guest cluster 0
    return apply


def _shared_l2(path, lay):
    patch(path, lay.l1_off + 8, ">Q", COPIED | lay.l2[0])


def _reftable_all_equal(path, lay):
    n = lay.rt_clusters * lay.cs // 8
    patch(path, lay.rt_off, ">%dQ" % n, *([lay.blocks[0]] * n))


def _data_over_l2(path, lay):
    patch(path, lay.l2[0] + 8, ">Q", COPIED | lay.l2[1])   # guest cluster 1 -> an L2 table


def _l2_table_on_reftable(path, lay):
    patch(path, lay.l1_off, ">Q", COPIED | lay.rt_off)


def _refblock_on_l1(path, lay):
    patch(path, lay.rt_off + 8, ">Q", lay.l1_off)


def _refcounts_far_past_eof(path, lay):
    # A "refcount block" for clusters 200 * 2048 on (800 MiB in) that is
    # really a data cluster full of 0x1111 refcounts.
    patch(path, lay.rt_off + 8 * 200, ">Q", lay.data_clusters[0])


HOSTILE = [
    # (id, patch, refused at open (True) or at the first write (False))
    ("l2-entry-on-l1-table", _l2_entry_to(lambda lay: lay.l1_off), False),
    ("l2-entry-on-refcount-table", _l2_entry_to(lambda lay: lay.rt_off), False),
    ("l2-entry-on-refcount-block", _l2_entry_to(lambda lay: lay.blocks[0]), False),
    ("two-l1-entries-one-l2-table", _shared_l2, True),
    ("refcount-table-entries-all-equal", _reftable_all_equal, True),
    ("data-cluster-on-l2-table", _data_over_l2, False),
    ("l2-table-on-refcount-table", _l2_table_on_reftable, True),
    ("refcount-block-on-l1-table", _refblock_on_l1, True),
    ("refcounts-far-past-eof", _refcounts_far_past_eof, True),
]
LUKS_ONLY = [("l2-entry-on-fde-region", _l2_entry_to(lambda lay: lay.fde[0]), False)]
CASES = [(c, enc) for enc in (False, True) for c in HOSTILE] + [(c, True) for c in LUKS_ONLY]


@pytest.fixture(scope="module")
def base_images():
    d = scratch_dir()
    yield {enc: make_image(d, enc, "base-%s.qcow2" % ("luks" if enc else "plain"))
           for enc in (False, True)}
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("case,enc", CASES, ids=["%s-%s" % (c[0], "luks" if e else "plain")
                                                 for c, e in CASES])
def test_hostile_metadata_is_never_written_through(workdir, base_images, case, enc):
    name, apply, at_open = case
    path = os.path.join(workdir, "h.qcow2")
    shutil.copy(base_images[enc], path)
    lay = Layout(path)
    apply(path, lay)
    before = open(path, "rb").read()
    # pyqcrypt check calls every one of them corrupt.
    assert check_qcow2(path).exit_code == 2, name

    t0 = time.monotonic()
    exc = write_through(path, enc)
    after = open(path, "rb").read()
    assert time.monotonic() - t0 < 30
    assert len(after) <= len(before) + SIZE_SLACK
    assert isinstance(exc, pyqcrypt.FormatError), (name, exc)
    msg = str(exc)
    assert exc.field and exc.offset is not None and "0x" in msg, msg     # names field and offset
    if at_open:
        assert after == before, "a refused open changed the file"
    else:
        # Refused at the first write: the metadata is untouched, only the
        # header's corrupt bit is new (as QEMU's overlap check leaves it).
        assert "overlap" in msg and "corrupt" in msg, msg
        for off, n in Layout(path).metadata_ranges():
            assert after[off:off + n] == before[off:off + n], (name, hex(off))
        assert after[:72] == before[:72] and after[80:CS] == before[80:CS]
        assert struct.unpack_from(">Q", after, 72)[0] & 2, "corrupt bit not set"
        info = json.loads(qemu_img("info", "--output=json", "-U", path).stdout)
        assert info["format-specific"]["data"]["corrupt"] is True
        with pytest.raises(pyqcrypt.FormatError, match="corrupt"):
            pyqcrypt.open(path, passphrase=PW if enc else None, writable=True)
    # Reading the hostile image stays safe: errors, not hangs or tracebacks.
    try:
        with pyqcrypt.open(path, passphrase=PW if enc else None) as img:
            for off in range(0, img.size, 1 << 20):
                img.read(off, 1 << 20)
    except pyqcrypt.Error:
        pass


@pytest.mark.parametrize("enc", [False, True], ids=["plain", "luks"])
def test_clean_image_still_grows(workdir, base_images, enc):
    """The overlap map follows what is allocated: new L2 tables, a second
    refcount block (past 8 MiB of file), and qemu-img agrees."""
    path = os.path.join(workdir, "g.qcow2")
    shutil.copy(base_images[enc], path)
    # Grow to 24 MiB virtual so the file passes one refcount block's reach.
    qemu_img("resize", "-q", *(["--object", qemu_secret(workdir, PW), "--image-opts", _opts(path)]
                               if enc else ["-f", "qcow2", path]), "24M")
    big = bytes(range(256)) * (40 << 10)          # 10 MiB
    assert write_through(path, enc, [(8 << 20, big), (CS + 7, b"\x5c" * 5000)]) is None
    code, report, out = qemu_check(path, enc, workdir)
    assert code == 0 and report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, out
    assert len(Layout(path).blocks) >= 2
    with pyqcrypt.open(path, passphrase=PW if enc else None) as img:
        assert img.read(8 << 20, len(big)) == big
        assert img.read(CS + 7, 5000) == b"\x5c" * 5000


# ---- the property test ----------------------------------------------------------------------
HEADER_FIELDS = [(40, ">Q"), (48, ">Q"), (56, ">I"), (36, ">I"), (24, ">Q"), (72, ">Q"),
                 (80, ">Q"), (88, ">Q"), (64, ">Q"), (60, ">I"), (96, ">I"), (20, ">I"),
                 (32, ">I"), (100, ">I")]


def _interesting(lay):
    size = len(lay.data)
    offs = [0, lay.cs, lay.l1_off, lay.rt_off, size - lay.cs, size, size + lay.cs, 1 << 40]
    offs += lay.l2 + lay.blocks + lay.data_clusters[:3] + ([lay.fde[0]] if lay.fde else [])
    return offs


@st.composite
def mutations(draw, lay):
    """1-3 edits: (file offset, struct format, value)."""
    offs = _interesting(lay)

    def qword(flags):
        """An interesting offset with one of *flags*, or any 64-bit value."""
        return st.one_of(st.builds(lambda o, f: o | f, st.sampled_from(offs), st.sampled_from(flags)),
                         st.integers(0, 2**64 - 1))
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        # (hypothesis favours the first choices: the structural edits come first)
        kind = draw(st.sampled_from(["l2", "l1", "refcount", "reftable", "header"]))
        if kind == "header":
            off, fmt = draw(st.sampled_from(HEADER_FIELDS))
            small = st.sampled_from([0, 1, 2, 3, 4, 6, 7, 9, 12, 16, 21, 22, 0xFFFFFFFF])
            value = draw(st.one_of(small, st.integers(0, 2**32 - 1)) if fmt == ">I"
                         else st.one_of(small, qword([0])))
        elif kind == "l1":
            off, fmt = lay.l1_off + 8 * draw(st.integers(0, lay.l1_size - 1)), ">Q"
            value = draw(qword([COPIED, 0, 1]))
        elif kind == "l2":
            table = draw(st.sampled_from(lay.l2))
            off, fmt = table + 8 * draw(st.integers(0, lay.cs // 8 - 1)), ">Q"
            value = draw(qword([COPIED, 0, ZERO_FLAG, COPIED | ZERO_FLAG, 1 << 62]))
        elif kind == "reftable":
            off, fmt = lay.rt_off + 8 * draw(st.integers(0, 7)), ">Q"
            value = draw(qword([0, COPIED]))
        else:
            block = draw(st.sampled_from(lay.blocks))
            off, fmt = block + 2 * draw(st.integers(0, lay.cs // 2 - 1)), ">H"
            value = draw(st.sampled_from([0, 1, 2, 0xFFFF]) | st.integers(0, 0xFFFF))
        edits.append((off, fmt, value))
    return edits


def _corruptions(code, report):
    """None when qemu-img could not check the image at all."""
    if report is None or code == 1:
        return None
    return report.get("corruptions", 0)


def _run_property(enc, examples, name):
    work = scratch_dir()
    base = make_image(work, enc)
    lay = Layout(base)
    stats = {"refused": 0, "clean": 0, "already corrupt": 0, "qemu cannot open": 0}

    @hypothesis.seed(zlib.crc32(name.encode()))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(edits=mutations(lay))
    def prop(edits):
        path = os.path.join(work, "m.qcow2")
        orig = os.path.join(work, "m-orig.qcow2")
        shutil.copy(base, path)
        for off, fmt, value in edits:
            patch(path, off, fmt, value)
        shutil.copy(path, orig)
        exc = write_through(path, enc)
        size = os.path.getsize(path)
        limit = max(2 * len(lay.data), len(lay.data) + (256 << 20)) + SIZE_SLACK
        assert size <= limit, (edits, size)
        if exc is not None:
            stats["refused"] += 1
            return
        code, report, out = qemu_check(path, enc, work)
        after = _corruptions(code, report)
        if after == 0:
            stats["clean"] += 1
            return
        # qemu-img finds corruption: it must have been there before our
        # writes, and they must not have added to it.
        bcode, breport, bout = qemu_check(orig, enc, work)
        before = _corruptions(bcode, breport)
        if before is None:
            assert after is None, (edits, bout, out)
            stats["qemu cannot open"] += 1
            return
        assert before and after is not None and after <= before, (edits, bout, out)
        stats["already corrupt"] += 1

    try:
        t0 = time.monotonic()
        prop()
        total = sum(stats.values())
        print("%s: %d mutations in %.1f s: %s" % (name, total, time.monotonic() - t0, stats))
        assert total >= examples // 2
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("enc,examples", [(False, 100), (True, 60)], ids=["plain", "luks"])
def test_mutated_metadata_writes_never_corrupt(enc, examples):
    """Random mutations of header fields, L1/L2 entries, the refcount table
    and refcount blocks: a writable open plus a few writes raises
    pyqcrypt.Error, or qemu-img check finds no corruption (or only what
    the mutation itself caused, never more), with the file size bounded."""
    _run_property(enc, examples, "test_mutated_metadata_writes_never_corrupt[%s]"
                  % ("luks" if enc else "plain"))

