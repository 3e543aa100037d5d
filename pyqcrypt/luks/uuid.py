# SPDX-License-Identifier: LGPL-2.1-or-later
"""Setting the UUID of a LUKS header (cryptsetup luksUUID --uuid).

A new UUID is accepted as libcryptsetup accepts it (libuuid's parser):
exactly 36 characters, hex digits with dashes after the 8th, 12th, 16th
and 20th; upper case is stored lower case.  Anything else is refused
before the header is touched.

LUKS1: the 40-byte UUID field is rewritten in one 592-byte write of the
header (sector 0, so a crash leaves the old or the new UUID), through the
same ``HeaderArea`` every LUKS1 writer uses, then synced.  LUKS2: the UUID
lives in both binary headers; libcryptsetup (``crypt_set_uuid``) writes
both copies with a new sequence number and fresh checksums, as it does for
every LUKS2 metadata change, so pyqcrypt has no LUKS2 header writer of its
own.  Either way the file holding the header is locked exclusively (QEMU's
image lock) while it changes.
"""

import os
import re

from ..errors import Error

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_uuid(text):
    """*text* as the header will hold it (lower case), or None when
    libcryptsetup would refuse it."""
    return text.lower() if _UUID.fullmatch(text) else None


def set_uuid_luks1(path, uuid):
    """Give the LUKS1 header at offset 0 of *path* (a volume or a detached
    header) the UUID *uuid* (already checked by parse_uuid); True when it
    changed."""
    from .area import open_area
    with open_area(path, writable=True) as area:
        if area.header.uuid == uuid:
            return False
        changed = area.header.copy()
        changed.uuid = uuid
        area.write_header(changed)
        area.sync()
    return True


def set_uuid_luks2(path, uuid):
    """Give the LUKS2 header in *path* (a volume or a detached header) the
    UUID *uuid* (already checked by parse_uuid), through libcryptsetup."""
    from .luks2_keyslots import locked_device
    with locked_device(path, writable=True) as (ffi, lib, cd):
        rc = lib.crypt_set_uuid(cd, uuid.encode("ascii"))
        if rc < 0:
            raise Error("libcryptsetup cannot set the UUID of %s: %s" % (path, os.strerror(-rc)))
