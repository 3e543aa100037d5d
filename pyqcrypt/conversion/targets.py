# SPDX-License-Identifier: LGPL-2.1-or-later
"""Where a conversion may write: a destination is created new and never
replaces anything, -n writes only into an existing raw or LUKS target, and
no target may share storage with any file the source reads (links, loop
devices, partitions, device-mapper volumes, detached headers, data files,
backing files).
"""

import os
import stat

from .. import image as images
from ..errors import Error
from ..overlap import overlapping
from ..qcow2.open import data_file_path, is_qcow2, read_header
from ..storage import Storage


def same_file(a, b):
    """True when paths *a* and *b* name the same file or block device."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if stat.S_ISBLK(sa.st_mode) and stat.S_ISBLK(sb.st_mode):
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def too_small(path, have, need, what):
    return Error("%s is too small: it holds %d bytes, %s needs %d, %d bytes (%s) more"
                 % (path, have, what, need, need - have, _human(need - have)))


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def check_target(req):
    """pyqcrypt's overwrite rule for a ConvertRequest: a destination is
    always created new, never replaced; -n (*existing_target*) writes into
    an existing raw or LUKS target instead, which must not be the source
    itself."""
    src, dst, src_header, dst_header = req.src, req.dst, req.src_header, req.dst_header
    dst_format, existing_target, keep_ciphertext = (req.dst_format, req.existing_target,
                                                    req.keep_ciphertext)
    if keep_ciphertext and dst_format == "luks" and dst_header is not None \
            and os.path.abspath(dst) != os.path.abspath(dst_header):
        raise Error("--keep-ciphertext with a detached header writes only the header (%s): its "
                    "payload is the qcow2 image's data file, so give no other destination (%s)"
                    % (dst_header, dst))
    if not existing_target:
        if os.path.lexists(dst):
            what = "is a block device" if _is_block(dst) else "already exists"
            raise Error("%s %s: pyqcrypt never replaces an existing file or device; remove it, "
                        "or add -n to write into it (with -O raw or -O luks)" % (dst, what))
        return
    if dst_format == "luks2":
        raise Error("-n -O luks2 is not supported: format the target first (pyqcrypt format "
                    "--type luks2 ...), then write through its header with -n --target-image-opts "
                    "driver=luks,file.filename=...,key-secret=ID")
    if dst_format not in ("raw", "luks"):
        raise Error("-n writes into an existing raw or LUKS target; a qcow2 destination is always "
                    "created new (drop -n)")
    if not os.path.exists(dst):
        raise Error("%s does not exist; -n writes only into an existing file or device (drop -n "
                    "to create it)" % dst)
    check_apart([dst, dst_header], source_files(src, src_header))


def source_files(src, src_header=None):
    """Every file or device a conversion reads from *src*: the image, its
    detached header, and down a qcow2 backing chain each layer's data file
    and backing file (as QEMU resolves their names)."""
    found = [p for p in (src, src_header) if p is not None]
    path = src
    for _ in range(images.MAX_CHAIN_DEPTH):
        if not is_qcow2(path):
            break
        try:
            with Storage(path) as st:
                h = read_header(st)
            if h.has_data_file:
                found.append(data_file_path(path, h))
            if not h.backing_file:
                break
            path = images.backing_path(path, h.backing_file)
        except Error:
            break                   # opening the source will say what is wrong
        found.append(path)
    return found


def check_apart(targets, sources):
    """Refuse when a write to one of *targets* could change one of *sources*
    however each is reached: the same file, a link to it, a loop device over
    it (or a partition or device-mapper volume on such a device)."""
    for t in targets:
        if t is None:
            continue
        for other in sources:
            if other is None:
                continue
            if same_file(t, other):
                raise Error("%s is the source %s itself; convert into another file or device"
                            % (t, other))
            if overlapping(t, other):
                raise Error("%s shares storage with the source's %s (a loop device, partition "
                            "or device-mapper volume over it, or the other way round); convert "
                            "into another file or device" % (t, other))


def _is_block(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def beside_image(image, name):
    """A file name stored in *image* as qemu resolves it: relative to the
    image's directory."""
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(os.path.abspath(image)),
                                                         name)

