# SPDX-License-Identifier: LGPL-2.1-or-later
"""Positioned I/O on files and block devices, and the fault-injection hook.

Every byte pyqcrypt writes goes through ``Storage.pwrite`` and every flush
through ``Storage.sync``.  That gives one place to enforce bounds, to turn
short reads into clear errors, and to let tests stop the process at the Nth
write or sync (``fault_hook``) to prove that each operation leaves a
consistent image whichever write it dies after.

``Region`` is a window (offset, length) onto a Storage, such as the LUKS
header area of a raw volume or the FDE clusters of a qcow2 image.
"""

import contextlib
import errno
import os
import stat

from .errors import Error, FormatError, StorageError

# Test hook: a callable (kind, storage, offset, length) run before every
# write ("write"), sync ("sync") and truncate ("truncate").  It may raise to
# simulate a crash or an I/O error.  None in production.
fault_hook = None


@contextlib.contextmanager
def injected_faults(hook):
    """Install *hook* as the fault hook for the duration of a with block."""
    global fault_hook
    old, fault_hook = fault_hook, hook
    try:
        yield hook
    finally:
        fault_hook = old


class Storage:
    """A file or block device opened for positioned reads and writes."""

    def __init__(self, path, writable=False, create=False, exclusive=False):
        self.path = os.fspath(path)
        self.writable = writable
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
            if exclusive:
                flags |= os.O_EXCL
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise Error("cannot open %s: %s" % (self.path, exc.strerror or exc)) from None
        except ValueError:
            raise Error("invalid file name %r" % (self.path,)) from None
        st = os.fstat(self.fd)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_block_device or stat.S_ISREG(st.st_mode)):
            os.close(self.fd)
            self.fd = -1
            raise Error("%s is neither a regular file nor a block device" % self.path)

    # -- reads ---------------------------------------------------------------
    def size(self):
        """Current size in bytes (works for block devices too)."""
        return os.lseek(self.fd, 0, os.SEEK_END)

    def pread(self, offset, length, what="data"):
        """Exactly *length* bytes at *offset*; a short read is a FormatError."""
        if offset < 0 or length < 0:
            raise Error("negative read at %d" % offset)
        data = os.pread(self.fd, length, offset)
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                raise FormatError("file ends before the %s (%d bytes needed)" % (what, length),
                                  offset=offset, path=self.path)
            data += more
        return data

    def preadinto(self, buf, offset, what="data"):
        """Fill the writable buffer *buf* from *offset*; short read = error."""
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise FormatError("file ends before the %s (%d bytes needed)" % (what, len(view)),
                                  offset=offset, path=self.path)
            done += n
        return buf

    # -- writes ----------------------------------------------------------------
    def _check_writable(self):
        if not self.writable:
            raise Error("%s is open read-only" % self.path)

    def pwrite(self, offset, data):
        """Write all of *data* at *offset*."""
        self._check_writable()
        view = memoryview(data).cast("B")
        try:
            if fault_hook is not None:
                fault_hook("write", self, offset, len(view))
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as exc:
            raise StorageError("writing %d bytes at %d to %s failed: %s"
                               % (len(view), offset, self.path, exc.strerror or exc)) from None

    def copy_range_from(self, src, src_offset, dst_offset, length):
        """Copy up to *length* bytes from Storage *src* with
        copy_file_range (extents shared where the file system can), falling
        back to read and write; returns the bytes copied."""
        self._check_writable()
        try:
            if fault_hook is not None:
                fault_hook("write", self, dst_offset, length)
            try:
                got = os.copy_file_range(src.fd, self.fd, length, src_offset, dst_offset)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
                    raise
                got = 0
            if got > 0:
                return got
        except OSError as exc:
            raise StorageError("copying %d bytes into %s failed: %s"
                               % (length, self.path, exc.strerror or exc)) from None
        chunk = src.pread(src_offset, min(length, 4 << 20))
        self.pwrite(dst_offset, chunk)
        return len(chunk)

    def sync(self):
        """Flush written data to stable storage."""
        try:
            if fault_hook is not None:
                fault_hook("sync", self, 0, 0)
            os.fsync(self.fd)
        except OSError as exc:
            raise StorageError("syncing %s failed: %s" % (self.path, exc.strerror or exc)) from None

    def truncate(self, length):
        self._check_writable()
        if self.is_block_device:
            raise Error("cannot resize block device %s" % self.path)
        try:
            if fault_hook is not None:
                fault_hook("truncate", self, length, 0)
            os.ftruncate(self.fd, length)
        except OSError as exc:
            raise StorageError("resizing %s to %d bytes failed: %s"
                               % (self.path, length, exc.strerror or exc)) from None

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<Storage %s%s>" % (self.path, "" if self.writable else " (read-only)")


class Region:
    """A bounded window onto a Storage: offsets are relative to its start."""

    def __init__(self, storage, offset, length):
        if offset < 0 or length < 0:
            raise Error("bad region (%d, %d)" % (offset, length))
        self.storage = storage
        self.offset = offset
        self.length = length

    @property
    def path(self):
        return self.storage.path

    def _check(self, offset, length, what):
        if offset < 0 or length < 0 or offset + length > self.length:
            raise FormatError("%s (%d bytes at %d) lies outside the %d-byte header region"
                              % (what, length, offset, self.length), path=self.path,
                              offset=self.offset + max(offset, 0))

    def read(self, offset, length, what="data"):
        self._check(offset, length, what)
        return self.storage.pread(self.offset + offset, length, what)

    def readinto(self, buf, offset, what="data"):
        self._check(offset, memoryview(buf).nbytes, what)
        return self.storage.preadinto(buf, self.offset + offset, what)

    def write(self, offset, data, what="data"):
        self._check(offset, memoryview(data).nbytes, what)
        self.storage.pwrite(self.offset + offset, data)

    def sync(self):
        self.storage.sync()

    def __repr__(self):
        return "<Region %s +%d, %d bytes>" % (self.storage.path, self.offset, self.length)


def _tmp_name(path):
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, ".%s.pyqcrypt-%d.tmp" % (tail, os.getpid()))


class NewFile:
    """A new file built under a temporary name beside *path* and renamed
    over it only by ``commit()``; ``abort()`` removes it.  So a failed
    create or convert leaves nothing behind."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.exists(self.path):
            raise Error("%s already exists" % self.path)
        self.tmp = _tmp_name(self.path)
        self.storage = Storage(self.tmp, writable=True, create=True, exclusive=True)

    committed = False

    def commit(self):
        self.storage.sync()
        self.storage.close()
        os.rename(self.tmp, self.path)
        self.committed = True
        dirfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def abort(self):
        """Remove the file, whether or not it was committed."""
        self.storage.close()
        for name in (self.tmp, self.path if self.committed else None):
            if name is None:
                continue
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
