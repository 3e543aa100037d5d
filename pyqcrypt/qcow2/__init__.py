# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 4: qcow2 images (v2 and v3), plain, LUKS-encrypted or legacy AES,
with external data files, QEMU-compatible locking and consistency checks."""

from .header import Qcow2Header
from .image import Qcow2Image
from .create import create_qcow2
from .open import is_qcow2, open_qcow2, qcow2_encrypted, qcow2_luks_area

__all__ = ["Qcow2Header", "Qcow2Image", "create_qcow2", "is_qcow2", "open_qcow2", "qcow2_encrypted",
           "qcow2_luks_area"]
