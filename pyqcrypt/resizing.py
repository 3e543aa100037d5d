# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt.resize`` (this module: resizing): change an image's virtual size, as ``qemu-img
resize`` does, on qcow2 (plain or encrypted, with snapshots, over a
backing file), raw files and LUKS1/LUKS2 volumes.

qcow2 is ``qcow2/resize.py``'s job.  A raw file is truncated; a LUKS
volume's file is truncated to its payload offset plus the new size (LUKS1
has no size field, and a LUKS2 segment of size "dynamic" runs to the end
of the device; a LUKS2 segment of fixed size is refused).  No key is
needed for any of them: no data is decrypted, and growing a qcow2 image
over a backing file zeroes with zero clusters (a partial last cluster of
an encrypted image needs its key, and is refused without it).  A block
device is never resized.  Shrinking happens only when asked for
(*shrink*), as qemu-img's ``--shrink``.
"""

from typing import TYPE_CHECKING, Optional, Sequence, Union

from .errors import Error
from .units import SECTOR

if TYPE_CHECKING:
    from .image import Secret, StrPath


def resize(path: "StrPath", size: int, shrink: bool = False, format: Optional[str] = None,
           passphrase: "Optional[Secret]" = None, header: "Optional[StrPath]" = None,
           backing_passphrase: "Union[Secret, Sequence[Optional[Secret]], None]" = None) -> None:
    """Make the image at *path* *size* bytes (see the module docstring).
    *format* is "qcow2", "luks", "luks2" or "raw" (None: probed); a LUKS
    volume's detached *header* is read, never changed; the secrets of a
    qcow2 image's encrypted backing layers are *backing_passphrase*'s, as
    for ``pyqcrypt.open``."""
    from .probe import detect
    path = str(path)
    if size < 0:
        raise Error("New image size must be positive")
    fmt = format or ("luks" if header is not None else detect(path))
    if fmt == "luks" and detect(path if header is None else str(header)) == "luks2":
        fmt = "luks2"
    if fmt == "qcow2":
        _resize_qcow2(path, size, shrink, passphrase, backing_passphrase)
    elif fmt in ("raw", "luks", "luks2"):
        _resize_file(path, size, shrink, fmt, header)
    else:
        raise Error("unknown image format %r (qcow2, luks, luks2, raw)" % (fmt,))


def _refuse_shrink(old, size, shrink):
    if size < old and not shrink:
        raise Error("Use the --shrink option to perform a shrink operation.")


def _resize_qcow2(path, size, shrink, passphrase, backing_passphrase):
    from .image import _open_backing as open_backing
    from .qcow2.open import open_qcow2, read_header
    from .qcow2.resize import resize_qcow2
    from .storage import Storage
    if size % SECTOR:
        raise Error("a qcow2 image's size must be a multiple of %d bytes, not %d" % (SECTOR, size))
    with Storage(path) as st:
        head = read_header(st)
    if head.has_bitmaps:             # opening for writing would already invalidate them
        raise Error("%s has persistent bitmaps, which pyqcrypt cannot resize; use qemu-img resize"
                    % path)
    _refuse_shrink(head.size, size, shrink)
    img = open_qcow2(path, passphrase, writable=True, keyless=True)
    with img:
        if head.backing_file:
            # the grown range must read as zeros, not as the backing file
            if passphrase is None and head.crypt_method and size > head.size \
                    and head.size % img.cluster_size:
                raise Error("%s: growing it over its backing file zeroes part of a cluster, which "
                            "needs its secret" % path)
            img.backing = open_backing(img, path, backing_passphrase, False, 0, set())
        resize_qcow2(img, size)


def _payload_offset(path, fmt, header):
    """Where the payload starts in the volume file, and whether its size
    follows the file (LUKS2 "dynamic")."""
    from .storage import Storage
    if fmt == "raw":
        return 0
    with Storage(path if header is None else header) as st:
        if fmt == "luks":
            from .luks.header import HEADER_SIZE, LuksHeader
            hdr = LuksHeader.parse(st.pread(0, min(HEADER_SIZE, st.size()), "LUKS header"),
                                   path=st.path)
            return hdr.payload_offset * SECTOR
        from .luks.luks2 import read_header_metadata
        seg = read_header_metadata(st).data_segment()
    if seg.size is not None:
        raise Error("%s: its LUKS2 data segment has a fixed size, which pyqcrypt does not change; "
                    "use cryptsetup resize" % path)
    return seg.offset


def _resize_file(path, size, shrink, fmt, header):
    from .locks import lock_image
    from .storage import Storage
    offset = _payload_offset(path, fmt, header)
    with Storage(path, writable=True) as st:
        lock_image(st, mode="write")
        if st.is_block_device:
            raise Error("%s is a block device: its size is the device's" % path)
        _refuse_shrink(max(st.size() - offset, 0), size, shrink)
        st.truncate(offset + size)
        st.sync()
