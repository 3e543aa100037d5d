# SPDX-License-Identifier: LGPL-2.1-or-later
"""Block device names that may change between boots, and the stable
links udev makes for them.

A kernel name such as /dev/loop0, /dev/sdb1 or /dev/nvme0n1p2 is handed
out in the order devices appear, so after a reboot (or a hot-plug) it may
name another disk.  An image that records such a name (a qcow2 data file
or backing file) or a detached LUKS header kept there may then be opened
against the wrong disk.  This module tells such names apart
(``is_unstable``) and finds the /dev/disk/by-* link udev keeps for the
same device (``stable_alias``); ``unstable_warning`` words the warning
the command line prints.  Nothing here rewrites a path: qemu-img stores
what it is given, and so does pyqcrypt.
"""

import errno
import os
import stat
from typing import Optional

DISK_ROOT = "/dev/disk"
# The link directories, best first: by-id names the hardware (serial
# number), by-partuuid and by-uuid the partition table or the filesystem,
# by-path only the port the disk sits on.
PREFERRED = ("by-id", "by-partuuid", "by-uuid", "by-path")
_STABLE_DIRS = ("/dev/disk/", "/dev/mapper/")
_MISSING = (errno.ENOENT, errno.ENOTDIR)


class Unknown(Exception):
    """The link directories could not be searched (an unexpected error):
    whether a stable name exists is unknown."""


def _block_rdev(path) -> Optional[int]:
    """The device number of the block device *path* leads to, or None when
    it leads to no block device (or to nothing)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in _MISSING:
            return None
        raise
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def is_unstable(path) -> bool:
    """Whether *path* is a block device named by its kernel name: a device
    node itself (not a symlink such as /dev/disk/by-id/..., /dev/VG/LV or
    /dev/md/NAME, which udev keeps pointing at the same device) and not
    under /dev/mapper or /dev/disk."""
    path = os.path.abspath(os.fspath(path))
    if path.startswith(_STABLE_DIRS):
        return False
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return False
    except OSError as exc:
        if exc.errno in _MISSING:
            return False
        raise
    return _block_rdev(path) is not None


def stable_alias(path, disk_root=DISK_ROOT) -> Optional[str]:
    """The /dev/disk/by-* link (under *disk_root*) leading to the same
    block device as *path*, preferring by-id, then by-partuuid, by-uuid and
    by-path (alphabetical within one directory); None when there is none.
    Raises Unknown when a directory could not be read."""
    rdev = _block_rdev(path)
    if rdev is None:
        return None
    for kind in PREFERRED:
        folder = os.path.join(disk_root, kind)
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            if exc.errno in _MISSING:
                continue
            raise Unknown("cannot list %s: %s" % (folder, exc.strerror or exc)) from None
        for name in names:
            link = os.path.join(folder, name)
            try:
                if _block_rdev(link) == rdev:
                    return link
            except OSError as exc:
                raise Unknown("cannot read %s: %s" % (link, exc.strerror or exc)) from None
    return None


def unstable_warning(path, role, disk_root=DISK_ROOT) -> Optional[str]:
    """The one-line warning for *path* used as *role* (e.g. "data file"),
    or None when *path* is no unstable device name."""
    try:
        if not is_unstable(path):
            return None
    except OSError:
        return None             # cannot even stat it: the command itself will say why
    text = ("%s %s is a kernel device name, which may point at another disk after a reboot"
            % (role, path))
    try:
        alias = stable_alias(path, disk_root)
    except Unknown as exc:
        return text + "; whether a stable name exists is unknown (%s)" % exc
    if alias is None:
        return text + "; no %s/by-id, by-partuuid, by-uuid or by-path link to it exists" % disk_root
    return text + "; the stable name %s is the same device" % alias


def warn_unstable(path, role, disk_root=DISK_ROOT, out=None):
    """Print unstable_warning's line (as ``pyqcrypt: warning: ...``) on
    *out* (standard error) when there is one."""
    import sys
    if not path:
        return
    text = unstable_warning(path, role, disk_root)
    if text:
        print("pyqcrypt: warning: %s" % text, file=out or sys.stderr)
