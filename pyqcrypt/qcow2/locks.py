# SPDX-License-Identifier: LGPL-2.1-or-later
"""QEMU-compatible image locks for qcow2 images and their data files.

The implementation lives in ``pyqcrypt.locks`` (below both luks/ and
qcow2/, so raw LUKS volumes and detached headers take the same locks);
this module re-exports it for the qcow2 code and older imports.
"""

from ..locks import (ALL, CONSISTENT_READ, MODES, NAMES, PERM_BASE, RESIZE, SHARED_BASE, WRITE,
                     WRITE_UNCHANGED, ImageInUse, LockingUnsupportedWarning, lock_image)

__all__ = ["ALL", "CONSISTENT_READ", "ImageInUse", "LockingUnsupportedWarning", "MODES", "NAMES",
           "PERM_BASE", "RESIZE", "SHARED_BASE", "WRITE", "WRITE_UNCHANGED", "lock_image"]
