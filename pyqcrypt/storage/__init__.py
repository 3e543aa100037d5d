# SPDX-License-Identifier: LGPL-2.1-or-later
"""Storage: every byte pyqcrypt reads or writes on a file or block device.

One module a concern:

* ``positioned``: ``Storage``, positioned reads and writes on one file or
  block device (open policy, size, pread, pwrite, copy, sync, truncate);
* ``direct``: the O_DIRECT descriptor of a block device and the alignment
  bulk transfers need to use it (``DirectChannel``, ``DIRECT_ALIGN``);
* ``holes``: which ranges of a file may hold data (SEEK_DATA, SEEK_HOLE);
* ``memory``: ``MemoryStorage``, ``Region`` (a window onto a Storage) and
  ``zero_fill``;
* ``publication``: new files that appear whole or not at all (``NewFile``,
  ``Publication``, ``rename_noreplace``, the temporary names);
* ``faults``: fault injection for tests (``injected_faults``,
  ``install_faults``).

Every name below is importable from ``pyqcrypt.storage`` and loads its
module on first use (PEP 562).
"""

from typing import TYPE_CHECKING

from .._lazy import exports
from ..errors import StorageError

if TYPE_CHECKING:
    from .direct import DIRECT_ALIGN, DirectChannel
    from .faults import injected_faults, install_faults
    from .memory import MemoryStorage, Region, zero_fill
    from .positioned import Storage, close_quietly, read_head
    from .publication import (TMP_SUFFIX, TMP_TAG, NewFile, Publication, Staged, fsync_dir,
                              leftovers, publish, rename_noreplace, tmp_name, unlink_quietly,
                              warn_leftovers)

_LAZY = {"DIRECT_ALIGN": ".direct", "DirectChannel": ".direct",
         "injected_faults": ".faults", "install_faults": ".faults",
         "MemoryStorage": ".memory", "Region": ".memory", "zero_fill": ".memory",
         "Storage": ".positioned", "close_quietly": ".positioned", "read_head": ".positioned",
         "TMP_SUFFIX": ".publication", "TMP_TAG": ".publication", "NewFile": ".publication",
         "Publication": ".publication", "Staged": ".publication", "fsync_dir": ".publication",
         "leftovers": ".publication", "publish": ".publication",
         "rename_noreplace": ".publication", "tmp_name": ".publication",
         "unlink_quietly": ".publication", "warn_leftovers": ".publication"}


__getattr__ = exports(__name__, _LAZY)


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["DIRECT_ALIGN", "DirectChannel", "MemoryStorage", "NewFile", "Publication", "Region", "Staged",
           "Storage", "StorageError", "TMP_SUFFIX", "TMP_TAG", "close_quietly", "fsync_dir",
           "injected_faults", "install_faults", "leftovers", "publish", "read_head", "rename_noreplace", "tmp_name",
           "unlink_quietly", "warn_leftovers", "zero_fill"]
