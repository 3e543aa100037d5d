# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt snapshot``: qemu-img snapshot's syntax, output and exit codes
over qcow2 internal snapshots (pyqcrypt.qcow2.snapshot_ops).

``snapshot [--object OBJ] [--image-opts] [-U] [-q] [-l | -a SNAPSHOT | -c
SNAPSHOT | -d SNAPSHOT] FILENAME``: -l prints qemu-img's table (nothing
when there are no snapshots); -c, -d and -a print nothing.  Formats
without snapshots (raw, LUKS) list none and refuse the rest with
qemu-img's messages.
"""

import argparse
import sys

from ..errors import Error
from . import common, image_args

_MIX = "Cannot mix '-l', '-a', '-c', '-d'"
_NOT_SUPPORTED = {"create": "Could not create snapshot '%s': -95 (Operation not supported)",
                  "delete": "Could not delete snapshot '%s': snapshot not found",
                  "apply": "Could not apply snapshot '%s': Block driver does not support snapshots"}


class _Action(argparse.Action):
    """-l, -a, -c and -d: one of them at most, as qemu-img requires."""

    def __call__(self, parser, namespace, values, option_string=None):
        if namespace.action is not None:
            namespace.action = "mixed"
            return
        namespace.action = self.const
        namespace.snapshot = values


def _cmd_snapshot(args):
    if args.action == "mixed":
        raise Error(_MIX)
    store = common.secret_store(args)
    try:
        arg = image_args.resolve(args.filename, args.image_opts, args.format, store,
                                 force_share=args.force_share)
        fmt = arg.format or _probe(arg.path)
        if args.action == "list":
            _list(arg, fmt)
        elif args.action is not None:
            _change(arg, fmt, args.action, args.snapshot)
    finally:
        store.close()
    return 0


def _probe(path):
    from ..probe import detect
    return detect(path)


def _list(arg, fmt):
    if fmt != "qcow2":
        return                              # no snapshots there
    from ..info_report import snapshot_lines
    from ..locks import lock_image
    from ..qcow2.open import read_header
    from ..qcow2.snapshots import read_snapshots
    from ..storage import Storage
    with Storage(arg.path) as st:
        lock_image(st, mode="read", force_share=arg.force_share)
        snapshots = read_snapshots(st, read_header(st))
    if snapshots:
        lines = ["Snapshot list:"] + snapshot_lines([sn.info() for sn in snapshots])
        sys.stdout.write("\n".join(lines) + "\n")


def _change(arg, fmt, action, name):
    if fmt != "qcow2":
        raise Error(_NOT_SUPPORTED[action] % name)
    if arg.force_share:
        raise Error("force-share=on can only be used with read-only images")
    from ..qcow2.snapshot_ops import change_snapshots
    change_snapshots(arg.path, action, name, arg.passphrase)


def register(sub):
    p = common.add_command(
        sub, "snapshot", "list, create, apply or delete qcow2 internal snapshots (qemu-img snapshot)",
        "List (-l), create (-c), apply (-a) or delete (-d) the internal snapshots of a qcow2 image, "
        "plain or encrypted, as qemu-img snapshot does; with none of them, nothing is done.  Only "
        "metadata changes, so no key is needed (a secret given is checked).  A new snapshot "
        "gets the next free numeric ID; names may repeat; -d looks a snapshot up by name, -a by "
        "ID, then by name.  Every change is written to new clusters and made current by one "
        "header write: an interrupted command leaves the old image or the new one.",
        ["pyqcrypt snapshot -l disk.qcow2",
         "pyqcrypt snapshot -c before-upgrade disk.qcow2",
         "pyqcrypt snapshot -a before-upgrade disk.qcow2",
         "pyqcrypt snapshot -d before-upgrade disk.qcow2",
         "pyqcrypt snapshot -l --object secret,id=s0,file=pass.txt \\",
         "    --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=s0"])
    image_args.add_image_options(p)
    p.set_defaults(action=None, snapshot=None)
    p.add_argument("-q", "--quiet", action="store_true", help="print no progress (there is none)")
    p.add_argument("-l", nargs=0, action=_Action, const="list", help="list the snapshots")
    p.add_argument("-a", metavar="SNAPSHOT", action=_Action, const="apply",
                   help="make the image's current state the snapshot's (ID or name)")
    p.add_argument("-c", metavar="SNAPSHOT", action=_Action, const="create",
                   help="create a snapshot of the current state with this name")
    p.add_argument("-d", metavar="SNAPSHOT", action=_Action, const="delete",
                   help="delete the snapshot with this name")
    p.add_argument("filename", help="the image (with --image-opts: driver=...,file.filename=...)")
    p.set_defaults(func=_cmd_snapshot)
