# SPDX-License-Identifier: LGPL-2.1-or-later
"""New raw image files, as ``qemu-img create -f raw`` makes them: the
size rounded up to 512-byte sectors, sparse (preallocation=off, with the
first block written as QEMU's file driver writes it), allocated
(falloc) or written with zeros (full).  Unlike qemu-img, an existing file
is never replaced: the file is built under a temporary name and moved
into place only if the name is still free."""

import os

from .errors import Error
from .units import round_up

SECTOR = 512
FIRST_BLOCK = 4096
RAW_PREALLOCATION = ("off", "falloc", "full")


def create_raw(path, size, preallocation="off"):
    """A new raw file of *size* bytes (rounded up to a sector) at *path*."""
    from .storage import NewFile, zero_fill
    if preallocation not in RAW_PREALLOCATION:
        raise Error("%s: Unsupported preallocation mode: %s" % (path, preallocation))
    if not isinstance(size, int) or size < 0:
        raise Error("size must be a non-negative number of bytes")
    length = round_up(size, SECTOR)
    new = NewFile(path)
    try:
        st = new.storage
        st.truncate(length)
        if preallocation == "falloc" and length:
            try:
                os.posix_fallocate(st.fd, 0, length)
            except OSError as exc:
                raise Error("%s: Could not preallocate data for the new file: %s"
                            % (path, exc.strerror)) from None
        elif preallocation == "full":
            zero_fill(st.pwrite, 0, length)
        elif length:
            # QEMU writes the first block so that its alignment probe finds
            # an allocated block; 'disk size' then matches qemu-img's.
            zero_fill(st.pwrite, 0, FIRST_BLOCK if length >= FIRST_BLOCK else SECTOR)
        new.commit()
    except BaseException:
        new.abort()
        raise
