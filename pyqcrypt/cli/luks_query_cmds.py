# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt isLuks`` and ``pyqcrypt luksUUID``, as cryptsetup answers
them in scripts: isLuks exits 0 for a LUKS device (of ``--type`` when
given), 1 for anything else, 4 for a device that cannot be opened, and
with ``-v`` says "Command successful." or cryptsetup's failure line;
luksUUID prints the header's UUID (exit 1, silent, when there is none).
Neither needs a passphrase."""

import sys

from . import common

EXIT_NOT_LUKS, EXIT_NO_DEVICE = 1, 4
_FAILED = {EXIT_NOT_LUKS: "Command failed with code -1 (wrong or missing parameters).",
           EXIT_NO_DEVICE: "Command failed with code -4 (wrong device or file specified)."}


def _version(path):
    """1 or 2, None for no LUKS header, or EXIT_NO_DEVICE after saying so."""
    from ..errors import Error
    from ..luks.magic import head_version
    from ..storage import read_head
    try:
        head = read_head(path, 8)
    except Error:
        sys.stderr.write("Device %s does not exist or access denied.\n" % path)
        return EXIT_NO_DEVICE
    version = head_version(head)        # a magic too short for a version is no header
    return version if version in (1, 2) else None


def _finish(args, code):
    if args.verbose:                # on stdout, as cryptsetup -v writes it
        sys.stdout.write((_FAILED[code] if code else "Command successful.") + "\n")
    return code


def cmd_is_luks(args):
    version = _version(args.device)
    if version == EXIT_NO_DEVICE:
        return _finish(args, EXIT_NO_DEVICE)
    wanted = {None: (1, 2), "luks": (1, 2), "luks1": (1,), "luks2": (2,)}[args.type]
    return _finish(args, 0 if version in wanted else EXIT_NOT_LUKS)


def cmd_luks_uuid(args):
    from ..storage import Storage
    version = _version(args.device)
    if version == EXIT_NO_DEVICE or version is None:
        return _finish(args, version or EXIT_NOT_LUKS)
    with Storage(args.device) as st:
        if version == 2:
            from ..luks.luks2 import read_header_metadata
            uuid = read_header_metadata(st).uuid
        else:
            from ..luks.header import HEADER_SIZE, LuksHeader
            uuid = LuksHeader.parse(st.pread(0, min(HEADER_SIZE, st.size()), "LUKS header"),
                                    path=args.device).uuid
    sys.stdout.write(uuid + "\n")
    return _finish(args, 0)


def register(sub):
    for name, fn, summary, what in (
            ("isLuks", cmd_is_luks, "is this a LUKS device? (cryptsetup isLuks)",
             "Exit 0 when DEVICE starts with a LUKS header (of --type, when given), 1 when it "
             "does not, 4 when it cannot be read, as cryptsetup isLuks; -v says so."),
            ("luksUUID", cmd_luks_uuid, "print a LUKS header's UUID (cryptsetup luksUUID)",
             "Print the UUID of DEVICE's LUKS1 or LUKS2 header, as cryptsetup luksUUID; exit 1 "
             "when DEVICE holds no LUKS header.  No passphrase is needed.")):
        p = common.add_command(sub, name, summary, what,
                               ["pyqcrypt %s /dev/sdb2" % name,
                                "pyqcrypt %s -v vol.luks && echo yes" % name])
        p.add_argument("-v", "--verbose", action="store_true",
                       help="say \"Command successful.\" or why it failed, as cryptsetup -v")
        if name == "isLuks":
            p.add_argument("--type", choices=("luks", "luks1", "luks2"),
                           help="only this LUKS version counts")
        p.add_argument("device", help="the file or block device to look at")
        p.set_defaults(func=fn)
