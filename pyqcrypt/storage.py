# SPDX-License-Identifier: LGPL-2.1-or-later
"""Positioned I/O on files and block devices, and the fault-injection hook.

Every byte pyqcrypt writes goes through ``Storage.pwrite`` and every flush
through ``Storage.sync``.  That gives one place to enforce bounds, to turn
short reads into clear errors, and to let tests stop the process at the Nth
write or sync (``fault_hook``) to prove that each operation leaves a
consistent image whichever write it dies after.

On a block device, reads and writes of whole aligned blocks from aligned
buffers (the conversion pipeline's) go through a second descriptor opened
with O_DIRECT: measured on loop devices, 1 GiB written and synced took
0.3 s instead of 0.9-1.2 s through the page cache, and reads were faster
too.  Everything else stays buffered (the kernel keeps the two coherent);
a device that refuses O_DIRECT is used buffered.

``Region`` is a window (offset, length) onto a Storage, such as the LUKS
header area of a raw volume or the FDE clusters of a qcow2 image.
"""

import contextlib
import errno
import fcntl
import functools
import os
import stat
import struct

from .errors import Error, FormatError, StorageError

# Test hook: a callable (kind, storage, offset, length) run before every
# write ("write"), sync ("sync") and truncate ("truncate").  It may raise to
# simulate a crash or an I/O error.  None in production.
fault_hook = None

BLKGETSIZE64 = 0x80081272           # _IOR(0x12, 114, size_t): a device's size in bytes

# copy_file_range errors that only mean "not between these two files":
# the copy goes on with read and write.  Any other errno is a real failure.
_COPY_UNSUPPORTED = frozenset({errno.EINVAL, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS,
                               errno.EBADF, errno.ETXTBSY, errno.EPERM})
_COPY_CHUNK = 4 << 20
DIRECT_ALIGN = 4096                 # any logical block size divides it


def _preadv(fd, view, offset):
    return os.preadv(fd, [view], offset)


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

    _bounce = None          # copy_range_from's buffer where the kernel cannot copy

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
            self._flags = flags & ~(os.O_CREAT | os.O_EXCL)
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

    _direct = None                  # the O_DIRECT descriptor, False when refused

    def _direct_fd(self, view, offset):
        """The O_DIRECT descriptor of a block device, when *view* and
        *offset* are aligned for it; None otherwise."""
        if not self.is_block_device or self._direct is False or offset % DIRECT_ALIGN \
                or len(view) % DIRECT_ALIGN or not len(view) or view.readonly:
            return None
        import ctypes               # only here and for renameat2: start-up
        if ctypes.addressof(ctypes.c_char.from_buffer(view)) % DIRECT_ALIGN:
            return None
        if self._direct is None:
            try:
                # No O_EXCL: this process holds the device through self.fd.
                self._direct = os.open(self.path, (self._flags & ~os.O_EXCL) | os.O_DIRECT)
            except (OSError, AttributeError):
                self._direct = False
                return None
        return self._direct

    def _direct_failed(self):
        """O_DIRECT refused after all (EINVAL): buffered from now on."""
        fd, self._direct = self._direct, False
        if fd is not None and fd is not False:
            os.close(fd)

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
            for done in self._transfers(view, offset, _preadv):
                pass
        except OSError as exc:
            raise self._read_failed(exc, offset + done, len(view) - done) from None
        if done < len(view):
            raise FormatError("file ends at byte %d, before the end of the %s (%d bytes needed)"
                              % (offset + done, what, len(view)), offset=offset, path=self.path)
        return buf

    def _transfers(self, view, offset, call):
        """Move all of *view* at *offset* with ``call(fd, part, position)``
        (a positioned read or write returning a count), yielding the bytes
        done after each call; it stops early only when a call moves none.
        Aligned transfers go through the O_DIRECT descriptor when there is
        one (see _direct_fd); EINVAL there, or a short transfer that leaves
        the rest unaligned, continues on the buffered one."""
        done = 0
        fd = self._direct_fd(view, offset)
        fd = self.fd if fd is None else fd
        while done < len(view):
            try:
                n = call(fd, view[done:], offset + done)
            except OSError as exc:
                if fd == self.fd or exc.errno != errno.EINVAL:
                    raise
                self._direct_failed()
                fd = self.fd
                continue
            if n == 0:
                return
            if n % DIRECT_ALIGN and fd != self.fd:
                fd = self.fd
            done += n
            yield done

    def data_runs(self, start, length):
        """The (begin, end) runs, relative to *start*, of [start,
        start+length) that may hold data.  Only what the file system
        positively reports as a hole is left out: SEEK_DATA failing with
        ENXIO means "nothing but hole from here on"; any other failure
        (EINVAL on a block device or a file system without hole support,
        EIO, ...) means "unknown", so the rest counts as data."""
        if self.is_block_device:
            if length > 0:
                yield 0, length
            return
        pos = 0
        while pos < length:
            try:
                data = os.lseek(self.fd, start + pos, os.SEEK_DATA) - start
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return
                yield pos, length
                return
            if data >= length:
                return
            data = max(data, pos)
            try:
                hole = min(os.lseek(self.fd, start + data, os.SEEK_HOLE) - start, length)
            except OSError:
                hole = length
            if hole <= data:            # a file system that contradicts itself: all data
                hole = length
            yield data, hole
            pos = hole

    def has_data(self, start, length):
        """False only when the file system positively reports all of
        [start, start+length) as a hole.  One SEEK_DATA: unlike data_runs,
        this never asks where the data ends (SEEK_HOLE), which on tmpfs
        walks the file's pages up to the next hole, the whole rest of a
        fully written file."""
        if length <= 0:
            return False
        if self.is_block_device:
            return True
        try:
            data = os.lseek(self.fd, start, os.SEEK_DATA)
        except OSError as exc:
            return exc.errno != errno.ENXIO     # ENXIO: only hole from here on
        return data < start + length

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
            for done in self._transfers(view, offset, os.pwrite):
                pass
            if done < len(view):
                raise OSError(errno.EIO, "the kernel wrote nothing at byte %d" % (offset + done))
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
                if fault_hook is not None:
                    fault_hook("write", self, dst_offset, length)
                got = os.copy_file_range(src.fd, self.fd, length, src_offset, dst_offset)
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
        direct, self._direct = self._direct, None
        fd, self.fd = self.fd, -1
        for d in (direct, fd):
            if d is None or d is False or d < 0:
                continue
            try:
                os.close(d)
            except OSError as exc:
                raise StorageError("closing %s failed: %s"
                                   % (self.path, exc.strerror or exc)) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<Storage %s%s>" % (self.path, "" if self.writable else " (read-only)")


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


def unlink_quietly(path):
    """Remove *path* on a path that is already failing (cleanup); a file
    that is gone or cannot be removed does not replace the first error."""
    try:
        os.unlink(path)
    except OSError:
        pass


_ZEROS = bytes(4 << 20)


def zero_fill(write, offset, length):
    """Zeros over [offset, offset+length) through *write(offset, data)*
    (a Storage's pwrite or an image's write), in bounded chunks."""
    pos = 0
    while pos < length:
        n = min(length - pos, len(_ZEROS))
        write(offset + pos, memoryview(_ZEROS)[:n])
        pos += n


class MemoryStorage:
    """A Storage-like byte buffer (for building a header region in memory)."""

    path = "<memory>"
    is_block_device = False

    def __init__(self, size):
        self.buf = bytearray(size)

    def size(self):
        return len(self.buf)

    def pread(self, offset, length, what="data"):
        return bytes(self.buf[offset:offset + length])

    def preadinto(self, buf, offset, what="data"):
        view = memoryview(buf).cast("B")
        view[:] = self.buf[offset:offset + len(view)]

    def pwrite(self, offset, data):
        data = memoryview(data).cast("B")
        self.buf[offset:offset + len(data)] = data

    def sync(self):
        pass


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


TMP_TAG = ".pyqcrypt-"
TMP_SUFFIX = ".tmp"


def tmp_name(path):
    """The visible temporary name a new *path* is built under, beside it:
    ``NAME.pyqcrypt-PID.tmp``, so a user sees (and can remove) what a
    killed run left, and the next run can say so."""
    return "%s%s%d%s" % (os.path.abspath(path), TMP_TAG, os.getpid(), TMP_SUFFIX)


def leftovers(path):
    """Temporaries of *path* left by pyqcrypt runs whose process is gone."""
    import glob
    found = []
    for name in glob.glob(glob.escape(os.path.abspath(path)) + TMP_TAG + "*" + TMP_SUFFIX):
        pid = name[len(os.path.abspath(path)) + len(TMP_TAG):].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            found.append(name)
        except OSError:
            pass                    # alive (EPERM) or unknown: not ours to judge
    return found


def warn_leftovers(path):
    import warnings
    for name in leftovers(path):
        warnings.warn("%s is left over from an interrupted pyqcrypt run (its process is gone); "
                      "it is safe to remove" % name, stacklevel=3)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


@functools.lru_cache(maxsize=None)
def _libc_renameat2():
    """libc's renameat2, or None without one.  Looked up in the C library
    this process already runs on: ctypes.util.find_library would spawn
    ldconfig, a few milliseconds per call."""
    import ctypes
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _renameat2_noreplace(src, dst):
    """renameat2(RENAME_NOREPLACE) through libc; False when the kernel, libc
    or file system does not offer it (the caller falls back to link)."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    import ctypes
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def rename_noreplace(src, dst):
    """Move *src* to *dst*, failing (FileExistsError) instead of replacing
    anything that appeared at *dst* meanwhile; any other failure is a
    StorageError."""
    try:
        if _renameat2_noreplace(src, dst):
            return
        os.link(src, dst)           # EEXIST if dst exists; atomic on POSIX file systems
        os.unlink(src)
    except FileExistsError:
        raise
    except OSError as exc:
        raise StorageError("moving %s into place as %s failed: %s"
                           % (src, dst, exc.strerror or exc)) from None


def fsync_dir(path):
    """fsync the directory holding *path* (a rename is durable only then)."""
    dirname = os.path.dirname(os.path.abspath(path))
    try:
        dirfd = os.open(dirname, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError as exc:
        raise StorageError("syncing directory %s failed: %s"
                           % (dirname, exc.strerror or exc)) from None


class NewFile:
    """A new file built under a visible temporary name beside *path*
    (``tmp_name``) and moved to *path* only by ``commit()``, which never
    replaces a file that appeared there meanwhile; ``abort()`` removes it.
    So a failed create or convert leaves nothing behind."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.lexists(self.path):
            raise Error("%s already exists; pyqcrypt never replaces a file: remove it first"
                        % self.path)
        # A name that already is this process's temporary (a conversion
        # stages its destination, then creates it) is built in place: a
        # second suffix would only be left behind by a kill.
        self.staged = os.path.abspath(self.path).endswith(
            "%s%d%s" % (TMP_TAG, os.getpid(), TMP_SUFFIX))
        if not self.staged:
            warn_leftovers(self.path)
        self.tmp = self.path if self.staged else tmp_name(self.path)
        self.storage = Storage(self.tmp, writable=True, create=True, exclusive=True)

    committed = False

    def commit(self):
        """fsync, then move into place without replacing, then fsync the
        directory."""
        self.storage.sync()
        self.storage.close()
        if self.staged:
            self.committed = True           # its owner moves it into place
            return
        try:
            rename_noreplace(self.tmp, self.path)
        except FileExistsError:
            raise Error("%s appeared while pyqcrypt was writing it; it was left alone (the new "
                        "file is removed)" % self.path) from None
        self.committed = True
        fsync_dir(self.path)

    def abort(self):
        """Remove the file, whether or not it was committed (on a path
        that is already failing: errors here do not replace that one)."""
        try:
            self.storage.close()
        except StorageError:
            pass
        for name in (self.tmp, self.path if self.committed else None):
            if name is not None:
                unlink_quietly(name)
