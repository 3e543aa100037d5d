# SPDX-License-Identifier: LGPL-2.1-or-later
"""Image locks compatible with QEMU's file-posix driver.

QEMU marks each permission it holds with a shared OFD lock on byte
100 + bit, and each permission it refuses to share with one on byte
200 + bit (bits: 0 consistent read, 1 write, 2 write-unchanged, 3 resize).
Before using a permission it checks that nobody refuses to share it, and
before refusing one it checks that nobody holds it.  pyqcrypt takes the
same locks, so a running QEMU and pyqcrypt keep out of each other's way.
``force_share`` (qemu-img's -U) takes none, for read-only inspection.
"""

import errno
import os

from .._native import crypto
from ..errors import Error

PERM_BASE, SHARED_BASE = 100, 200
CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE = 0, 1, 2, 3
ALL = (CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE)
NAMES = {CONSISTENT_READ: "consistent read", WRITE: "write", WRITE_UNCHANGED: "write unchanged",
         RESIZE: "resize"}


class ImageInUse(Error):
    pass


def lock_image(storage, writable, force_share=False):
    """Take QEMU's locks on *storage* (released when it is closed)."""
    if force_share:
        if writable:
            raise Error("--force-share is only for read-only access")
        return None
    ffi, lib = crypto()
    perm = (CONSISTENT_READ, WRITE, RESIZE) if writable else (CONSISTENT_READ,)
    shared = (CONSISTENT_READ, WRITE_UNCHANGED) if writable else (CONSISTENT_READ, WRITE_UNCHANGED, RESIZE)
    unshared = [b for b in ALL if b not in shared]
    fd = storage.fd
    for b in perm:
        _lock(lib, fd, PERM_BASE + b, storage)
    for b in unshared:
        _lock(lib, fd, SHARED_BASE + b, storage)
    for b in perm:
        if lib.pyq_ofd_test(fd, SHARED_BASE + b, 1) == 1:
            raise ImageInUse('%s is in use: failed to get the "%s" lock; is another process '
                             '(QEMU?) using the image?' % (storage.path, NAMES[b]))
    for b in unshared:
        if lib.pyq_ofd_test(fd, PERM_BASE + b, 1) == 1:
            raise ImageInUse('%s is in use: failed to get the shared "%s" lock; is another process '
                             '(QEMU?) using the image? (use -U/--force-share for read-only '
                             'inspection)' % (storage.path, NAMES[b]))
    return True


def _lock(lib, fd, byte, storage):
    rc = lib.pyq_ofd_lock(fd, byte, 1, 1)
    if rc < 0 and -rc not in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
        raise Error("cannot lock %s: %s" % (storage.path, os.strerror(-rc)))
