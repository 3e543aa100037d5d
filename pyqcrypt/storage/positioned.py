# SPDX-License-Identifier: LGPL-2.1-or-later
"""Positioned I/O on one file or block device: ``Storage``.

Every byte pyqcrypt writes goes through ``Storage.pwrite`` and every flush
through ``Storage.sync``.  That gives one place to enforce bounds, to turn
short reads into clear errors, and to refuse a block device someone else
holds (O_EXCL).  What touches the disk is a handful of small primitives
(``_pwrite_all``, ``_kernel_copy``, ``_fsync``, ``_ftruncate``), each called
inside the method's error handling: tests wrap them (``storage.faults``) to
stop the process at the Nth write or sync and prove that each operation
leaves a consistent image whichever write it dies after.

Bulk transfers on a block device may go through a second, O_DIRECT
descriptor (``storage.direct``); the hole map is ``storage.holes``.
"""

import errno
import fcntl
import os
import stat
import struct

from ..errors import Error, FormatError, StorageError
from .direct import DirectChannel, transfers
from .holes import data_runs, has_data

BLKGETSIZE64 = 0x80081272           # _IOR(0x12, 114, size_t): a device's size in bytes

# copy_file_range errors that only mean "not between these two files":
# the copy goes on with read and write.  Any other errno is a real failure.
_COPY_UNSUPPORTED = frozenset({errno.EINVAL, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS,
                               errno.EBADF, errno.ETXTBSY, errno.EPERM})
_COPY_CHUNK = 4 << 20


def _preadv(fd, view, offset):
    return os.preadv(fd, [view], offset)


def read_head(path, length):
    """The first *length* bytes of the file or device at *path* (fewer
    when it is shorter): one open, one read.  A file that cannot be opened
    or read is an error naming it, never an empty answer."""
    with Storage(path) as st:
        return st.pread(0, min(length, st.size()), "image header")


def close_quietly(fd):
    """Close *fd* on a path that is already failing: the first error is
    the one to report."""
    try:
        os.close(fd)
    except OSError:
        pass


class Storage:
    """A file or block device opened for positioned reads and writes."""

    _bounce = None          # copy_range_from's buffer where the kernel cannot copy
    _direct = None          # a block device's DirectChannel

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
            if writable and not create and stat.S_ISBLK(os.stat(self.path).st_mode):
                # A block device is written only when nobody else holds it
                # exclusively: not mounted, not a swap or RAID member, not
                # opened for writing by another pyqcrypt or cryptsetup.
                flags |= os.O_EXCL
            self.fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise Error("cannot open %s for writing: it is in use (mounted, or held "
                            "exclusively by another program)" % self.path) from None
            raise Error("cannot open %s: %s" % (self.path, exc.strerror or exc)) from None
        except ValueError:
            raise Error("invalid file name %r" % (self.path,)) from None
        try:
            st = os.fstat(self.fd)
        except OSError as exc:
            close_quietly(self.fd)
            self.fd = -1
            raise StorageError("cannot stat %s: %s" % (self.path, exc.strerror or exc)) from None
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_block_device or stat.S_ISREG(st.st_mode)):
            os.close(self.fd)
            self.fd = -1
            raise Error("%s is neither a regular file nor a block device" % self.path)
        if self.is_block_device:
            self._direct = DirectChannel(self.path, flags & ~(os.O_CREAT | os.O_EXCL))

    # -- reads ---------------------------------------------------------------
    def size(self):
        """Current size in bytes: BLKGETSIZE64 for a block device (never
        st_size, which is 0 there), the end of file otherwise."""
        try:
            if self.is_block_device:
                buf = fcntl.ioctl(self.fd, BLKGETSIZE64, bytes(8))
                return struct.unpack("=Q", buf)[0]
            return os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            raise StorageError("cannot get the size of %s: %s"
                               % (self.path, exc.strerror or exc)) from None

    def _read_failed(self, exc, offset, length):
        return StorageError("reading %d bytes at %d from %s failed: %s"
                            % (length, offset, self.path, exc.strerror or exc))

    def pread(self, offset, length, what="data"):
        """Exactly *length* bytes at *offset*; a short read is a FormatError."""
        if offset < 0 or length < 0:
            raise Error("negative read at %d" % offset)
        try:
            data = os.pread(self.fd, length, offset)
            while len(data) < length:
                more = os.pread(self.fd, length - len(data), offset + len(data))
                if not more:
                    raise FormatError("file ends at byte %d, before the end of the %s (%d bytes "
                                      "needed)" % (offset + len(data), what, length),
                                      offset=offset, path=self.path)
                data += more
        except OSError as exc:
            raise self._read_failed(exc, offset, length) from None
        return data

    def preadinto(self, buf, offset, what="data"):
        """Fill the writable buffer *buf* from *offset*; short read = error."""
        view = memoryview(buf).cast("B")
        done = 0
        try:
            for done in transfers(self.fd, self._direct, view, offset, _preadv):
                pass
        except OSError as exc:
            raise self._read_failed(exc, offset + done, len(view) - done) from None
        if done < len(view):
            raise FormatError("file ends at byte %d, before the end of the %s (%d bytes needed)"
                              % (offset + done, what, len(view)), offset=offset, path=self.path)
        return buf

    def data_runs(self, start, length):
        """The runs of [start, start+length) that may hold data, relative
        to *start* (``holes.data_runs``)."""
        return data_runs(self.fd, self.is_block_device, start, length)

    def has_data(self, start, length):
        """False only when all of [start, start+length) is a reported hole
        (``holes.has_data``)."""
        return has_data(self.fd, self.is_block_device, start, length)

    # -- the primitives that touch the disk (storage.faults wraps them) ------
    def _pwrite_all(self, view, offset):
        """All of *view* at *offset*; a write that moves nothing is EIO."""
        done = 0
        for done in transfers(self.fd, self._direct, view, offset, os.pwrite):
            pass
        if done < len(view):
            raise OSError(errno.EIO, "the kernel wrote nothing at byte %d" % (offset + done))

    def _kernel_copy(self, src, length, src_offset, dst_offset):
        return os.copy_file_range(src.fd, self.fd, length, src_offset, dst_offset)

    def _fsync(self):
        os.fsync(self.fd)

    def _ftruncate(self, length):
        os.ftruncate(self.fd, length)

    # -- writes ----------------------------------------------------------------
    def _check_writable(self):
        if not self.writable:
            raise Error("%s is open read-only" % self.path)

    def pwrite(self, offset, data):
        """Write all of *data* at *offset*."""
        self._check_writable()
        view = memoryview(data).cast("B")
        try:
            self._pwrite_all(view, offset)
        except OSError as exc:
            raise StorageError("writing %d bytes at %d to %s failed: %s"
                               % (len(view), offset, self.path, exc.strerror or exc)) from None

    def copy_range_from(self, src, src_offset, dst_offset, length):
        """Copy up to *length* bytes from Storage *src*; returns how many
        were copied (at least one, unless *length* is 0).

        copy_file_range first (extents shared where the file system can);
        where the kernel cannot copy between these two files (block
        devices, other file systems) read and write through a buffer this
        Storage keeps for it.  A source that ends before *length* bytes is
        a FormatError naming the byte where it ended, never a short copy."""
        self._check_writable()
        if length <= 0:
            return 0
        if not getattr(src, "_no_copy_range", False) and not self.is_block_device \
                and not src.is_block_device:
            try:
                got = self._kernel_copy(src, length, src_offset, dst_offset)
                if got > 0:
                    return got
                # 0: the source ends here, or a file system that cannot
                # say; the read below tells which.
            except OSError as exc:
                if exc.errno not in _COPY_UNSUPPORTED:
                    raise StorageError("copying %d bytes from %s into %s failed: %s"
                                       % (length, src.path, self.path, exc.strerror or exc)) from None
                src._no_copy_range = True
        n = min(length, _COPY_CHUNK)
        if self._bounce is None or len(self._bounce) < n:
            self._bounce = bytearray(n)
        view = memoryview(self._bounce)[:n]
        src.preadinto(view, src_offset, "data to copy")
        self.pwrite(dst_offset, view)
        return n

    def sync(self):
        """Flush written data to stable storage."""
        try:
            self._fsync()
        except OSError as exc:
            raise StorageError("syncing %s failed: %s" % (self.path, exc.strerror or exc)) from None

    def truncate(self, length):
        self._check_writable()
        if self.is_block_device:
            raise Error("cannot resize block device %s" % self.path)
        try:
            self._ftruncate(length)
        except OverflowError:
            raise StorageError("resizing %s to %d bytes failed: File too large"
                               % (self.path, length)) from None
        except OSError as exc:
            raise StorageError("resizing %s to %d bytes failed: %s"
                               % (self.path, length, exc.strerror or exc)) from None

    def close(self):
        """Close the file (and its O_DIRECT twin, if one was opened); a
        second call does nothing.  A descriptor is gone even when close
        reports an error (Linux), so it is never closed twice."""
        fd, self.fd = self.fd, -1
        try:
            if self._direct is not None:
                self._direct.close()
            if fd >= 0:
                os.close(fd)
        except OSError as exc:
            raise StorageError("closing %s failed: %s"
                               % (self.path, exc.strerror or exc)) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<Storage %s%s>" % (self.path, "" if self.writable else " (read-only)")
