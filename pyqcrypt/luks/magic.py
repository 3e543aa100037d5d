# SPDX-License-Identifier: LGPL-2.1-or-later
"""Is this LUKS, and which version: the first eight bytes of a file, read
without loading the header code (probing runs on every ``info``)."""

import struct

MAGIC = b"LUKS\xba\xbe"


def head_version(head):
    """1 or 2 when the bytes *head* (a file's first 8 or more) start a LUKS
    header, else None."""
    if len(head) < 8 or head[:6] != MAGIC:
        return None
    return struct.unpack(">H", head[6:8])[0]


def luks_version(path):
    """1 or 2 for a LUKS header at the start of *path*, else None; a file
    that cannot be read is an error (storage.read_head), not "no LUKS"."""
    from ..storage import read_head
    return head_version(read_head(path, 8))


def is_luks(path):
    """True when *path* starts with the LUKS magic (any version)."""
    return luks_version(path) is not None
