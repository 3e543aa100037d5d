# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fault injection for tests: a hook run before every write, sync and
truncate that reaches the disk, which may raise to simulate a crash or an
I/O error.

Production code has no hook and no branch for one.  ``install_faults``
replaces the primitives through which a Storage touches the disk
(``Storage._pwrite_all``, ``_kernel_copy``, ``_fsync``, ``_ftruncate``) on
the class itself, so every Storage in the process, in every thread, sees
the hook, with wrappers that call ``hook(kind, storage, offset, length)``
first:

* ``("write", storage, offset, length)`` before a pwrite and before a
  copy_file_range attempt (offset in the destination);
* ``("sync", storage, 0, 0)`` before an fsync;
* ``("truncate", storage, length, 0)`` before an ftruncate.

The primitives are called inside the error handling of pwrite,
copy_range_from, sync and truncate, so an OSError a hook raises becomes
the same StorageError a real failure would.  ``injected_faults`` installs
a hook for the duration of a with block and then puts back what was there
before (nested blocks restore each other's hooks).
"""

import contextlib

from .positioned import Storage

# The primitives as positioned.py defines them, unwrapped.
_PLAIN = {name: vars(Storage)[name] for name in ("_pwrite_all", "_kernel_copy", "_fsync", "_ftruncate")}


def _wrappers(hook):
    """The primitives of Storage, each calling *hook* first."""

    def _pwrite_all(self, view, offset):
        hook("write", self, offset, len(view))
        return _PLAIN["_pwrite_all"](self, view, offset)

    def _kernel_copy(self, src, length, src_offset, dst_offset):
        hook("write", self, dst_offset, length)
        return _PLAIN["_kernel_copy"](self, src, length, src_offset, dst_offset)

    def _fsync(self):
        hook("sync", self, 0, 0)
        return _PLAIN["_fsync"](self)

    def _ftruncate(self, length):
        hook("truncate", self, length, 0)
        return _PLAIN["_ftruncate"](self, length)

    return {"_pwrite_all": _pwrite_all, "_kernel_copy": _kernel_copy, "_fsync": _fsync,
            "_ftruncate": _ftruncate}


def _set_primitives(primitives):
    for name, function in primitives.items():
        setattr(Storage, name, function)


def install_faults(hook):
    """Run ``hook(kind, storage, offset, length)`` before every write, sync
    and truncate from now on, for the life of the process (a test's child
    process); None puts the plain primitives back."""
    _set_primitives(_PLAIN if hook is None else _wrappers(hook))


@contextlib.contextmanager
def injected_faults(hook):
    """Install *hook* as the fault hook for the duration of a with block."""
    saved = {name: vars(Storage)[name] for name in _PLAIN}
    install_faults(hook)
    try:
        yield hook
    finally:
        _set_primitives(saved)
