# SPDX-License-Identifier: LGPL-2.1-or-later
"""Hostile zlib streams in compressed qcow2 clusters.

The image is made by ``qemu-img convert -c`` (zlib: raw deflate, window bits
12) from known data; then the compressed bytes of one cluster are replaced
by a crafted stream, found through its L2 entry (bit 62 = compressed; the
low 62 - (cluster_bits - 8) bits the host offset, the bits above it the
number of additional 512-byte sectors, as docs/interop/qcow2.txt says).

* A stream that inflates PAST the cluster (twice its size, or a deflate
  bomb that fills the whole two-cluster extent an entry can name): QEMU
  stops inflating when the cluster is full and returns it (its
  qcow2_zlib_decompress accepts Z_BUF_ERROR with a full buffer), so
  pyqcrypt must read exactly those cluster-size bytes, as qemu-io does:
  never more, never into a neighbour, and without inflating the rest (the
  memory stays bounded).
* A stream that inflates to LESS than the cluster, is corrupt, or refers
  further back than the 4 KiB window QEMU inflates with: QEMU fails the
  read, and pyqcrypt raises FormatError naming the guest cluster;
  ``pyqcrypt convert -O raw`` exits 1 with one line and leaves no output.
* A stream made with zlib's default 32 KiB window (references further back
  than the 4 KiB window QEMU asks for): QEMU inflates the whole cluster into
  one buffer, so it reads such clusters, and pyqcrypt must too.
"""

import os
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib

import pytest

import pyqcrypt

from conftest import qemu_img, write_file

CS = 65536
CLUSTERS = 4
VICTIM = 1                  # the guest cluster whose stream is replaced

pytestmark = pytest.mark.interop


def _source_data():
    rnd = random.Random(1234)
    out = bytearray()
    for i in range(CLUSTERS):
        # half a pattern, half noise: each compresses to about half a cluster
        out += bytes([0x40 + i]) * (CS // 2) + rnd.randbytes(CS // 2)
    return bytes(out)


def _entries(path):
    """(cluster_bits, file offset of the L2 table, L2 entries) of a small image."""
    with open(path, "rb") as fh:
        hdr = fh.read(104)
        assert hdr[:4] == b"QFI\xfb"
        cluster_bits = struct.unpack_from(">I", hdr, 20)[0]
        l1_offset = struct.unpack_from(">Q", hdr, 40)[0]
        fh.seek(l1_offset)
        l2_offset = struct.unpack(">Q", fh.read(8))[0] & ((1 << 56) - 512)
        fh.seek(l2_offset)
        entries = struct.unpack(">%dQ" % CLUSTERS, fh.read(8 * CLUSTERS))
    return cluster_bits, l2_offset, entries


def _extent(entry, cluster_bits):
    """(host offset, bytes to the end of the last named sector)."""
    assert entry >> 62 == 1, "not a compressed cluster: %#x" % entry
    x = 62 - (cluster_bits - 8)
    off = entry & ((1 << x) - 1)
    sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
    return off, sectors * 512 - off % 512


@pytest.fixture
def image(workdir):
    """A zlib-compressed qcow2 image made by qemu-img, and its data."""
    data = _source_data()
    src = write_file(os.path.join(workdir, "src.raw"), data)
    img = os.path.join(workdir, "c.qcow2")
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zlib",
             src, img)
    _, _, entries = _entries(img)
    assert all(e >> 62 == 1 for e in entries), [hex(e) for e in entries]
    return img, data


def _replace_stream(img, stream):
    """Write *stream* over the victim's compressed bytes, in place (it must
    fit in the sectors the entry names)."""
    cluster_bits, _, entries = _entries(img)
    off, room = _extent(entries[VICTIM], cluster_bits)
    assert len(stream) <= room, (len(stream), room)
    with open(img, "r+b") as fh:
        fh.seek(off)
        fh.write(stream)


def _append_stream(img, stream):
    """Put *stream* at the (sector-aligned) end of the file and point the
    victim's entry at it, naming as many sectors as the stream needs."""
    cluster_bits, l2_offset, _ = _entries(img)
    x = 62 - (cluster_bits - 8)
    with open(img, "r+b") as fh:
        end = fh.seek(0, 2)
        off = -(-end // CS) * CS + 512              # inside a new cluster, not at its start
        sectors = -(-len(stream) // 512)
        assert 1 <= sectors <= (1 << (62 - x))
        fh.seek(off)
        fh.write(stream + bytes(sectors * 512 - len(stream)))
        fh.seek(l2_offset + 8 * VICTIM)
        fh.write(struct.pack(">Q", (1 << 62) | ((sectors - 1) << x) | off))


def _deflate(data, wbits=-12):
    co = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return co.compress(data) + co.flush()


def _qemu_reads(img):
    """What qemu-img convert reads from the whole image (None if it fails)."""
    out = img + ".qemu.raw"
    proc = qemu_img("convert", "-f", "qcow2", "-O", "raw", img, out, check=False)
    if proc.returncode != 0:
        if os.path.exists(out):
            os.unlink(out)
        return None
    with open(out, "rb") as fh:
        got = fh.read()
    os.unlink(out)
    return got


def _pyq(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=cwd)


def _check_reads_first_cluster(img, data, expected_victim, workdir):
    """The victim cluster reads as *expected_victim* (what QEMU reads), every
    other cluster as its source data, through every read path."""
    expected = bytearray(data)
    expected[VICTIM * CS:(VICTIM + 1) * CS] = expected_victim
    expected = bytes(expected)
    assert _qemu_reads(img) == expected                 # QEMU reads exactly this
    with pyqcrypt.open(img) as disk:
        got = disk.read(VICTIM * CS, CS)
        assert len(got) == CS and got == expected_victim
        assert disk.read(VICTIM * CS + 100, 10) == expected_victim[100:110]
        assert disk.read(VICTIM * CS - 7, CS + 14) == expected[VICTIM * CS - 7:(VICTIM + 1) * CS + 7]
        assert disk.read(0, CLUSTERS * CS) == expected
    out = os.path.join(workdir, "p.raw")
    proc = _pyq("convert", "-O", "raw", img, out)
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as fh:
        assert fh.read() == expected
    os.unlink(out)
    pyqcrypt.convert(img, out, dst_format="raw")
    with open(out, "rb") as fh:
        assert fh.read() == expected
    os.unlink(out)


def test_stream_inflating_to_two_clusters_reads_one(workdir, image):
    img, data = image
    tail = b"\x77" * (CS // 2) + b"\x88" * (CS + CS // 2)      # 2 clusters: where does it stop?
    _replace_stream(img, _deflate(tail))
    _check_reads_first_cluster(img, data, tail[:CS], workdir)


def test_deflate_bomb_over_the_whole_extent_reads_one_bounded(workdir, image):
    img, data = image
    bomb = _deflate(b"\x5a" * (1 << 27))                # 128 MiB of one byte
    bomb = bomb[:2 * CS]                                  # as much as an entry can name
    _append_stream(img, bomb)
    _check_reads_first_cluster(img, data, b"\x5a" * CS, workdir)
    # Reading it inflates one cluster, not the 128 MiB behind it.
    with pyqcrypt.open(img) as disk:
        assert disk.read(0, CS) == data[:CS]            # metadata cached first
        tracemalloc.start()
        try:
            assert disk.read(VICTIM * CS, CS) == b"\x5a" * CS
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_stream_with_a_32k_window_reads_as_qemu_reads(workdir, image):
    """A cluster deflated with zlib's default 32 KiB window (as writers
    other than QEMU make them) refers 8 KiB back.  QEMU inflates the whole
    cluster into one buffer, so its 4 KiB window setting never limits how
    far back a reference may go within the cluster: qemu-img reads it.
    pyqcrypt must read the same bytes."""
    img, data = image
    block = random.Random(7).randbytes(8192)
    cluster = block * (CS // 8192)
    stream = _deflate(cluster, wbits=-15)
    _replace_stream(img, stream)
    _check_reads_first_cluster(img, data, cluster, workdir)


HOSTILE = {
    "short": lambda: _deflate(b"\x66" * (CS // 2)),
    "corrupt": lambda: b"\xff" * 4096,
    "truncated": lambda: _deflate(random.Random(3).randbytes(CS))[:20000],
    "empty": lambda: _deflate(b""),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_bad_stream_is_a_format_error(workdir, image, kind):
    img, data = image
    _replace_stream(img, HOSTILE[kind]())
    assert _qemu_reads(img) is None                      # QEMU refuses to read it too
    with pyqcrypt.open(img) as disk:
        with pytest.raises(pyqcrypt.FormatError, match="guest cluster %d" % VICTIM):
            disk.read(VICTIM * CS, CS)
        with pytest.raises(pyqcrypt.FormatError, match="guest cluster %d" % VICTIM):
            disk.read(VICTIM * CS + 4096, 1)
        # The neighbours still read.
        assert disk.read(0, CS) == data[:CS]
        assert disk.read((VICTIM + 1) * CS, CS) == data[(VICTIM + 1) * CS:(VICTIM + 2) * CS]
    out = os.path.join(workdir, "out.raw")
    before = sorted(os.listdir(workdir))
    proc = _pyq("convert", "-O", "raw", img, out, cwd=workdir)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyqcrypt: "), proc.stderr
    assert "guest cluster %d" % VICTIM in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(out) and sorted(os.listdir(workdir)) == before
    with pytest.raises(pyqcrypt.FormatError):
        pyqcrypt.convert(img, out, dst_format="raw")
    assert not os.path.exists(out) and sorted(os.listdir(workdir)) == before

