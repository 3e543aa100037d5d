# SPDX-License-Identifier: LGPL-2.1-or-later
"""The conversion pipeline (pyqcrypt.pipeline) and the copy core on it:
bytes arrive intact whichever way they go (encrypted or not, sparse or
dense, cluster-aligned or not), metadata reaches the disk only after the
data it maps, and a failure in any stage is raised, not hung on."""

import errno
import os
import threading
import time

import pytest

import pyqcrypt
from pyqcrypt import pipeline, storage
from pyqcrypt.crypto import SectorCipher
from pyqcrypt.errors import Error
from pyqcrypt.qcow2 import mapping as qmapping
from pyqcrypt.qcow2.entries import OFFSET_MASK

from conftest import qemu_img, qemu_secret

from pyqcrypt import conversion as convert_mod
from pyqcrypt.conversion import compare, copying

PW = b"pipeline pass"


def _pattern(size, zero_every=3):
    """Random 64 KiB grains with every *zero_every*-th grain zero."""
    out = bytearray(os.urandom(size))
    for i, g in enumerate(range(0, size, 64 << 10)):
        if i % zero_every == 0:
            out[g:g + (64 << 10)] = bytes(len(out[g:g + (64 << 10)]))
    return bytes(out)


def _raw(workdir, name, data):
    path = os.path.join(workdir, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _read_all(path, **kw):
    with pyqcrypt.open(path, **kw) as img:
        return img.read(0, img.size)


@pytest.mark.parametrize("size", [(8 << 20) + (3 << 16), (5 << 20) + 4096 + 512 * 3])
@pytest.mark.parametrize("cluster", [65536, 2 << 20])
def test_raw_to_qcow2_luks_and_back(workdir, size, cluster):
    data = _pattern(size)
    src = _raw(workdir, "src.raw", data)
    dst = os.path.join(workdir, "dst.qcow2")
    pyqcrypt.convert(src, dst, dst_passphrase=PW, iterations=1000, cluster_size=cluster)
    assert _read_all(dst, passphrase=PW) == data
    back = os.path.join(workdir, "back.raw")
    pyqcrypt.convert(dst, back, dst_format="raw", src_passphrase=PW)
    with open(back, "rb") as fh:
        assert fh.read() == data
    sec = qemu_secret(workdir, PW)
    out = qemu_img("check", "--object", sec, "--image-opts",
                   "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % dst, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_zero_grains_stay_unallocated(workdir):
    size = 12 << 20
    data = _pattern(size)
    src = _raw(workdir, "src.raw", data)
    dst = os.path.join(workdir, "dst.qcow2")
    pyqcrypt.convert(src, dst, dst_passphrase=PW, iterations=1000)
    with pyqcrypt.image.open_image(dst, passphrase=PW) as img:
        zero = [g for g in range(0, size, 64 << 10) if not img.is_allocated(g, 64 << 10)]
        assert zero == list(range(0, size, 3 * (64 << 10)))
        assert img.read(0, size) == data


def test_luks_to_luks_reencrypt_into_existing(workdir):
    size = 9 << 20
    data = _pattern(size, zero_every=2)
    src = _raw(workdir, "src.raw", data)
    vol = os.path.join(workdir, "vol.luks")
    pyqcrypt.convert(src, vol, dst_format="luks", dst_passphrase=PW, iterations=1000)
    target = _raw(workdir, "target.img", os.urandom(size + (4 << 20)))
    pyqcrypt.convert(vol, target, dst_format="luks", src_passphrase=PW, dst_passphrase=b"other",
                     iterations=1000, existing_target=True, verify=True)
    with pyqcrypt.open(target, passphrase=b"other") as img:
        assert img.read(0, size) == data


@pytest.mark.parametrize("cpus", [1, 4])
def test_metadata_flushed_only_after_its_data(workdir, monkeypatch, cpus):
    """With a tiny L2 cache the copy flushes mid-way: every L2 table
    written must name only clusters whose data is already on disk, with
    2 workers (the floor) and with 4 finishing chunks out of order."""
    monkeypatch.setattr(qmapping, "L2_CACHE_TABLES", 1)
    monkeypatch.setattr(pipeline, "cores", lambda: cpus)
    size = 24 << 20
    data = os.urandom(size)
    src = _raw(workdir, "src.raw", data)
    dst = os.path.join(workdir, "dst.qcow2")
    pyqcrypt.create(dst, size, cluster_size=4096)      # one L2 table maps 2 MiB
    written = set()
    real_pwrite = storage.Storage.pwrite

    def pwrite(st, offset, data):
        # Recorded once written; data writes are slowed so that a flush
        # not waiting for them (no barrier) would find them unwritten.
        n = memoryview(data).nbytes
        if st.path.endswith("dst.qcow2") and n >= (1 << 20):
            time.sleep(0.01)
        real_pwrite(st, offset, data)
        if st.path.endswith("dst.qcow2"):
            written.update(range(offset // 4096, -(-(offset + n) // 4096)))
    monkeypatch.setattr(storage.Storage, "pwrite", pwrite)

    with pyqcrypt.image.open_image(src) as s, pyqcrypt.image.open_image(dst, writable=True) as d:
        real_flush = d.flush

        def checked_flush():
            for l1i in d.l2_dirty:
                tbl = d.l2_cache[l1i]
                for i in range(0, len(tbl), 8):
                    host = int.from_bytes(tbl[i:i + 8], "big") & OFFSET_MASK
                    if host:
                        assert host // 4096 in written, "L2 entry names unwritten cluster"
            real_flush()

        d.flush = checked_flush
        convert_mod.copy_image(s, d)
        d.flush()
    assert _read_all(dst) == data
    out = qemu_img("check", dst, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("where", ["write", "read", "cipher"])
def test_a_failing_stage_is_raised(workdir, monkeypatch, where):
    size = 40 << 20
    src = _raw(workdir, "src.raw", os.urandom(size))
    dst = os.path.join(workdir, "dst.qcow2")
    calls = {"n": 0}
    if where == "write":
        def hook(op, st, offset, length):
            if op == "write" and st.path.endswith(".tmp") and length >= (1 << 20):
                calls["n"] += 1
                if calls["n"] == 3:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
        ctx = storage.injected_faults(hook)
    else:
        import contextlib
        ctx = contextlib.nullcontext()
        if where == "read":
            real = storage.Storage.preadinto

            def preadinto(self, buf, offset, what="data"):
                if self.path.endswith("src.raw") and offset >= (12 << 20):
                    raise storage.StorageError("injected read failure")
                return real(self, buf, offset, what)
            monkeypatch.setattr(storage.Storage, "preadinto", preadinto)
        else:
            real = SectorCipher.encrypt

            def encrypt(self, buf, first_sector):
                if first_sector * 512 > (20 << 20):
                    raise Error("injected cipher failure")
                return real(self, buf, first_sector)
            monkeypatch.setattr(SectorCipher, "encrypt", encrypt)
    before = threading.active_count()
    with ctx, pytest.raises(Error):
        pyqcrypt.convert(src, dst, dst_passphrase=PW, iterations=1000)
    assert not [f for f in os.listdir(workdir) if f.startswith("dst")]
    assert threading.active_count() == before          # every stage's thread is gone


def test_memory_is_bounded():
    """A pipeline never holds more than one buffer per worker (two when
    each item asks for two), and sequences items in order."""
    made, seen = [], []
    with pipeline.Pipeline(workers=3, chunk=4096) as p:
        def produce(get_buffer):
            for i in range(50):
                buf = get_buffer()
                other = get_buffer() if i % 2 else None
                made.extend(id(b) for b in (buf, other) if b is not None)
                assert buf.off + 4096 <= len(buf.raw)
                yield i, buf, None

        p.run(produce, lambda item, buf: seen.append(item) or [])
    assert len(set(made)) <= 6
    assert seen == list(range(50))


class _Sleep:
    def __init__(self, seconds):
        self.seconds = seconds

    def run(self):
        time.sleep(self.seconds)


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_items_are_sequenced_in_order_whatever_finishes_first(workers):
    """Items whose jobs take longer (every third here) still reach
    *sequence* in the order *produce* made them, and progress only ever
    names an item when every one before it is written."""
    seen, progressed = [], []
    with pipeline.Pipeline(workers=workers, chunk=4096) as p:
        def produce(get_buffer):
            for i in range(30):
                yield i, get_buffer(), [_Sleep(0.004 if i % 3 == 0 else 0)]

        def sequence(item, buf):
            seen.append(item)
            return []
        p.run(produce, sequence, progressed.append)
    assert seen == list(range(30))
    assert progressed == sorted(progressed) and progressed[-1] == 29


def test_nonzero_runs():
    g = 64 << 10
    buf = pipeline.Buffer(5 * g + 100)
    assert buf.off + buf.view.nbytes <= len(buf.raw)
    buf.view[g + 5] = 1
    buf.view[3 * g] = 1
    buf.view[5 * g + 99] = 1
    assert copying.nonzero_runs(buf, len(buf.view), g) == [(g, 2 * g), (3 * g, 4 * g),
                                                               (5 * g, 5 * g + 100)]
    assert copying.nonzero_runs(pipeline.Buffer(3 * g), 3 * g, g) == []


def test_block_device_bulk_io_is_direct_and_coherent(workdir, loop_devices):
    """Aligned pipeline buffers go to a block device through O_DIRECT;
    unaligned writes stay buffered; reads see both."""
    size = 4 << 20
    dev = loop_devices(_raw(workdir, "dev.img", bytes(size)))
    buf = pipeline.Buffer(1 << 20)
    data = os.urandom(1 << 20)
    buf.view[:] = data
    with storage.Storage(dev, writable=True) as st:
        st.pwrite(1 << 20, buf.view)
        assert isinstance(st._direct.fd, int) and st._direct.fd is not False
        st.pwrite((1 << 20) + 100, b"buffered")                 # overlaps the direct write
        st.pwrite(0, memoryview(bytearray(b"x" * 4096)))         # unaligned buffer: buffered
        st.sync()
        back = pipeline.Buffer(1 << 20)
        st.preadinto(back.view, 1 << 20)
        expect = bytearray(data)
        expect[100:108] = b"buffered"
        assert bytes(back.view) == bytes(expect)
        assert st.pread(0, 4096) == b"x" * 4096
    with open(os.path.join(workdir, "dev.img"), "rb") as fh:
        fh.seek(1 << 20)
        assert fh.read(1 << 20) == bytes(expect)


def test_first_diff():
    a, b = pipeline.Buffer(10000), pipeline.Buffer(10000)
    assert compare.first_diff(a, b, 10000) is None
    b.view[9000] = 7
    assert compare.first_diff(a, b, 10000) == 9000
    assert compare.first_diff(a, b, 9000) is None


def test_reencrypting_verify_finds_a_difference(workdir, monkeypatch):
    size = 20 << 20
    data = os.urandom(size)
    src = _raw(workdir, "src.raw", data)
    dst = os.path.join(workdir, "dst.qcow2")
    pyqcrypt.convert(src, dst, dst_passphrase=PW, iterations=1000, verify=True)
    with pyqcrypt.image.open_image(src) as s:
        compare.verify_images(s, dst, PW, None, "qcow2")
        with pyqcrypt.image.open_image(dst, passphrase=PW, writable=True) as d:
            d.write((13 << 20) + 5, b"\x00" if data[(13 << 20) + 5] else b"\x01")
        with pytest.raises(Error, match="guest byte %d differs" % ((13 << 20) + 5)):
            compare.verify_images(s, dst, PW, None, "qcow2")
