# SPDX-License-Identifier: LGPL-2.1-or-later
"""pyqcrypt: qcow2-with-LUKS, LUKS1 and LUKS2 disk images, compatible with
QEMU and cryptsetup.

The package is layered (see docs/internals.md, "Layout"): ``pyqcrypt.crypto`` holds the
primitives; the LUKS, qcow2, image and conversion layers build on it.
Every error pyqcrypt raises on purpose derives from ``pyqcrypt.Error``.

The API: ``open`` (returning an ``Image``), ``create``, ``convert``, ``resize``, ``rebase``,
``commit``; ``info`` (a frozen ``ImageInfo``); and the keyslots of
qcow2-luks images and LUKS1/LUKS2 volumes: ``add_key``, ``remove_key``,
``change_key``, ``kill_slot``, ``check_passphrase``, ``erase``,
``header_backup``, ``header_restore``.  ``help()`` on each says what it
takes, returns and raises.
"""

from typing import TYPE_CHECKING

from ._lazy import exports
from .errors import (CryptoError, Error, FormatError, MissingDependency, StorageError,
                     UnsupportedCipher, WrongPassphrase)

if TYPE_CHECKING:
    from .conversion import convert
    from .image import create, open as open  # the API is pyqcrypt.open(); not in __all__
    from .luks.luks2_format import Luks2Request, Pbkdf
    from .public_image import Image
    from .committing import commit
    from .image_summary import ImageInfo, info
    from .keyslots import (add_key, change_key, check_passphrase, erase, header_backup,
                           header_restore, kill_slot, remove_key)
    from .rebasing import rebase
    from .resizing import resize

__version__ = "0.1.0"

# The API's functions and classes load on first use (PEP 562), so that a
# command such as ``pyqcrypt info`` imports only the code it runs.
_LAZY = {"convert": ".conversion", "create": ".image", "open": ".image", "Image": ".public_image",
         "Luks2Request": ".luks.luks2_format", "Pbkdf": ".luks.luks2_format",
         "resize": ".resizing", "rebase": ".rebasing", "commit": ".committing",
         "ImageInfo": ".image_summary", "info": ".image_summary",
         **dict.fromkeys(("add_key", "change_key", "check_passphrase", "erase", "header_backup",
                          "header_restore", "kill_slot", "remove_key"), ".keyslots")}


__getattr__ = exports(__name__, _LAZY)


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(_LAZY))

# ``open`` is left out so that ``from pyqcrypt import *`` does not shadow
# the builtin; call it as ``pyqcrypt.open``.
__all__ = ["CryptoError", "Error", "FormatError", "MissingDependency", "StorageError",
           "UnsupportedCipher", "WrongPassphrase", "Image", "Luks2Request", "Pbkdf", "convert", "create",
           "resize", "rebase", "commit", "ImageInfo", "info", "add_key", "change_key",
           "check_passphrase", "erase", "header_backup", "header_restore", "kill_slot", "remove_key",
           "__version__"]
