# SPDX-License-Identifier: LGPL-2.1-or-later
"""The hole map of a file: which ranges may hold data, asked of the file
system with SEEK_DATA and SEEK_HOLE.  Only what the file system positively
reports as a hole counts as one; "cannot tell" (a block device, a file
system without hole support, an error) always counts as data, so a copy
that skips holes never skips data.

These are functions of a descriptor; ``Storage.data_runs`` and
``Storage.has_data`` call them with its own.
"""

import errno
import os


def data_runs(fd, is_block_device, start, length):
    """The (begin, end) runs, relative to *start*, of [start,
    start+length) that may hold data.  SEEK_DATA failing with ENXIO means
    "nothing but hole from here on"; any other failure (EINVAL on a block
    device or a file system without hole support, EIO, ...) means
    "unknown", so the rest counts as data."""
    if is_block_device:
        if length > 0:
            yield 0, length
        return
    pos = 0
    while pos < length:
        try:
            data = os.lseek(fd, start + pos, os.SEEK_DATA) - start
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            yield pos, length
            return
        if data >= length:
            return
        data = max(data, pos)
        try:
            hole = min(os.lseek(fd, start + data, os.SEEK_HOLE) - start, length)
        except OSError:
            hole = length
        if hole <= data:            # a file system that contradicts itself: all data
            hole = length
        yield data, hole
        pos = hole


def has_data(fd, is_block_device, start, length):
    """False only when the file system positively reports all of [start,
    start+length) as a hole.  One SEEK_DATA: unlike data_runs, this never
    asks where the data ends (SEEK_HOLE), which on tmpfs walks the file's
    pages up to the next hole, the whole rest of a fully written file."""
    if length <= 0:
        return False
    if is_block_device:
        return True
    try:
        data = os.lseek(fd, start, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno != errno.ENXIO     # ENXIO: only hole from here on
    return data < start + length
