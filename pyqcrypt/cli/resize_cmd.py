# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt resize``: qemu-img resize's syntax over ``pyqcrypt.resize``.

``resize [--object OBJ] [--image-opts] [-f FMT] [--preallocation=off] [-q]
[--shrink] FILENAME [+|-]SIZE``: prints "Image resized." as qemu-img does.
"""

import sys

from ..errors import Error
from . import common, image_args


def cmd_resize(args):
    from ..resizing import resize
    if args.preallocation not in (None, "off"):
        raise Error("--preallocation=%s is not supported: pyqcrypt grows images sparse "
                    "(--preallocation=off)" % args.preallocation)
    store = common.secret_store(args)
    try:
        arg = image_args.resolve(args.filename, args.image_opts, args.format, store)
        text = args.size
        if text[:1] in "+-":
            current = _virtual_size(arg)          # qemu-img: relative to the virtual size
            delta = _size(text[1:])
            size = current + delta if text[0] == "+" else current - delta
        else:
            size = _size(text)
        if size <= 0 and text[:1] == "-" or size < 0:
            raise Error("New image size must be positive")
        resize(arg.path, size, shrink=args.shrink, format=arg.format, passphrase=arg.passphrase,
               header=arg.header, backing_passphrase=arg.backing_passphrase)
    finally:
        store.close()
    if not args.quiet:
        sys.stdout.write("Image resized.\n")
    return 0


def _size(text):
    try:
        return common.parse_size(text)
    except Error:                           # qemu-img's words, then what it takes
        raise Error("Parameter 'size' expects a non-negative number below 2^64\n"
                    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                    "and exabytes, respectively.") from None


def _virtual_size(arg):
    from ..info_report import image_info
    fmt = {"luks2": "luks"}.get(arg.format, arg.format)
    return image_info(arg.path, format=fmt)["virtual-size"]


def register(sub):
    p = common.add_command(
        sub, "resize", "change an image's virtual size (qemu-img resize)",
        "Grow (or with --shrink shrink) a qcow2 image, a raw file or a LUKS volume, as qemu-img "
        "resize does; no key is needed.  A qcow2 image keeps its snapshots; over a backing file "
        "the grown range reads as zeros.  Shrinking gives back every cluster past the new end: "
        "the data there is lost.  A block device is never resized.",
        ["pyqcrypt resize disk.qcow2 +10G",
         "pyqcrypt resize --shrink disk.qcow2 20G",
         "pyqcrypt resize -f luks vol.luks 2G"])
    common.add_object_option(p)
    p.add_argument("--image-opts", action="store_true",
                   help="FILENAME is an option list: driver=qcow2|luks|raw,file.filename=PATH,...")
    p.add_argument("-f", "--format", choices=("qcow2", "luks", "luks2", "raw"),
                   help="the image's format (default: probed)")
    p.add_argument("--preallocation", metavar="MODE",
                   help="only off: pyqcrypt grows images sparse")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--shrink", action="store_true",
                   help="allow a smaller size (the data past the new end is lost)")
    p.add_argument("filename", help="the image to resize")
    p.add_argument("size", help="the new size, or +SIZE / -SIZE relative to the current one "
                                "(put -- before a negative one)")
    p.set_defaults(func=cmd_resize)
