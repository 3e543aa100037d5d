# SPDX-License-Identifier: LGPL-2.1-or-later
"""Nothing is ever copied short, silently.

Hole detection: only SEEK_DATA's ENXIO means "hole"; EINVAL (a block device,
a file system without hole support), EIO and anything else mean "unknown,
so data".  Copying: copy_file_range failing, returning short counts or
returning 0 too early, and a source that shrinks during the copy, each end
in an exact copy or a clear error with nothing left behind.  --verify finds
a corrupted byte.  Results are read back through qemu-img.
"""

import errno
import os

import pytest

import pyqcrypt
from pyqcrypt import storage

from conftest import cs_format, qemu_secret, run, tool, write_file

from pyqcrypt import conversion as convert_mod  # noqa: E402

PW = b"copy safety"
SIZE = 4 << 20
AREA = 2 << 20


@pytest.fixture
def volume(workdir):
    """A cryptsetup LUKS1 volume filled by qemu-img; (path, plaintext)."""
    data = bytearray(os.urandom(SIZE))
    data[1 << 20:2 << 20] = bytes(1 << 20)
    data = bytes(data)
    vol = cs_format(workdir, "vol.img", PW, size=AREA + SIZE)
    src = write_file(os.path.join(workdir, "plain"), data)
    run([tool("qemu-img"), "convert", "-n", "-f", "raw", "--object",
         qemu_secret(workdir, PW, "fill"), "--target-image-opts", src,
         "driver=luks,file.filename=%s,key-secret=fill" % vol])
    os.unlink(src)
    return vol, data


def _qemu_read(workdir, opts, name="r"):
    out = os.path.join(workdir, name + ".raw")
    run([tool("qemu-img"), "convert", "--object", qemu_secret(workdir, PW, name), "--image-opts",
         opts % name, "-O", "raw", out])
    with open(out, "rb") as fh:
        data = fh.read()
    os.unlink(out)
    return data


def _qcow2_plain(workdir, path):
    return _qemu_read(workdir, "driver=qcow2,file.filename=" + path + ",encrypt.key-secret=%s")


def _left_behind(workdir):
    """Files a failed conversion must not leave (destinations, temporaries)."""
    return sorted(n for n in os.listdir(workdir) if n.startswith(("dst", ".dst")) or ".tmp" in n)


def _lseek_failing(monkeypatch, err):
    real = os.lseek

    def lseek(fd, pos, how):
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(err, os.strerror(err))
        return real(fd, pos, how)
    monkeypatch.setattr(os, "lseek", lseek)


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOTTY],
                         ids=errno.errorcode.get)
def test_hole_detection_failure_means_data(workdir, volume, monkeypatch, err):
    vol, data = volume
    _lseek_failing(monkeypatch, err)
    dst = os.path.join(workdir, "dst.qcow2")
    pyqcrypt.convert(vol, dst, keep_ciphertext=True, verify=True)
    monkeypatch.undo()
    with open(vol, "rb") as fh:
        assert open(dst + ".data", "rb").read() == fh.read()[AREA:]
    assert _qcow2_plain(workdir, dst) == data
    # The re-encrypting path's hole test (RawImage.is_allocated) too.
    raw = write_file(os.path.join(workdir, "sparse.raw"), b"")
    with open(raw, "r+b") as fh:
        fh.truncate(SIZE)
        fh.seek(SIZE // 2)
        fh.write(b"\x99" * 8192)
    _lseek_failing(monkeypatch, err)
    out = os.path.join(workdir, "dst2.qcow2")
    pyqcrypt.convert(raw, out, dst_format="qcow2")
    monkeypatch.undo()
    got = _qemu_read(workdir, "driver=qcow2,file.filename=" + out + ",file.locking=off%.0s")
    assert got == open(raw, "rb").read()


def test_has_data_asks_only_seek_data(workdir, monkeypatch):
    """Storage.has_data: a hole is False, data or a range touching data is
    True, and one SEEK_DATA answers it.  SEEK_HOLE is never asked: on tmpfs
    it walks every page up to the next hole, which made a conversion of a
    fully written 1 GiB file spend 0.8 s in lseek (once per 8 MiB chunk)."""
    path = write_file(os.path.join(workdir, "f.raw"), b"")
    with open(path, "r+b") as fh:
        fh.truncate(4 << 20)
        fh.seek(2 << 20)
        fh.write(b"\x01" * (1 << 20))
    seen = []
    real = os.lseek

    def lseek(fd, pos, how):
        seen.append(how)
        return real(fd, pos, how)
    with storage.Storage(path) as st:
        monkeypatch.setattr(os, "lseek", lseek)
        holes = [(0, 1 << 20), (3 << 20, 1 << 20), (0, 0)]
        data = [(0, 4 << 20), (2 << 20, 1), ((2 << 20) - 1, 2), ((3 << 20) - 1, 1 << 20)]
        assert [st.has_data(a, n) for a, n in holes] == [False] * len(holes)
        assert [st.has_data(a, n) for a, n in data] == [True] * len(data)
        monkeypatch.undo()
        assert os.SEEK_HOLE not in seen and seen.count(os.SEEK_DATA) == len(holes) + len(data) - 1
        for err in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
            _lseek_failing(monkeypatch, err)
            assert st.has_data(0, 1 << 20), errno.errorcode[err]        # unknown counts as data
            monkeypatch.undo()


def test_real_holes_stay_holes(workdir, volume):
    vol, data = volume
    sparse = os.path.join(workdir, "sparse.img")
    run(["cp", "--sparse=always", vol, sparse])
    dst = os.path.join(workdir, "dst.qcow2")
    pyqcrypt.convert(sparse, dst, keep_ciphertext=True, verify=True)
    assert _qcow2_plain(workdir, dst) == data
    assert os.path.getsize(dst + ".data") == SIZE


def _copy_file_range(monkeypatch, behaviour):
    real = os.copy_file_range
    calls = []

    def fake(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        return behaviour(real, src, dst, count, offset_src, offset_dst)
    monkeypatch.setattr(os, "copy_file_range", fake)
    return calls


def _short(real, src, dst, count, osrc, odst):
    return real(src, dst, min(count, 4097), osrc, odst)


def _zero(real, *args):
    return 0


def _raise(code):
    def fail(real, *args):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize("name,behaviour", [("short", _short), ("zero", _zero),
                                            ("EINVAL", _raise(errno.EINVAL)),
                                            ("EXDEV", _raise(errno.EXDEV))])
def test_copy_file_range_quirks_still_copy_exactly(workdir, volume, monkeypatch, name, behaviour):
    vol, data = volume
    calls = _copy_file_range(monkeypatch, behaviour)
    dst = os.path.join(workdir, "dst.qcow2")
    pyqcrypt.convert(vol, dst, keep_ciphertext=True, verify=True)
    back = os.path.join(workdir, "dst.luks")
    pyqcrypt.convert(dst, back, dst_format="luks", keep_ciphertext=True, verify=True)
    monkeypatch.undo()
    assert calls                                           # the fault was really injected
    assert _qcow2_plain(workdir, dst) == data
    assert open(back, "rb").read() == open(vol, "rb").read()


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_copy_file_range_errors_fail_and_leave_nothing(workdir, volume, monkeypatch, code):
    vol, _ = volume
    _copy_file_range(monkeypatch, _raise(code))
    dst = os.path.join(workdir, "dst.qcow2")
    with pytest.raises(pyqcrypt.StorageError, match=os.strerror(code)):
        pyqcrypt.convert(vol, dst, keep_ciphertext=True)
    assert _left_behind(workdir) == []


def test_source_shrinking_during_copy_is_an_error(workdir, volume):
    vol, _ = volume
    dst = os.path.join(workdir, "dst.qcow2")
    shrunk = []

    def hook(kind, st, offset, length):
        if kind == "write" and not shrunk and st.path.endswith(".tmp"):
            os.truncate(vol, AREA + SIZE // 2)           # someone else truncates it
            shrunk.append(True)
    with storage.injected_faults(hook):
        with pytest.raises(pyqcrypt.FormatError, match="ends at byte %d" % (AREA + SIZE // 2)):
            pyqcrypt.convert(vol, dst, keep_ciphertext=True)
    assert shrunk and _left_behind(workdir) == []


def test_source_without_payload_is_a_clear_error(workdir, volume):
    vol, _ = volume
    os.truncate(vol, AREA)                               # header area only
    with pytest.raises(pyqcrypt.FormatError, match="no payload"):
        pyqcrypt.convert(vol, os.path.join(workdir, "dst.qcow2"), keep_ciphertext=True)
    assert _left_behind(workdir) == []


def test_short_data_file_copied_faithfully_or_refused(workdir, volume):
    """A raw data file shorter than the image reads as zeros past its end
    in QEMU; a single-file LUKS copy holds those zeros (the same bytes),
    a detached header over the short file cannot, and is refused."""
    vol, _ = volume
    qcow = os.path.join(workdir, "q.qcow2")
    pyqcrypt.convert(vol, qcow, keep_ciphertext=True)
    os.truncate(qcow + ".data", SIZE - (1 << 20))
    expected = _qcow2_plain(workdir, qcow)
    out = os.path.join(workdir, "dst.luks")
    pyqcrypt.convert(qcow, out, dst_format="luks", keep_ciphertext=True, verify=True)
    assert os.path.getsize(out) == AREA + SIZE
    assert _qemu_read(workdir, "driver=luks,file.filename=" + out + ",key-secret=%s") == expected
    with pytest.raises(pyqcrypt.Error, match="fewer than the"):
        pyqcrypt.convert(qcow, os.path.join(workdir, "dst.hdr"), dst_format="luks",
                         keep_ciphertext=True, dst_header=os.path.join(workdir, "dst.hdr"))
    assert _left_behind(workdir) == ["dst.luks"]


def _corrupting_copy(monkeypatch, at):
    real = convert_mod.copy_payload
    from pyqcrypt.conversion import from_luks, to_luks

    def copy(src, src_start, length, dst, dst_start=0, progress=None, dense=False):
        n = real(src, src_start, length, dst, dst_start, progress, dense)
        old = os.pread(dst.fd, 1, dst_start + at)
        os.pwrite(dst.fd, bytes([old[0] ^ 0x40]), dst_start + at)
        return n
    for module in (from_luks, to_luks):       # where keep-ciphertext copies the payload
        monkeypatch.setattr(module, "copy_payload", copy)


def test_verify_finds_a_flipped_byte(workdir, volume, monkeypatch):
    vol, _ = volume
    _corrupting_copy(monkeypatch, 3000001)
    dst = os.path.join(workdir, "dst.qcow2")
    with pytest.raises(pyqcrypt.Error, match="payload differs at byte 3000001"):
        pyqcrypt.convert(vol, dst, keep_ciphertext=True, verify=True)
    assert _left_behind(workdir) == []
    # The other direction, into an existing file (-n): reported, and the
    # target is the caller's, so it stays.
    monkeypatch.undo()
    pyqcrypt.convert(vol, dst, keep_ciphertext=True)
    target = write_file(os.path.join(workdir, "target.img"), bytes(AREA + SIZE))
    _corrupting_copy(monkeypatch, 17)
    with pytest.raises(pyqcrypt.Error, match="payload differs at byte 17 "):
        pyqcrypt.convert(dst, target, dst_format="luks", keep_ciphertext=True, verify=True,
                         existing_target=True)
