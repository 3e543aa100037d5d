# SPDX-License-Identifier: LGPL-2.1-or-later
"""Which bytes a path really names: a regular file is its own inode; a
block device is followed down through partitions, loop devices and
device-mapper targets to the files and disks that hold its bytes, with the
byte range it covers of each.  ``overlapping(a, b)`` then tells whether a
write to one could change the other.

Conversions use it to keep the source (its header, data file and backing
files) and the target apart however each is reached: a hard or symbolic
link, ``/proc/self/fd``, a loop device over the very file, a partition of
such a device, a device-mapper volume built on it.

What cannot be followed is never taken as "nothing there": a loop device
whose backing file cannot be named, or a sysfs entry that cannot be read
for a reason other than its absence, is an Error naming the device.
Device-mapper tables are not in sysfs, so a dm device is taken to cover
the whole of each device below it (more conservative, never less).
"""

import errno
import fcntl
import os
import stat
import struct

from .errors import Error

INF = 1 << 64
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32sQQ")      # struct loop_info64, 232 bytes
_MAX_DEPTH = 16
_SYS = "/sys/dev/block"


def _read_sys(path):
    """The stripped text of a sysfs attribute, or None when it does not
    exist; any other error is an Error (an unknown is not an absence)."""
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Error("cannot read %s: %s (needed to tell which storage a block device uses)"
                    % (path, exc.strerror or exc)) from None


def _loop_backing(dev_path, sysdir):
    """(st_dev, st_ino, offset, sizelimit) of the file behind a loop device,
    or None when the device is not a loop device or is not bound."""
    if not os.path.isdir(os.path.join(sysdir, "loop")) and \
            not os.path.basename(os.path.realpath(sysdir)).startswith("loop"):
        return None
    try:
        fd = os.open(dev_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise Error("cannot open %s to ask what it is backed by: %s"
                    % (dev_path, exc.strerror or exc)) from None
    try:
        buf = bytearray(_LOOP_INFO64.size)
        try:
            fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf, True)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return None                     # a loop device with nothing bound
            if exc.errno in (errno.ENOTTY, errno.EINVAL) and not os.path.isdir(
                    os.path.join(sysdir, "loop")):
                return None                     # not a loop device after all
            raise Error("cannot ask %s what it is backed by: %s"
                        % (dev_path, exc.strerror or exc)) from None
    finally:
        os.close(fd)
    fields = _LOOP_INFO64.unpack(bytes(buf))
    device, inode, offset, sizelimit = fields[0], fields[1], fields[3], fields[4]
    return device, inode, offset, sizelimit


def _devnode(major, minor):
    """A path that opens block device major:minor (its /dev name if the
    kernel says it, else a node under /dev/block)."""
    name = _read_sys(os.path.join(_SYS, "%d:%d" % (major, minor), "uevent")) or ""
    for line in name.splitlines():
        if line.startswith("DEVNAME="):
            path = "/dev/" + line[8:]
            try:
                st = os.stat(path)
                if stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(major, minor):
                    return path
            except OSError:
                pass
    return "/dev/block/%d:%d" % (major, minor)


def _parse_dev(text, where):
    try:
        major, minor = (int(x) for x in text.split(":"))
        return major, minor
    except (ValueError, AttributeError):
        raise Error("cannot read the device number in %s" % where) from None


def _block_extents(major, minor, start, end, depth, dev_path=None):
    """[(key, start, end)] of the bottom-most storage under block device
    major:minor, for its byte range [start, end)."""
    if depth > _MAX_DEPTH:
        raise Error("block device %d:%d is stacked more than %d levels deep" % (major, minor,
                                                                               _MAX_DEPTH))
    sysdir = os.path.join(_SYS, "%d:%d" % (major, minor))
    here = [(("blk", major, minor), start, end)]
    if not os.path.isdir(sysdir):
        return here                     # no sysfs here: the device is all we know
    loop = _loop_backing(dev_path or _devnode(major, minor), sysdir)
    if loop is not None:
        device, inode, offset, sizelimit = loop
        stop = offset + (sizelimit if sizelimit else INF)
        return here + [(("file", device, inode), min(offset + start, stop),
                        min(offset + end, stop) if end < INF else stop)]
    if _read_sys(os.path.join(sysdir, "partition")) is not None:
        first = int(_read_sys(os.path.join(sysdir, "start")) or 0) * 512
        size = int(_read_sys(os.path.join(sysdir, "size")) or 0) * 512
        parent = os.path.dirname(os.path.realpath(sysdir))
        pmaj, pmin = _parse_dev(_read_sys(os.path.join(parent, "dev")), parent)
        stop = first + size
        return here + _block_extents(pmaj, pmin, first + start,
                                     min(first + end, stop) if end < INF else stop, depth + 1)
    slaves_dir = os.path.join(sysdir, "slaves")
    try:
        slaves = sorted(os.listdir(slaves_dir))
    except FileNotFoundError:
        slaves = []
    except OSError as exc:
        raise Error("cannot list %s: %s" % (slaves_dir, exc.strerror or exc)) from None
    out = list(here)
    for name in slaves:
        smaj, smin = _parse_dev(_read_sys(os.path.join(slaves_dir, name, "dev")), name)
        out += _block_extents(smaj, smin, 0, INF, depth + 1)    # dm tables: the whole device
    return out


def extents(path):
    """[(key, start, end)]: every storage object *path* reaches, with the
    byte range it covers, from the path itself down to files and disks.
    A path that does not exist has none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise Error("cannot stat %s: %s" % (path, exc.strerror or exc)) from None
    if stat.S_ISBLK(st.st_mode):
        return _block_extents(os.major(st.st_rdev), os.minor(st.st_rdev), 0, INF, 0, path)
    return [(("file", st.st_dev, st.st_ino), 0, INF)]


def overlapping(a, b):
    """True when a write through path *a* could change bytes read through
    path *b* (or the other way round)."""
    ea, eb = extents(a), extents(b)
    for ka, sa, xa in ea:
        for kb, sb, xb in eb:
            if ka == kb and sa < xb and sb < xa:
                return True
    return False


def mounted_over(path, mountinfo="/proc/self/mountinfo"):
    """The mount points of file systems mounted read-write on block devices
    that share bytes with *path* (the device itself, a partition or loop
    device over it, or the device a loop-mounted file lives on... as far as
    ``extents`` follows).  An unreadable mount table gives none."""
    try:
        with open(mountinfo) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    mine = extents(path)
    if not mine:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or ":" not in fields[2]:
            continue
        opts = fields[5].split(",")
        if "rw" not in opts:
            continue
        try:
            major, minor = (int(x) for x in fields[2].split(":"))
        except ValueError:
            continue
        if major == 0:
            continue                            # tmpfs, proc and the like: no block device
        try:
            theirs = _block_extents(major, minor, 0, INF, 0)
        except Error:
            continue
        if any(ka == kb and sa < xb and sb < xa
               for ka, sa, xa in mine for kb, sb, xb in theirs):
            found.append(fields[4].replace("\\040", " "))
    return found
