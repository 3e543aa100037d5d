# SPDX-License-Identifier: LGPL-2.1-or-later
"""The error model: every failure reaches an API caller as a pyqcrypt.Error.

An OSError (EIO) is injected into each system call the library makes (the
os functions it calls are replaced for the duration of one operation),
at the first, a middle and the last call of each kind, for the main API
operations.  Whatever happens, the operation either succeeds or raises a
pyqcrypt.Error naming what failed: never a raw OSError, never anything
else.
"""

import errno
import os

import pytest

import pyqcrypt
from pyqcrypt import luks
from pyqcrypt.info_report import image_info
from pyqcrypt.qcow2.check import check_qcow2
from pyqcrypt.storage import publication
from pyqcrypt import secrets

PW = b"error model pass"

# os functions pyqcrypt calls on files and devices.
CALLS = ["pread", "preadv", "pwrite", "write", "read", "fsync", "lseek", "fstat", "ftruncate",
         "open", "close", "link", "unlink", "stat", "lstat", "copy_file_range"]


def _eio(*args):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


class Injector:
    """Counts the calls of each os function; fails the *fail_at*-th call
    of *name* with EIO (close really closes first, as on Linux)."""

    def __init__(self, monkeypatch, name=None, fail_at=None):
        self.counts = dict.fromkeys(CALLS, 0)
        self.fired = False
        for call in CALLS:
            real = getattr(os, call)
            monkeypatch.setattr(os, call, self._wrap(call, real, name, fail_at))
        # renameat2 goes through ctypes: fail it like the others.
        real_rename = publication._renameat2_noreplace
        monkeypatch.setattr(publication, "_renameat2_noreplace",
                            self._wrap("renameat2", real_rename, name, fail_at))
        self.counts["renameat2"] = 0

    def _wrap(self, call, real, name, fail_at):
        def wrapper(*args, **kwargs):
            self.counts[call] += 1
            if call == name and self.counts[call] == fail_at:
                self.fired = True
                if call == "close":
                    real(*args, **kwargs)
                _eio()
            return real(*args, **kwargs)
        return wrapper


def _make_qcow2(d):
    path = os.path.join(d, "e.qcow2")
    pyqcrypt.create(path, 1 << 20, "qcow2", passphrase=PW, iterations=1000)
    return path


def _make_luks(d):
    path = os.path.join(d, "v.luks")
    pyqcrypt.create(path, 1 << 20, "luks", passphrase=PW, iterations=1000)
    return path


def op_create_qcow2(d, made):
    pyqcrypt.create(os.path.join(d, "new.qcow2"), 1 << 20, "qcow2", passphrase=PW,
                    iterations=1000)


def op_create_luks(d, made):
    pyqcrypt.create(os.path.join(d, "new.luks"), 1 << 20, "luks", passphrase=PW,
                    iterations=1000)


def op_qcow2_io(d, made):
    with pyqcrypt.open(made["qcow2"], passphrase=PW, writable=True) as img:
        img.write(70000, b"\x5a" * 100000)
        assert img.read(70000, 100000) == b"\x5a" * 100000
        img.flush()


def op_luks_io(d, made):
    with pyqcrypt.open(made["luks"], passphrase=PW, writable=True) as img:
        img.write(4096, b"\xa5" * 8192)
        assert img.read(4096, 8192) == b"\xa5" * 8192
        assert img.size == 1 << 20
        img.flush()


def op_raw_io(d, made):
    with pyqcrypt.open(made["raw"], writable=True) as img:
        img.write(512, b"\x11" * 4096)
        assert img.read(512, 4096) == b"\x11" * 4096
        img.flush()


def op_convert_reencrypt(d, made):
    pyqcrypt.convert(made["qcow2"], os.path.join(d, "out.raw"), dst_format="raw",
                     src_passphrase=PW)


def op_convert_keep(d, made):
    pyqcrypt.convert(made["luks"], os.path.join(d, "kept.qcow2"), dst_format="qcow2",
                     keep_ciphertext=True)


def op_header_backup(d, made):
    with luks.open_area(made["luks"]) as area:
        luks.header_backup(area, os.path.join(d, "hdr.bak"))


def op_info_check(d, made):
    image_info(made["qcow2"])
    image_info(made["luks"])
    check_qcow2(made["qcow2"])


OPS = [op_create_qcow2, op_create_luks, op_qcow2_io, op_luks_io, op_raw_io,
       op_convert_reencrypt, op_convert_keep, op_header_backup, op_info_check]


def _fixture_files(d):
    made = {"qcow2": _make_qcow2(d), "luks": _make_luks(d), "raw": os.path.join(d, "r.raw")}
    with open(made["raw"], "wb") as fh:
        fh.truncate(1 << 20)
    return made


def _where(exc):
    """The innermost pyqcrypt frame an exception came through."""
    import traceback
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/pyqcrypt/" in f.filename]
    return "%s:%d" % (frames[-1].filename.split("/pyqcrypt/")[-1], frames[-1].lineno) if frames else "?"


def _points(n):
    """Which calls to fail: the first, one in the middle, the last."""
    return sorted({1, (n + 1) // 2, n}) if n else []


@pytest.mark.parametrize("op", OPS, ids=[o.__name__[3:] for o in OPS])
def test_injected_oserror_is_a_pyqcrypt_error(tmp_path, monkeypatch, op):
    escaped = []
    runs = 0
    base = str(tmp_path / "dry")
    os.mkdir(base)
    made = _fixture_files(base)
    with monkeypatch.context() as m:
        counter = Injector(m)
        op(base, made)                      # the dry run: which calls, how often
    counts = dict(counter.counts)
    for name, n in counts.items():
        for k in _points(n):
            d = str(tmp_path / ("%s-%d" % (name, k)))
            os.mkdir(d)
            made = _fixture_files(d)
            runs += 1
            with monkeypatch.context() as m:
                inj = Injector(m, name, k)
                try:
                    op(d, made)
                except pyqcrypt.Error:
                    pass
                except BaseException as exc:    # noqa: B902 - anything else is the finding
                    escaped.append("%s: call %d of os.%s -> %s: %s (raised at %s)"
                                   % (op.__name__, k, name, type(exc).__name__, exc, _where(exc)))
            assert inj.fired or name == "close"
    assert runs > 0
    assert not escaped, "\n".join(escaped)


def test_read_error_names_path_and_offset(tmp_path, monkeypatch):
    """A failing read is a StorageError that names the file and the offset."""
    path = _make_luks(str(tmp_path))
    with pyqcrypt.open(path, passphrase=PW) as img:
        monkeypatch.setattr(os, "pread", _eio)
        monkeypatch.setattr(os, "preadv", _eio)
        with pytest.raises(pyqcrypt.StorageError) as info:
            img.read(8192, 4096)
    msg = str(info.value)
    assert path in msg and "Input/output error" in msg and "at %d" % (2 << 20 | 8192) in msg, msg


def test_header_backup_write_error(tmp_path, monkeypatch):
    """header_backup's own writes: ENOSPC is a StorageError naming the
    backup file, and no partial backup is left behind."""
    path = _make_luks(str(tmp_path))
    dest = str(tmp_path / "hdr.bak")
    with luks.open_area(path) as area:
        monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
        with pytest.raises(pyqcrypt.StorageError) as info:
            luks.header_backup(area, dest)
    assert dest in str(info.value) and "No space left" in str(info.value)
    assert not os.path.exists(dest)


class _FailingFile:
    """A key file whose reads fail with EIO."""

    def __init__(self, *args, **kwargs):
        pass

    def seekable(self):
        return True

    def seek(self, offset):
        _eio()

    def readinto(self, buf):
        _eio()

    def close(self):
        pass


@pytest.mark.parametrize("offset", [0, 10])
def test_key_file_read_error(tmp_path, monkeypatch, offset):
    """Key files are read through Python's file objects, not os.*: a
    failing read or seek is a pyqcrypt.Error naming the file."""
    key = str(tmp_path / "key")
    with open(key, "wb") as fh:
        fh.write(PW)
    monkeypatch.setattr(secrets, "open", _FailingFile, raising=False)
    with pytest.raises(pyqcrypt.Error) as info:
        secrets.read_key_file(key, offset)
    assert key in str(info.value) and "Input/output error" in str(info.value)
    store = secrets.SecretStore(warn=lambda msg: None)
    store.add_object("secret,id=s,file=%s" % key)
    with pytest.raises(pyqcrypt.Error):
        store.get("s")


def test_bad_data_file_name_error_names_its_extension_offset(tmp_path):
    """A qcow2 header whose data-file-name extension is invalid: the error
    gives that extension's offset (after the backing format extension),
    not just where the extensions start."""
    import struct
    from pyqcrypt.qcow2.header import EXT_DATA_FILE, Qcow2Header
    base = str(tmp_path / "base.qcow2")
    path = str(tmp_path / "top.qcow2")
    pyqcrypt.create(base, 1 << 20, "qcow2")
    pyqcrypt.create(path, 1 << 20, "qcow2", backing_file=base, backing_format="qcow2",
                    data_file=str(tmp_path / "top.data"))
    with open(path, "rb") as fh:
        head = bytearray(fh.read(65536))
    header_length = struct.unpack_from(">I", head, 100)[0]
    off = header_length
    while struct.unpack_from(">I", head, off)[0] != EXT_DATA_FILE:
        off += 8 + (struct.unpack_from(">I", head, off + 4)[0] + 7) // 8 * 8
    assert off > header_length                  # another extension comes first
    head[off + 8] = 0xff                        # the name is no longer UTF-8
    with pytest.raises(pyqcrypt.FormatError) as info:
        Qcow2Header.parse(bytes(head), 1 << 20, path=path)
    assert info.value.offset == off and info.value.field == "data file extension", str(info.value)
