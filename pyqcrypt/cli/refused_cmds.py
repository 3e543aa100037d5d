# SPDX-License-Identifier: LGPL-2.1-or-later
"""The qemu-img 7.2 verbs pyqcrypt does not implement (bench, bitmap,
dd): each is a command that takes qemu-img's arguments as they are and
refuses in one line that says why and what to use instead (exit 1), so
a script that calls them fails clearly, never with a usage dump."""

import argparse

from ..errors import Error
from . import common

REFUSED = {
    "bench": ("run a block-layer benchmark (qemu-img bench)",
              "qemu-img bench measures QEMU's block layer, which pyqcrypt is not; run "
              "qemu-img bench (pyqcrypt benchmark measures pyqcrypt's ciphers and PBKDF2)"),
    "bitmap": ("edit persistent dirty bitmaps (qemu-img bitmap)",
               "pyqcrypt keeps no dirty bitmaps (it refuses to write into images that hold "
               "them); use qemu-img bitmap"),
    "dd": ("copy part of an image (qemu-img dd)",
           "pyqcrypt has no dd; pyqcrypt convert copies whole images (with -n into an existing "
           "target), and qemu-img dd copies parts of the images qemu-img can open"),
}


def _refuse(args):
    raise Error("%s is not implemented: %s" % (args.command, REFUSED[args.command][1]))


def register(sub):
    for name, (summary, why) in REFUSED.items():
        p = common.add_command(sub, name, summary + ": not implemented", why + ".",
                               ["pyqcrypt %s ...      # refused, in one line; run qemu-img %s" % (name, name)])
        p.add_argument("arguments", nargs=argparse.REMAINDER,
                       help="qemu-img's arguments, taken and not used")
        p.set_defaults(func=_refuse, takes_anything=True)
