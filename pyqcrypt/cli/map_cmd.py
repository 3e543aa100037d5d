# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt map``: qemu-img map's output, table or JSON, from the block
status of an image and its backing chain (pyqcrypt.block_status)."""

import sys

from ..errors import Error
from . import common, image_args


def register(sub):
    p = common.add_command(
        sub, "map", "show where an image's data lies (qemu-img map)",
        "Show the guest ranges of an image as qemu-img map does, merged as it merges them: "
        "in the table (human output) the ranges holding data, with their offset in the file "
        "that stores them; in JSON every range with its depth in the backing chain and "
        "whether it is present, reads as zeros or holds data (and where, when that is known: "
        "not for compressed or encrypted data).  Encrypted images need their secret, as "
        "qemu-img does.",
        ["pyqcrypt map disk.qcow2",
         "pyqcrypt map --output=json --start-offset 1M --max-length 64M overlay.qcow2",
         "pyqcrypt map --output=json --object secret,id=s0,file=pass.txt \\",
         "    --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=s0"])
    p.add_argument("--output", choices=("human", "json"), default="human",
                   help="output format: human (default, the data ranges) or json (every range)")
    p.add_argument("--start-offset", default="0", metavar="OFFSET",
                   help="the guest offset to start at (default 0; k, M, G suffixes)")
    p.add_argument("--max-length", metavar="LENGTH",
                   help="map at most this many bytes (default: to the end)")
    image_args.add_image_options(p)
    p.add_argument("filename", help="the image (with --image-opts: driver=...,file.filename=...)")
    p.set_defaults(func=_cmd_map)


def _size_option(text, what):
    try:
        value = common.parse_size(text)
    except Error:
        value = -1
    if value < 0:
        raise Error("Invalid %s specified! You may use k, M, G, T, P or E suffixes for "
                    "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes." % what)
    return value


def _human(value):
    """C's %#-16x: 0 has no 0x prefix."""
    return ("%#x" % value if value else "0").ljust(16)


def _print_human(curr, nxt):
    if curr.data and curr.offset is None:
        raise Error("File contains external, encrypted or compressed clusters.")
    if curr.data and not curr.zero:
        sys.stdout.write("%s%s%s%s\n" % (_human(curr.start), _human(curr.length),
                                         _human(curr.offset), curr.file))
    if nxt is not None and (not nxt.data or nxt.zero):
        nxt.data, nxt.zero = False, True      # the table does not tell zeros from holes


def _print_json(curr, nxt):
    text = '{ "start": %d, "length": %d, "depth": %d, "present": %s, "zero": %s, "data": %s' % (
        curr.start, curr.length, curr.depth, _bool(curr.present), _bool(curr.zero),
        _bool(curr.data))
    if curr.offset is not None:
        text += ', "offset": %d' % curr.offset
    sys.stdout.write(text + ("},\n" if nxt is not None else "}"))


def _bool(flag):
    return "true" if flag else "false"


def _cmd_map(args):
    from ..block_status import map_pairs
    start = _size_option(args.start_offset, "start offset")
    max_length = None if args.max_length is None else _size_option(args.max_length, "max length")
    store = common.secret_store(args)
    try:
        arg = image_args.resolve(args.filename, args.image_opts, args.format, store,
                                 args.force_share)
        img = image_args.open_image(arg)
    finally:
        store.close()
    with img:
        human = args.output == "human"
        if human:
            sys.stdout.write("%-16s%-16s%-16s%s\n" % ("Offset", "Length", "Mapped to", "File"))
        else:
            sys.stdout.write("[")
        try:
            for curr, nxt in map_pairs(img, start, max_length):
                (_print_human if human else _print_json)(curr, nxt)
        finally:
            sys.stdout.flush()
        if not human:
            sys.stdout.write("]\n")
    return 0
