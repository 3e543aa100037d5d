# SPDX-License-Identifier: LGPL-2.1-or-later
"""The fault-injection wrapper (pyqcrypt.storage.faults) itself: a hook
sees every write, sync and truncate with the arguments the fault tests rely
on, in every thread; it is gone again after its with block, whether or not
it raised, and nested blocks restore each other; and an OSError raised by a
hook turns into exactly the StorageError a real failure of the system call
gives, so an injected fault is indistinguishable from a real one."""

import errno
import os
import threading

import pytest

from pyqcrypt import storage
from pyqcrypt.errors import StorageError
from pyqcrypt.storage import Storage

PRIMITIVES = ("_pwrite_all", "_kernel_copy", "_fsync", "_ftruncate")


def _primitives():
    return {name: vars(Storage)[name] for name in PRIMITIVES}


def _plain():
    """The primitives as pyqcrypt.storage.positioned defines them."""
    return all(f.__module__ == "pyqcrypt.storage.positioned" for f in _primitives().values())


def _eio(*args):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.fixture
def file_pair(workdir):
    src = os.path.join(workdir, "src")
    with open(src, "wb") as fh:
        fh.write(os.urandom(8192))
    dst = os.path.join(workdir, "dst")
    with Storage(src) as s, Storage(dst, writable=True, create=True) as d:
        yield s, d


def test_the_hook_sees_each_operation_with_its_arguments(file_pair):
    src, dst = file_pair
    calls = []
    with storage.injected_faults(lambda *args: calls.append(args)):
        dst.pwrite(100, b"abc")
        assert dst.copy_range_from(src, 0, 4096, 4096) == 4096
        dst.sync()
        dst.truncate(5000)
    assert calls == [("write", dst, 100, 3), ("write", dst, 4096, 4096), ("sync", dst, 0, 0),
                     ("truncate", dst, 5000, 0)]
    assert dst.pread(100, 3) == b"abc" and dst.pread(4096, 1) == src.pread(0, 1)
    assert dst.size() == 5000


def test_no_wrapper_is_left_behind(file_pair):
    _, dst = file_pair
    assert _plain()
    plain = _primitives()
    with storage.injected_faults(_eio):
        assert not _plain()
        with pytest.raises(StorageError):
            dst.pwrite(0, b"x")
    assert _primitives() == plain
    with pytest.raises(RuntimeError):
        with storage.injected_faults(_eio):
            raise RuntimeError("the block fails")
    assert _primitives() == plain


def test_nested_blocks_restore_the_outer_hook(file_pair):
    _, dst = file_pair
    seen = []
    with storage.injected_faults(lambda kind, *a: seen.append("outer " + kind)):
        with storage.injected_faults(lambda kind, *a: seen.append("inner " + kind)):
            dst.sync()
        dst.sync()
    dst.sync()
    assert seen == ["inner sync", "outer sync"]
    assert _plain()


def test_install_faults_stays_until_removed(file_pair):
    _, dst = file_pair
    seen = []
    try:
        storage.install_faults(lambda kind, *a: seen.append(kind))
        dst.sync()
    finally:
        storage.install_faults(None)
    dst.sync()
    assert seen == ["sync"] and _plain()


def test_worker_threads_see_the_hook(file_pair):
    _, dst = file_pair
    seen = []
    with storage.injected_faults(lambda kind, st, offset, length: seen.append((kind, offset))):
        worker = threading.Thread(target=dst.pwrite, args=(4096, b"from a worker"))
        worker.start()
        worker.join()
    assert seen == [("write", 4096)]


@pytest.mark.parametrize("op, syscall", [
    (lambda src, dst: dst.pwrite(512, b"data"), "pwrite"),
    (lambda src, dst: dst.copy_range_from(src, 0, 0, 4096), "copy_file_range"),
    (lambda src, dst: dst.sync(), "fsync"),
    (lambda src, dst: dst.truncate(1 << 20), "ftruncate"),
], ids=["pwrite", "copy_range_from", "sync", "truncate"])
def test_an_injected_error_reads_as_a_real_one(file_pair, monkeypatch, op, syscall):
    src, dst = file_pair
    with storage.injected_faults(_eio):
        with pytest.raises(StorageError) as injected:
            op(src, dst)
    with monkeypatch.context() as patch:
        patch.setattr(os, syscall, _eio)
        with pytest.raises(StorageError) as real:
            op(src, dst)
    assert str(injected.value) == str(real.value)
    assert "Input/output error" in str(real.value)
