# SPDX-License-Identifier: LGPL-2.1-or-later
"""What every image ``pyqcrypt.image.open_image`` returns shares: the
``BlockDevice`` protocol (the block-device interface pyqcrypt's own code
programs against, and which ``pyqcrypt.Image``, what ``pyqcrypt.open``
returns, passes on) and ``ImageLifecycle``, the one lifecycle of
RawImage, LuksPayload and Qcow2Image.

An image is open from the end of its constructor until ``close()``.
close() runs the subclass's ``_finish()`` (a writable qcow2 image flushes
its metadata there), then its ``_release()`` (keys, locks, files), once: a
second call does nothing, and the image counts as closed even when
_finish() fails.  Any use after close is an ``Error`` ("... is closed").
An image dropped while open is closed by the garbage collector with a
``ResourceWarning`` ("unclosed image PATH"), as Python file objects are;
one whose constructor failed was never open and is dropped quietly.
"""

import warnings
from typing import Any, Protocol, TypeVar, Union

from .errors import Error

Buffer = Union[bytes, bytearray, memoryview]


class BlockDevice(Protocol):
    """What open_image returns, whatever the format: a block device of
    *size* bytes (a RawImage, a LUKS payload or a Qcow2Image)."""

    size: int
    writable: bool
    path: str
    format_name: str            # pyqcrypt.Image.format: qcow2, luks, luks2 or raw

    @property
    def closed(self) -> bool: ...
    def read(self, offset: int, length: int) -> bytes: ...
    def readinto(self, offset: int, buf: Any) -> Any: ...
    def write(self, offset: int, data: Buffer) -> None: ...
    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "BlockDevice": ...
    def __exit__(self, *exc: object) -> None: ...


_Self = TypeVar("_Self", bound="ImageLifecycle")


class ImageLifecycle:
    """The lifecycle of an image (see the module docstring).  A subclass
    sets ``path`` and, last in its constructor, ``_closed = False``; it
    implements ``_release()`` and may override ``_finish()``,
    ``_warns_when_dropped()`` and ``_closed_noun``."""

    _closed = True              # until the subclass's __init__ completes
    _closed_noun = ""           # what "is closed" calls the image, before its path
    path: str

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        """The use-after-close error."""
        if self._closed:
            raise Error("%s%s is closed" % (self._closed_noun, self.path))

    def close(self) -> None:
        """Finish, then release what the image holds; a second call does
        nothing."""
        if self._closed:
            return
        try:
            self._finish()
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Release without finishing (close's last step; an open that failed)."""
        if not self._closed:
            self._closed = True
            self._release()

    def _finish(self) -> None:
        """What close() completes while the image is still open (nothing here)."""

    def _release(self) -> None:
        """Give back the keys, locks and files the image holds (called once)."""
        raise NotImplementedError

    def _warns_when_dropped(self) -> bool:
        """Whether dropping this image unclosed deserves a ResourceWarning."""
        return True

    def __del__(self) -> None:
        if self._closed:
            return
        if self._warns_when_dropped():
            try:
                warnings.warn("unclosed image %s" % self.path, ResourceWarning, source=self)
            except Exception:           # warnings as errors, interpreter shutdown
                pass
        self.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
