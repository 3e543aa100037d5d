# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 5: one block-device interface over the image formats.

``open_image()`` probes the format (qcow2 magic, LUKS magic, else raw) and
returns the format's image object (RawImage, LuksPayload, Qcow2Image):
``read(offset, length)``, ``write(offset, data)``, ``size``, ``flush()``
and ``close()``, usable as a context manager (the ``BlockDevice``
protocol, whose lifecycle the three classes share: pyqcrypt.lifecycle),
plus its internals, for pyqcrypt's own code.  ``open()``, the API's
``pyqcrypt.open``, wraps that object in a ``pyqcrypt.Image``
(pyqcrypt.public_image), which shows users the interface alone.
``create()`` makes a new image.
"""

import os
import stat
import warnings
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .errors import Error
from .lifecycle import BlockDevice, Buffer, ImageLifecycle
from .locks import lock_image
from .public_image import Image
from .storage import Storage, zero_fill

if TYPE_CHECKING:
    from .crypto.keybuf import SecretBuffer

    StrPath = Union[str, "os.PathLike[str]"]
    # A passphrase or key: bytes (never str), or a SecretBuffer the caller keeps.
    Secret = Union[bytes, bytearray, memoryview, SecretBuffer]


class RawImage(ImageLifecycle):
    """A plain file or block device."""

    size: int
    format_name = "raw"         # pyqcrypt.Image.format

    def __init__(self, path: "StrPath", writable: bool = False, force_share: bool = False) -> None:
        self._st = Storage(path, writable=writable)
        try:
            # QEMU's locks, as qemu-io -f raw takes them (see pyqcrypt.locks).
            lock_image(self._st, mode="payload" if writable else "read", force_share=force_share)
            self.size = self._st.size()
        except BaseException:
            self._st.close()
            raise
        self.path = self._st.path
        self.writable = writable
        self._closed = False

    def read(self, offset: int, length: int) -> bytes:
        self._check_open()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Error("read outside the %d-byte image" % self.size)
        return self._st.pread(offset, length)

    def readinto(self, offset: int, buf: Any, jobs: Any = None) -> Any:
        """Fill *buf* from *offset* (*jobs*, the pipeline's list of
        decryption jobs, stays empty: nothing is encrypted)."""
        self._check_open()
        n = memoryview(buf).nbytes
        if offset < 0 or offset + n > self.size:
            raise Error("read outside the %d-byte image" % self.size)
        self._st.preadinto(buf, offset)
        return buf

    def is_allocated(self, offset: int, length: int) -> bool:
        """False only when the file system reports the whole range as a
        hole (see Storage.has_data: "cannot tell" counts as data)."""
        self._check_open()
        return self._st.has_data(offset, length)

    def data_runs(self, start: int, length: int) -> Any:
        """The (begin, end) runs, relative to *start*, that the file
        system reports as data (see Storage.data_runs)."""
        self._check_open()
        return self._st.data_runs(start, length)

    def write(self, offset: int, data: Buffer) -> None:
        self._check_open()
        n = memoryview(data).nbytes
        if offset < 0 or offset + n > self.size:
            raise Error("write outside the %d-byte image" % self.size)
        self._st.pwrite(offset, data)

    def plan_write(self, offset, data):
        """The conversion pipeline's write: one Piece, written as it is."""
        from .pipeline import Piece
        self._check_open()
        if not self.writable:
            return None
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise Error("write outside the %d-byte image" % self.size)
        return [Piece(self._st, offset, view)]

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """Write zeros over the range."""
        zero_fill(self.write, offset, length)

    def discard(self, offset: int, length: int) -> None:
        """Advice only: a raw image keeps its bytes."""
        self._check_open()

    def flush(self) -> None:
        self._check_open()
        if self.writable:
            self._st.sync()

    def _release(self) -> None:
        """Close the file (no sync: call flush() for that)."""
        self._st.close()


def open_luks_area(path, writable=False, header=None, force_share=False):
    """The LUKS1 HeaderArea of an image: a LUKS device, its detached
    *header*, or the FDE region of a qcow2-luks image; locked as QEMU
    locks it (see pyqcrypt.locks) unless *force_share*."""
    from .luks.area import open_area
    from .qcow2 import is_qcow2, qcow2_luks_area
    if header is None and is_qcow2(path):
        return qcow2_luks_area(path, writable=writable, force_share=force_share)
    return open_area(path, writable=writable, header=header, force_share=force_share)


def probe(path):
    """The format name of the image at *path*: "qcow2", "luks" (LUKS1 or
    LUKS2) or "raw"; see pyqcrypt.probe."""
    from .probe import detect
    fmt = detect(path)
    return "luks" if fmt == "luks2" else fmt


MAX_CHAIN_DEPTH = 64


def open(path: "StrPath", passphrase: "Optional[Secret]" = None, writable: bool = False,
         header: "Optional[StrPath]" = None, format: Optional[str] = None,
         key_slot: Optional[int] = None, force_share: bool = False,
         backing_passphrase: "Union[Secret, Sequence[Optional[Secret]], None]" = None) -> Image:
    """Open an image as a block device: read and write its guest data.

    The format is taken from the file's first bytes unless *format* names
    it.  A qcow2 image with a backing file is opened with its whole chain:
    unallocated clusters read from the layer below (a shorter backing reads
    as zeros past its end); writes go to *path* only.  The image is locked
    as QEMU locks it, so a running QEMU and pyqcrypt never write it at once.

    Parameters:
        path: a qcow2 image (plain, LUKS or legacy AES), a LUKS1 or LUKS2
            volume, or a raw file or block device.
        passphrase: the secret of an encrypted image, as bytes (QEMU's
            secrets are UTF-8: ``"text".encode()``) or a SecretBuffer the
            caller keeps; None for an unencrypted one.
        writable: open for writing too (default read-only).
        header: the detached LUKS header file of a LUKS volume.
        format: "qcow2", "luks" (LUKS1 or LUKS2), "luks2" or "raw" to skip
            the probe; "raw" reads any file as plain bytes.
        key_slot: try only this keyslot with *passphrase* (default each).
        force_share: read without QEMU's locks (qemu-img -U).  Only for
            reading: an image a QEMU writes may change underneath.
        backing_passphrase: the secret of the encrypted layers below: one
            for every lower layer that needs one, or a list with one entry
            per lower layer from the top down (None where a layer is not
            encrypted).

    Returns a ``pyqcrypt.Image``: ``size``, ``writable``, ``closed``,
    ``format``, ``path``, ``read(offset, length)``, ``readinto(offset,
    buf)``, ``write(offset, data)``, ``write_zeroes``, ``discard``,
    ``flush()``, ``close()``, and use as a context manager, which flushes
    and closes it.

    Raises:
        WrongPassphrase: no keyslot opens with *passphrase*.
        FormatError: a header is damaged or inconsistent.
        UnsupportedCipher: the image uses a cipher pyqcrypt cannot run.
        StorageError: the file cannot be opened, read or locked (another
            process writes it).
        Error: anything else pyqcrypt refuses, said in one line (a missing
            passphrase, a backing chain deeper than 64, ...).

    Example::

        with pyqcrypt.open("disk.qcow2", b"secret") as disk:
            boot_sector = disk.read(0, 512)
    """
    return Image(_open_layer(path, passphrase, writable, header, format, key_slot, force_share,
                             backing_passphrase, 0, set()))


def open_image(path: "StrPath", passphrase: "Optional[Secret]" = None, writable: bool = False,
               header: "Optional[StrPath]" = None, format: Optional[str] = None,
               key_slot: Optional[int] = None, force_share: bool = False,
               backing_passphrase: "Union[Secret, Sequence[Optional[Secret]], None]" = None
               ) -> BlockDevice:
    """As open(), for pyqcrypt's own code: the format's image object
    itself (Qcow2Image, LuksPayload or RawImage, internals included),
    without the pyqcrypt.Image around it."""
    return _open_layer(path, passphrase, writable, header, format, key_slot, force_share,
                       backing_passphrase, 0, set())


def _split_passphrases(backing_passphrase):
    """(this layer's passphrase, the rest) from the API's backing_passphrase."""
    if isinstance(backing_passphrase, (list, tuple)):
        return (backing_passphrase[0] if backing_passphrase else None,
                list(backing_passphrase[1:]))
    return backing_passphrase, backing_passphrase


def backing_path(path, name):
    """Where a backing file name points: relative names from the overlay's
    directory, as QEMU resolves them."""
    if name.startswith("json:") or ":" in name.split("/", 1)[0]:
        raise Error("%s: its backing file %r names a protocol or JSON description, which "
                    "pyqcrypt cannot open" % (path, name))
    from .qcow2.open import backing_path as joined
    return joined(path, name)


def _open_backing(img, path, backing_passphrase, force_share, depth, seen):
    from .qcow2 import qcow2_encrypted
    name = img.header.backing_file
    bpath = backing_path(path, name)
    if depth + 1 > MAX_CHAIN_DEPTH:
        raise Error("%s: the backing chain is deeper than %d images" % (path, MAX_CHAIN_DEPTH))
    try:
        st = os.stat(bpath)
    except OSError as exc:
        raise Error("%s: cannot open its backing file %s: %s"
                    % (path, bpath, exc.strerror or exc)) from None
    if (st.st_dev, st.st_ino) in seen:
        raise Error("%s: its backing file %s is already in the chain (a loop)" % (path, bpath))
    fmt = img.header.backing_format or probe(bpath)
    if fmt == "raw" and not stat.S_ISBLK(st.st_mode):
        declared = img.header.backing_format is not None
        inside = os.path.realpath(bpath).startswith(
            os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), ""))
        if not (declared and inside):
            # qemu-img reads it all the same; the user should know what it is
            why = (" and lies outside the image's directory" if not inside
                   else " (no backing format is recorded)")
            warnings.warn("%s: its backing file %s is not an image pyqcrypt can identify%s; it is "
                          "read as raw bytes, as qemu-img reads it" % (path, bpath, why),
                          stacklevel=3)
    if fmt not in ("qcow2", "luks", "raw"):
        raise Error("%s: its backing file %s has format %r, which pyqcrypt cannot read "
                    "(qcow2, luks and raw are read)" % (path, bpath, fmt))
    this, rest = _split_passphrases(backing_passphrase)
    encrypted = fmt == "luks" or fmt == "qcow2" and qcow2_encrypted(bpath)
    if encrypted and this is None:
        option = "backing." * (depth + 1) + ("encrypt.key-secret" if fmt == "qcow2" else "key-secret")
        raise Error("%s: its backing file %s is encrypted; give its secret with --image-opts "
                    "%s=ID (API: backing_passphrase)" % (path, bpath, option))
    return _open_layer(bpath, this if encrypted else None, False, None, fmt, None, force_share,
                       rest, depth + 1, seen)


def _open_layer(path, passphrase, writable, header, format, key_slot, force_share,
                backing_passphrase, depth, seen):
    from .luks.luks2 import open_luks2
    from .luks.device import open_volume
    from .probe import detect
    from .qcow2 import open_qcow2
    probed = format is None and header is None
    fmt = format or ("luks" if header is not None else detect(path))   # LUKS2 included
    try:
        st = os.stat(path)
        seen.add((st.st_dev, st.st_ino))
    except OSError:
        pass                        # the open below says why
    if fmt == "qcow2":
        img = open_qcow2(path, passphrase, writable=writable, key_slot=key_slot,
                         force_share=force_share)
        try:
            if img.header.backing_file:
                img.backing = _open_backing(img, path, backing_passphrase, force_share, depth,
                                            seen)
        except BaseException:
            img.close()
            raise
        return img
    if fmt in ("luks", "luks2"):
        if passphrase is None:
            raise Error("%s is encrypted with LUKS; a passphrase is needed" % path)
        if fmt == "luks" and not probed and detect(path if header is None else header) == "luks2":
            fmt = "luks2"           # named "luks", or a detached header: its bytes say which
        if fmt == "luks2":
            return open_luks2(path, passphrase, header=header, writable=writable,
                              key_slot=key_slot, force_share=force_share)
        return open_volume(path, passphrase, header=header, writable=writable, key_slot=key_slot,
                           force_share=force_share)
    if fmt == "raw":
        return RawImage(path, writable, force_share=force_share)
    raise Error("unknown image format %r" % (fmt,))


def create(path: "StrPath", size: int, format: str = "qcow2", passphrase: "Optional[Secret]" = None,
           **options: Any) -> None:
    """Create a new image; it is never made over an existing file.

    Parameters:
        path: the file to create.
        size: the guest disk size in bytes.
        format: "qcow2" (default), "luks" (LUKS1) or "luks2".
        passphrase: the secret of the first keyslot, as bytes (for qcow2 it
            must be valid UTF-8 without NUL bytes, as QEMU reads it).  With
            format "qcow2" a passphrase alone makes a qcow2-luks image.
        options: for "qcow2", those of ``pyqcrypt.qcow2.create_qcow2``:
            cluster_size, refcount_bits, compat, encrypt_format ("luks" or
            "aes"), spec (cipher, e.g. "aes-xts-plain64"), hash_name,
            iter_time_ms, iterations, data_file, data_file_raw,
            backing_file, backing_format, allow_insecure, extended_l2.  For
            "luks", those of ``pyqcrypt.luks.device.create_volume``: spec,
            key_bits, hash_name, iter_time_ms, iterations, header (a
            detached header file), uuid, master_key, align_sectors,
            allow_insecure.  For "luks2": spec, key_bits, sector_size (0
            lets libcryptsetup choose), pbkdf (a ``pyqcrypt.Pbkdf``), uuid,
            label, master_key, header.

    Returns None; open the new image with :func:`pyqcrypt.open`.

    Raises:
        Error: *path* exists, a LUKS format without a passphrase, an
            unknown format or option value.
        UnsupportedCipher: a cipher pyqcrypt cannot run.
        StorageError: the file cannot be created or written.

    Example::

        pyqcrypt.create("disk.qcow2", 1 << 30, passphrase=b"secret")
        with pyqcrypt.open("disk.qcow2", b"secret", writable=True) as disk:
            disk.write(0, bytes(512))
    """
    from .luks.luks2_format import Luks2Request, create_luks2
    from .luks.device import create_volume
    from .qcow2 import create_qcow2
    if format == "qcow2":
        if passphrase is not None:
            options.setdefault("encrypt_format", "luks")
        create_qcow2(path, size, passphrase=passphrase, **options)
        return None
    if format == "luks":
        if passphrase is None:
            raise Error("a LUKS volume needs a passphrase")
        create_volume(path, size, passphrase, **options)
        return None
    if format == "luks2":
        if passphrase is None:
            raise Error("a LUKS volume needs a passphrase")
        header = options.pop("header", None)
        create_luks2(path, size, passphrase, Luks2Request(**options), header=header)
        return None
    raise Error("creating %r images is not supported yet" % (format,))


if TYPE_CHECKING:
    from .luks.volume import LuksPayload
    from .qcow2.image import Qcow2Image

    def _every_image_is_a_device(raw: RawImage, luks: LuksPayload,
                                 qcow2: Qcow2Image) -> "list[BlockDevice]":
        """For mypy only: the three classes open_image() returns conform to BlockDevice."""
        return [raw, luks, qcow2]
