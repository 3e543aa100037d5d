# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 volumes, read through libcryptsetup (pyqcrypt writes only LUKS1).

``luks2_device`` opens and loads a LUKS2 header (attached, or detached
with *header*) and yields libcryptsetup's handle; ``luks_version`` tells
LUKS1 from LUKS2 by the header's version field.
"""

import contextlib
import struct

from .._native import cryptsetup
from ..errors import Error, FormatError
from .header import MAGIC


def luks_version(path):
    """1 or 2 for a LUKS header at the start of *path*, else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if len(head) < 8 or head[:6] != MAGIC:
        return None
    return struct.unpack(">H", head[6:8])[0]


@contextlib.contextmanager
def luks2_device(path, header=None, quiet=True):
    """Yield (ffi, lib, crypt_device) for a loaded LUKS2 volume.  *quiet*
    keeps libcryptsetup's own messages off stderr."""
    ffi, lib = cryptsetup()
    cd = ffi.new("struct crypt_device **")
    rc = (lib.crypt_init_data_device(cd, header.encode(), path.encode()) if header
          else lib.crypt_init(cd, path.encode()))
    if rc < 0:
        raise Error("libcryptsetup cannot open %s (error %d)" % (header or path, rc))
    if quiet:
        lib.pyq_cs_quiet(cd[0])
    try:
        if lib.crypt_load(cd[0], b"LUKS2", ffi.NULL) < 0:
            raise FormatError("libcryptsetup cannot load the LUKS2 header", path=header or path)
        yield ffi, lib, cd[0]
    finally:
        lib.crypt_free(cd[0])


def dump(path, header=None):
    """Print cryptsetup's LUKS2 dump (libcryptsetup writes it to stdout)."""
    import sys
    with luks2_device(path, header, quiet=False) as (ffi, lib, cd):
        sys.stdout.flush()
        if lib.crypt_dump(cd) < 0:
            raise Error("libcryptsetup could not dump %s" % (header or path))
