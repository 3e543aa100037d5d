# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt isLuks`` and ``pyqcrypt luksUUID``, as cryptsetup answers
them in scripts: isLuks exits 0 for a LUKS device (of ``--type`` when
given), 1 for anything else, 4 for a device that cannot be opened, and
with ``-v`` says "Command successful." or cryptsetup's failure line;
luksUUID prints the header's UUID (exit 1, silent, when there is none),
or with ``--uuid`` sets it (see pyqcrypt.luks.uuid).  With ``--header``
both look at the detached header alone, as cryptsetup does (the device
argument is then not even opened).  Neither needs a passphrase.

A qcow2-luks image is not a LUKS device to cryptsetup or blkid (they see
the qcow2 file), so isLuks and luksUUID answer 1 for it as cryptsetup does,
and ``luksUUID --uuid`` refuses it in words: the UUID inside it names
nothing any tool looks up (QEMU shows it in ``qemu-img info`` and never
uses it)."""

import sys

from . import common
from .cs_exits import EXIT_BUSY, EXIT_NO_DEVICE, EXIT_USAGE as EXIT_NOT_LUKS
_FAILED = {EXIT_NOT_LUKS: "Command failed with code -1 (wrong or missing parameters).",
           EXIT_NO_DEVICE: "Command failed with code -4 (wrong device or file specified).",
           EXIT_BUSY: "Command failed with code -5 (device already exists or device is busy)."}


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


def _where(args):
    """The file cryptsetup reads: the detached header when given."""
    return args.header or args.device


def cmd_is_luks(args):
    version = _version(_where(args))
    if version == EXIT_NO_DEVICE:
        return _finish(args, EXIT_NO_DEVICE)
    wanted = {None: (1, 2), "luks": (1, 2), "luks1": (1,), "luks2": (2,)}[args.type]
    return _finish(args, 0 if version in wanted else EXIT_NOT_LUKS)


def _set_uuid(args, version):
    from ..luks import uuid as luks_uuid
    where = _where(args)
    uuid = luks_uuid.parse_uuid(args.uuid)
    if uuid is None:
        sys.stderr.write("Wrong LUKS UUID format provided.\n")
        return EXIT_NOT_LUKS
    if sys.stdin.isatty():              # cryptsetup asks at a terminal only
        common.confirm(args, "Do you really want to change UUID of device %s?" % where)
    from ..locks import ImageInUse
    try:
        if version == 2:
            luks_uuid.set_uuid_luks2(where, uuid)
        else:
            luks_uuid.set_uuid_luks1(where, uuid)
    except ImageInUse as exc:           # a QEMU has it open: cryptsetup's "busy"
        sys.stderr.write("pyqcrypt: %s\n" % exc)
        return EXIT_BUSY
    return 0


def _refuse_qcow2(args):
    from ..errors import Error
    from ..qcow2.open import is_qcow2
    if args.uuid is not None and args.header is None and is_qcow2(args.device):
        raise Error("%s is a qcow2 image: the UUID of the LUKS header inside it is seen by no "
                    "tool (cryptsetup and blkid see the qcow2 file, QEMU never uses it), so "
                    "pyqcrypt does not change it" % args.device)


def cmd_luks_uuid(args):
    from ..storage import Storage
    where = _where(args)
    version = _version(where)
    if version == EXIT_NO_DEVICE or version is None:
        if version is None:
            _refuse_qcow2(args)
        return _finish(args, version or EXIT_NOT_LUKS)
    if args.uuid is not None:
        return _finish(args, _set_uuid(args, version))
    with Storage(where) as st:
        if version == 2:
            from ..luks.luks2 import read_header_metadata
            uuid = read_header_metadata(st).uuid
        else:
            from ..luks.header import HEADER_SIZE, LuksHeader
            uuid = LuksHeader.parse(st.pread(0, min(HEADER_SIZE, st.size()), "LUKS header"),
                                    path=where).uuid
    sys.stdout.write(uuid + "\n")
    return _finish(args, 0)


def register(sub):
    for name, fn, summary, what in (
            ("isLuks", cmd_is_luks, "is this a LUKS device? (cryptsetup isLuks)",
             "Exit 0 when DEVICE starts with a LUKS header (of --type, when given), 1 when it "
             "does not, 4 when it cannot be read, as cryptsetup isLuks; -v says so."),
            ("luksUUID", cmd_luks_uuid, "print or set a LUKS header's UUID (cryptsetup luksUUID)",
             "Print the UUID of DEVICE's LUKS1 or LUKS2 header, as cryptsetup luksUUID; exit 1 "
             "when DEVICE holds no LUKS header.  With --uuid, set it instead (LUKS1: one write "
             "of the header sector; LUKS2: both header copies, through libcryptsetup); a UUID "
             "not in the 8-4-4-4-12 hex form is refused with exit 1, as cryptsetup does.  Not on "
             "qcow2-luks images, whose inner UUID no tool looks up.  No passphrase is needed.")):
        examples = ["pyqcrypt %s /dev/sdb2" % name, "pyqcrypt %s -v vol.luks && echo yes" % name]
        if name == "luksUUID":
            examples.append("pyqcrypt luksUUID --uuid 0b9d8f6e-25c4-4a6f-9c1e-3f7a2d5b8c41 vol.luks")
        p = common.add_command(sub, name, summary, what, examples)
        p.add_argument("-v", "--verbose", action="store_true",
                       help="say \"Command successful.\" or why it failed, as cryptsetup -v")
        if name == "isLuks":
            p.add_argument("--type", choices=("luks", "luks1", "luks2"),
                           help="only this LUKS version counts")
        else:
            p.add_argument("--uuid", help="set this UUID (8-4-4-4-12 hex digits) instead of printing it")
            common.add_batch_option(p)
        p.add_argument("--header", metavar="HDR",
                       help="look at this detached header file only (DEVICE is then not opened)")
        p.add_argument("device", help="the file or block device to look at")
        p.set_defaults(func=fn)
