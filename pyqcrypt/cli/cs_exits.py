# SPDX-License-Identifier: LGPL-2.1-or-later
"""cryptsetup's exit codes, and where the LUKS verbs use them.

cryptsetup(8) exits 0 on success, 1 for wrong parameters, 2 for no
permission (a wrong passphrase), 3 when out of memory, 4 for a wrong device
and 5 when the device already exists or is busy.  The LUKS verbs (format,
dump, add-key, ..., under either spelling) give a missing device 4 and an
image another process holds (QEMU's image lock) 5, through
``cryptsetup_exits``; the man page's EXIT STATUS section is built from
EXIT_CODES below."""

import functools
import os
import sys

EXIT_OK, EXIT_USAGE, EXIT_PERMISSION, EXIT_NO_MEMORY, EXIT_NO_DEVICE, EXIT_BUSY = range(6)

# (code, cryptsetup's meaning, where pyqcrypt gives it)
EXIT_CODES = (
    (EXIT_OK, "success", "every command"),
    (EXIT_USAGE, "wrong parameters",
     "usage errors and every other error (a bad header, a bad UUID, a refused option), as "
     "qemu\\-img does; isLuks and luksUUID for a file that holds no LUKS header"),
    (EXIT_PERMISSION, "no permission or bad passphrase",
     "no keyslot opens with the passphrase (every command that asks for one); check: "
     "corruptions found (qemu\\-img check's meaning)"),
    (EXIT_NO_MEMORY, "out of memory",
     "never (a failed allocation is an error, exit 1); check: leaks found (qemu\\-img check's "
     "meaning)"),
    (EXIT_NO_DEVICE, "wrong device specified",
     "the LUKS verbs, isLuks and luksUUID when the device (or the \\-\\-header file) does not exist"),
    (EXIT_BUSY, "device already exists or is busy",
     "the LUKS verbs and luksUUID \\-\\-uuid when another process holds the image's lock (QEMU, another "
     "pyqcrypt)"),
)

# What differs from cryptsetup, for the man page.
DIFFERENCES = (
    "A device that exists but cannot be opened (permissions, a block device held exclusively) "
    "exits 1 where cryptsetup says 4 or 5; so does any error but those above.  qemu\\-img's "
    "verbs keep qemu\\-img's codes (check: 63 when a format has no checks).  Interrupted by a "
    "signal: 128 plus its number.")


def _missing(path):
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False            # it is there; opening it says what is wrong
    return False


def _with_exits(func, where):
    @functools.wraps(func)
    def run(args):
        from ..locks import ImageInUse
        path = where(args)
        if _missing(path):
            print("pyqcrypt: cannot open %s: No such file or directory" % path, file=sys.stderr)
            return EXIT_NO_DEVICE
        try:
            return func(args)
        except ImageInUse as exc:
            print("pyqcrypt: %s" % exc, file=sys.stderr)
            return EXIT_BUSY
    return run


def cryptsetup_exits(func):
    """*func* (a LUKS verb taking args with .device and .header) with
    cryptsetup's exit codes 4 (the file holding the header does not exist)
    and 5 (another process holds its lock)."""
    return _with_exits(func, lambda args: getattr(args, "header", None) or args.device)


def cryptsetup_exits_format(func):
    """cryptsetup_exits for format, whose --header file may be new: the
    device must exist."""
    return _with_exits(func, lambda args: args.device)
