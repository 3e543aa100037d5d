# SPDX-License-Identifier: LGPL-2.1-or-later
"""Image locks compatible with QEMU's file-posix driver, for every file
pyqcrypt opens as an image: qcow2 images and their data files, raw LUKS
volumes, detached LUKS headers.

QEMU marks each permission it holds with a shared OFD lock on byte
100 + bit, and each permission it refuses to share with one on byte
200 + bit (bits: 0 consistent read, 1 write, 2 write-unchanged, 3 resize).
Before using a permission it checks that nobody refuses to share it, and
before refusing one it checks that nobody holds it.  pyqcrypt takes the
same locks, so a running QEMU and pyqcrypt keep out of each other's way.
The lock lives on the file descriptor: it is held exactly as long as the
Storage stays open and goes away with ``close()``.

Modes (the bytes qemu-img 7.2 takes, as strace shows them):

* ``read``: consistent read; write and resize not shared (qemu-img
  convert's source, qemu-io -r on qcow2) - 100, 201, 203.
* ``write``: a qcow2 image or data file being written (qemu-io, qemu-img
  amend on qcow2) - 100, 101, 103, 201, 203.
* ``payload``: the payload of a raw LUKS volume being written: consistent
  read and write, neither write nor resize shared - 100, 101, 201, 203.
* ``exclusive``: a LUKS header and keyslots being rewritten (qemu-img amend
  on a luks image): nobody else may read or write - 100, 101, 200, 201.

``force_share`` (qemu-img's -U) takes no lock at all and is only for
read-only access.  Where the file system refuses OFD locks (NFS without
lock support: EOPNOTSUPP, ENOLCK, EINVAL) pyqcrypt says so once per file
with a ``LockingUnsupportedWarning`` and goes on unlocked; any other error
from the lock call is an Error.
"""

import errno
import os
import warnings

from ._native import os_native
from .errors import Error

PERM_BASE, SHARED_BASE = 100, 200
CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE = 0, 1, 2, 3
ALL = (CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE)
NAMES = {CONSISTENT_READ: "consistent read", WRITE: "write", WRITE_UNCHANGED: "write unchanged",
         RESIZE: "resize"}

# mode -> (permissions held, permissions not shared); the order of the
# second tuple is the order conflicts are reported in (write first).
MODES = {
    "read": ((CONSISTENT_READ,), (WRITE, RESIZE)),
    "write": ((CONSISTENT_READ, WRITE, RESIZE), (WRITE, RESIZE)),
    "payload": ((CONSISTENT_READ, WRITE), (WRITE, RESIZE)),
    "exclusive": ((CONSISTENT_READ, WRITE), (WRITE, CONSISTENT_READ)),
}

# What fcntl says on a file system without (OFD) byte locks.
UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK, errno.EINVAL})

_LOCK_SPAN = (PERM_BASE, SHARED_BASE + max(ALL) + 1 - PERM_BASE)


class ImageInUse(Error):
    """Another process (QEMU, or another pyqcrypt) holds a conflicting lock."""


class LockingUnsupportedWarning(UserWarning):
    """The file system refused OFD locks; the file is used without them."""


class _Unsupported(Exception):
    def __init__(self, err):
        super().__init__(err)
        self.errno = err


# The two C calls, as plain functions so that tests can replace them.
def _setlk(fd, start, length, shared):
    """F_OFD_SETLK: 0, or -errno."""
    return os_native()[1].pyq_ofd_lock(fd, start, length, 1 if shared else 0)


def _getlk(fd, start, length):
    """F_OFD_GETLK: 1 when another open file description holds a lock in
    the range, 0 when not, or -errno."""
    return os_native()[1].pyq_ofd_test(fd, start, length)


def _check_rc(rc, storage):
    if rc >= 0:
        return rc
    if -rc in UNSUPPORTED_ERRNOS:
        raise _Unsupported(-rc)
    raise Error("cannot lock %s: %s" % (storage.path, os.strerror(-rc)))


def _release(fd):
    _setlk(fd, _LOCK_SPAN[0], _LOCK_SPAN[1], False)


def lock_image(storage, writable=False, force_share=False, mode=None):
    """Take QEMU's locks on the open Storage *storage* in *mode* (default:
    "write" when *writable*, else "read").  Returns the mode taken, or None
    when no lock was taken (force_share, or a file system without OFD
    locks).  Raises ImageInUse, leaving no lock of ours behind, when
    another process's locks conflict."""
    if mode is None:
        mode = "write" if writable else "read"
    if mode not in MODES:
        raise Error("unknown lock mode %r" % (mode,))
    if force_share:
        if mode != "read":
            raise Error("--force-share is only for read-only access")
        return None
    perm, unshared = MODES[mode]
    fd = storage.fd
    try:
        for b in perm:
            _check_rc(_setlk(fd, PERM_BASE + b, 1, True), storage)
        for b in unshared:
            _check_rc(_setlk(fd, SHARED_BASE + b, 1, True), storage)
        conflict = None
        for b in perm:
            if _check_rc(_getlk(fd, SHARED_BASE + b, 1), storage):
                conflict = 'failed to get the "%s" lock' % NAMES[b]
                break
        if conflict is None:
            for b in unshared:
                if _check_rc(_getlk(fd, PERM_BASE + b, 1), storage):
                    conflict = 'failed to get the shared "%s" lock' % NAMES[b]
                    break
    except _Unsupported as exc:
        _release(fd)
        warnings.warn("%s: the file system does not support OFD locks (%s); going on without "
                      "QEMU's image locks, so a QEMU using this file at the same time would "
                      "not be noticed (-U/--force-share skips locking without this warning)"
                      % (storage.path, os.strerror(exc.errno)), LockingUnsupportedWarning,
                      stacklevel=2)
        return None
    except BaseException:
        _release(fd)
        raise
    if conflict is not None:
        _release(fd)
        hint = " (use -U/--force-share for read-only inspection)" if mode == "read" else ""
        raise ImageInUse("%s is in use: %s; is another process (QEMU?) using the image?%s"
                         % (storage.path, conflict, hint))
    return mode


__all__ = ["ALL", "CONSISTENT_READ", "ImageInUse", "LockingUnsupportedWarning", "MODES", "NAMES",
           "PERM_BASE", "RESIZE", "SHARED_BASE", "WRITE", "WRITE_UNCHANGED", "lock_image"]
