# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt.Image``, the object ``pyqcrypt.open`` returns: the
block-device interface and nothing else.

It holds the format's own image object (a Qcow2Image, a LuksPayload or a
RawImage, whose tables, caches, keys and files are pyqcrypt's business)
in an underscore slot and passes each call on to it.  It is that
object's only holder, so an ``Image`` dropped while open lets the inner
object's finalizer close it with a ResourceWarning (pyqcrypt.lifecycle).
pyqcrypt's own code (conversion, the CLI, ...) opens images with
``pyqcrypt.image.open_image`` and uses the inner object directly.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lifecycle import BlockDevice, Buffer


class Image:
    """An open image as a block device of ``size`` bytes, whatever its
    format: what :func:`pyqcrypt.open` returns (do not construct it).

    Offsets and lengths are in bytes of guest data (the decrypted
    payload); any I/O outside ``[0, size)`` is an ``Error``.  Every method
    raises ``pyqcrypt.Error`` ("... is closed") once the image is closed.
    Used as a context manager, it is closed (flushed first) on leaving the
    ``with`` block; an image dropped while open is closed by the garbage
    collector with a ``ResourceWarning``.

    Example::

        with pyqcrypt.open("disk.qcow2", b"secret", writable=True) as disk:
            disk.write(0, bytes(512))
            assert disk.read(0, 512) == bytes(512)
    """

    __slots__ = ("_image",)

    def __init__(self, image: "BlockDevice") -> None:
        """Wrap *image*, the format's object (pyqcrypt.open does this)."""
        self._image = image

    @property
    def size(self) -> int:
        """The guest disk size in bytes."""
        return self._image.size

    @property
    def writable(self) -> bool:
        """Whether the image was opened for writing (``writable=True``)."""
        return self._image.writable

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._image.closed

    @property
    def format(self) -> str:
        """The image format: "qcow2" (plain, LUKS or legacy AES), "luks"
        (LUKS1), "luks2" or "raw"."""
        return self._image.format_name

    @property
    def path(self) -> str:
        """The file or block device the image was opened from (the top
        layer of a qcow2 backing chain)."""
        return self._image.path

    def read(self, offset: int, length: int) -> bytes:
        """Read *length* bytes of guest data at *offset*.

        Parameters:
            offset: the first byte, from 0.
            length: how many bytes.

        Returns the bytes (unallocated qcow2 clusters read from the backing
        chain, or as zeros).

        Raises:
            Error: the range lies outside the image, or the image is closed.
            FormatError: the image's metadata is damaged where it is read.
            StorageError: the file cannot be read.
        """
        return self._image.read(offset, length)

    def readinto(self, offset: int, buf: Any) -> Any:
        """Read into *buf*, a writable buffer (``bytearray``,
        ``memoryview``, ...), as many bytes as it holds, from *offset*:
        :meth:`read` without the copy.

        Parameters:
            offset: the first byte, from 0.
            buf: the buffer to fill.

        Returns *buf*.

        Raises: as :meth:`read` does.
        """
        return self._image.readinto(offset, buf)

    def write(self, offset: int, data: "Buffer") -> None:
        """Write *data* as guest data at *offset*.

        Parameters:
            offset: the first byte, from 0.
            data: bytes, bytearray or memoryview.

        Returns None.

        Raises:
            Error: the image is read-only or closed, or the range lies outside it.
            FormatError: the image's metadata is damaged where it is written.
            StorageError: the file cannot be written (e.g. a full disk).
        """
        self._image.write(offset, data)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """Make *length* bytes at *offset* read as zeros (qcow2 records
        zero clusters where it can instead of writing them).

        Parameters:
            offset, length: the range, in bytes.
            unmap: qcow2 may also free the clusters (``qemu-io write -z -u``); other formats ignore it.

        Raises: as :meth:`write` does.
        """
        self._image.write_zeroes(offset, length, unmap)

    def discard(self, offset: int, length: int) -> None:
        """Tell the image that *length* bytes at *offset* are no longer
        needed: a qcow2 image frees the clusters wholly inside the range
        (they read from the backing chain, or as zeros); LUKS and raw
        images keep their bytes (it is advice).

        Parameters:
            offset, length: the range, in bytes.

        Raises:
            Error: the image is closed; for qcow2, read-only or the range outside it.
            FormatError, StorageError: as for :meth:`write` (qcow2).
        """
        self._image.discard(offset, length)

    def flush(self) -> None:
        """Write what is cached (qcow2 tables and refcounts) and sync the
        file to stable storage; nothing to do when read-only.

        Raises:
            Error: the image is closed.
            StorageError: the file cannot be written or synced.
        """
        self._image.flush()

    def close(self) -> None:
        """Flush, then release the keys, locks and files; a second call
        does nothing.  The image counts as closed even if the flush fails.

        Raises:
            Error: the final flush failed (a StorageError: the file could not be written).
        """
        self._image.close()

    def __enter__(self) -> "Image":
        """The image itself, for ``with pyqcrypt.open(...) as disk``."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the image (see :meth:`close`)."""
        self._image.close()

    def __repr__(self) -> str:
        """``<pyqcrypt.Image FORMAT 'PATH' writable|read-only|closed>``: no key, no secret."""
        state = "closed" if self.closed else "writable" if self.writable else "read-only"
        return "<pyqcrypt.Image %s %r %s>" % (self.format, self.path, state)

