# SPDX-License-Identifier: LGPL-2.1-or-later
"""The link from a qcow2 image to its backing file: the backing file
name (after the header extensions, in the first cluster) and the
backing-format header extension.  Changing them (``qemu-img rebase``'s
last step, all of ``rebase -u``) rewrites the header cluster in one
write, zero-padded to the cluster's end as QEMU writes it, then syncs:
a crash leaves the old link or the new one, never a mixture, since the
name, its offset and its length all live in that one cluster.

No data is read or written here, so an encrypted image needs no key.
"""

from ..errors import Error, FormatError
from .header import EXT_BACKING_FORMAT, INCOMPAT_CORRUPT, INCOMPAT_DIRTY

# Longest backing file name QEMU accepts (its header's name buffer).
MAX_BACKING_NAME = 1023
# The format names qemu-img 7.2 knows (qemu-img --help), which -F takes.
QEMU_FORMATS = frozenset(
    "blkdebug blklogwrites blkverify bochs cloop compress copy-before-write copy-on-read dmg file "
    "ftp ftps gluster host_cdrom host_device http https iscsi iser luks nbd nfs null-aio null-co "
    "nvme parallels preallocate qcow qcow2 qed quorum raw rbd replication snapshot-access ssh "
    "throttle vdi vhdx vmdk vpc vvfat".split())


def check_link(name, fmt):
    """Refuse a backing file name or format QEMU could not store."""
    if name and len(name.encode("utf-8")) > MAX_BACKING_NAME:
        raise Error("Could not change the backing file to '%s': Invalid argument" % name)
    if fmt is not None and fmt not in QEMU_FORMATS:
        raise Error("Invalid format name: '%s'" % fmt)


def store_link(storage, header, name, fmt):
    """Point the image open on *storage* (its parsed *header*, updated
    here) at backing file *name* of format *fmt* (name "" or None: no
    backing file, and no format), in one synced write of the header
    cluster."""
    check_link(name, fmt)
    old = (header.backing_file, header.extension(EXT_BACKING_FORMAT),
           header.backing_file_offset, header.backing_file_size)
    header.backing_file = name or None
    header.set_extension(EXT_BACKING_FORMAT, fmt.encode("ascii") if name and fmt else None)
    try:
        body = header.pack()
    except FormatError:
        (header.backing_file, ext, header.backing_file_offset, header.backing_file_size) = old
        header.set_extension(EXT_BACKING_FORMAT, ext)
        raise Error("Could not change the backing file to '%s': No space left in the file header"
                    % name) from None
    storage.pwrite(0, body + bytes(header.cluster_size - len(body)))
    storage.sync()


def relink(path, name, fmt):
    """``qemu-img rebase -u``: change only the backing file name and
    format of the qcow2 image at *path* (locked for writing meanwhile)."""
    from ..storage import Storage
    from .locks import lock_image
    from .open import read_header
    check_link(name, fmt)
    with Storage(path, writable=True) as st:
        lock_image(st, True)
        header = read_header(st)
        refuse_unsound(header, path)
        store_link(st, header, name, fmt)


def refuse_unsound(header, path):
    """An image marked corrupt or dirty is not changed (QEMU repairs a
    dirty one first: ``qemu-img check -r all``)."""
    bits = header.incompatible_features & (INCOMPAT_CORRUPT | INCOMPAT_DIRTY)
    if bits:
        raise FormatError("image is marked %s; it is not changed until it is repaired (qemu-img "
                          "check -r all)" % ("corrupt" if bits & INCOMPAT_CORRUPT else "dirty"),
                          field="incompatible_features", path=path)
