# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS1 header backup and restore, with cryptsetup's semantics.

A backup holds the header and every keyslot area (each rounded to 4 KiB),
exactly the bytes ``cryptsetup luksHeaderBackup`` saves, in a file only
its owner can read.  Restoring checks that the backup is a valid LUKS1 header and,
when the target already has one, that both describe the same payload
layout (payload offset and key size), as cryptsetup does.  The target is
a region: offset 0 of a LUKS device or detached header (``restore_region``)
or the FDE clusters of a qcow2-luks image, whose fixed length must then
hold the whole backup and equal its payload offset, as QEMU lays it out.
"""

import os

from ..errors import Error, FormatError, StorageError
from ..storage import Region, Storage, close_quietly, unlink_quietly
from .area import HeaderArea
from .header import HEADER_SIZE, LuksHeader

MAX_BACKUP_BYTES = 64 << 20


def backup_bytes_length(area):
    """cryptsetup's LUKS1 backup size: the header and every keyslot area
    (each rounded to 4 KiB), not the padding up to the payload."""
    return min(area.region.length, area.header.key_material_end())


def header_backup(area, dest):
    """Write the header area to the new file *dest* (never overwritten)."""
    length = backup_bytes_length(area)
    data = area.region.read(0, length, "LUKS header area")
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o400)
    except FileExistsError:
        raise Error("header backup file %s already exists" % dest) from None
    except OSError as exc:
        raise Error("cannot create %s: %s" % (dest, exc.strerror)) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        fd, closing = -1, fd            # closed once, even if close reports an error
        os.close(closing)
    except BaseException as exc:
        if fd >= 0:
            close_quietly(fd)
        unlink_quietly(dest)            # never a partial backup
        if isinstance(exc, OSError):
            raise StorageError("writing the header backup %s failed: %s"
                               % (dest, exc.strerror or exc)) from None
        raise
    return length


def read_backup(path):
    """(header, bytes) of a header backup file, validated."""
    with Storage(path) as st:
        size = st.size()
        if size > MAX_BACKUP_BYTES:
            raise FormatError("%d bytes is too large for a LUKS1 header backup" % size, path=path)
        data = st.pread(0, size, "header backup")
    header = LuksHeader.parse(data[:HEADER_SIZE], size, path=path)
    return header, data


def header_restore(region, backup_path, current=None, force=False, fixed_region=False):
    """Write a backup over *region*.  *current* is the HeaderArea now on
    the device, or None when the device has no valid LUKS1 header (then
    *force* must confirm the overwrite).  *fixed_region*: the region is a
    qcow2 image's FDE clusters, whose length is the payload offset in
    bytes; without a *current* header to compare with, a backup whose
    payload offset differs from that length is refused.
    Every check runs before the first write."""
    header, data = read_backup(backup_path)
    where = "the LUKS header area of %s" % region.path
    if fixed_region:
        where = "the qcow2 encryption header region of %s (%d bytes at %d)" % (
            region.path, region.length, region.offset)
    if current is not None:
        cur = current.header
        if (cur.payload_offset, cur.key_bytes) != (header.payload_offset, header.key_bytes):
            raise Error("the backup in %s does not match %s: payload offset %d vs %d sectors, key "
                        "size %d vs %d bits; restore refused" % (
                            backup_path, where, header.payload_offset, cur.payload_offset,
                            header.key_bytes * 8, cur.key_bytes * 8))
    elif not force:
        raise Error("%s has no valid LUKS1 header; restoring overwrites whatever is there "
                    "(confirm with --batch-mode)" % region.path)
    if fixed_region and current is None and header.payload_offset * 512 != region.length:
        raise Error("the backup in %s does not match %s: its payload offset is %d bytes, the "
                    "region's length %d; restore refused" % (
                        backup_path, where, header.payload_offset * 512, region.length))
    if len(data) > region.length:
        raise Error("the backup in %s (%d bytes) does not fit %s; restore refused"
                    % (backup_path, len(data), where))
    # Key material first, then the header sector, then sync: a crash leaves
    # either the old header (with new material) or the restored one.
    region.write(HEADER_SIZE, data[HEADER_SIZE:], "keyslot areas")
    region.sync()
    region.write(0, data[:HEADER_SIZE], "LUKS header")
    region.sync()
    return HeaderArea(region, header)


def restore_region(storage, backup_path):
    """The region a backup will be written to on a LUKS device or header."""
    header, data = read_backup(backup_path)
    length = header.payload_offset * 512 if header.payload_offset else len(data)
    if length > storage.size() and not storage.is_block_device:
        if header.payload_offset:
            raise Error("%s is smaller than the backup's payload offset (sector %d)"
                        % (storage.path, header.payload_offset))
    return Region(storage, 0, max(length, len(data)))
