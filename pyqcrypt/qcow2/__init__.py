# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 4: qcow2 images (v2 and v3), plain, LUKS-encrypted or legacy AES,
with external data files, QEMU-compatible locking and consistency checks."""

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from .header import Qcow2Header
    from .image import Qcow2Image
    from .create import create_qcow2
    from .open import is_qcow2, open_qcow2, qcow2_encrypted, qcow2_luks_area

# Loaded on first use (PEP 562): importing one module of the package does
# not import all of them.
_LAZY = {"Qcow2Header": ".header", "Qcow2Image": ".image", "create_qcow2": ".create",
         "is_qcow2": ".open", "open_qcow2": ".open", "qcow2_encrypted": ".open",
         "qcow2_luks_area": ".open"}


__getattr__ = exports(__name__, _LAZY)


__all__ = ["Qcow2Header", "Qcow2Image", "create_qcow2", "is_qcow2", "open_qcow2", "qcow2_encrypted",
           "qcow2_luks_area"]
