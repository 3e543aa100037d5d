# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt compare``: qemu-img compare's messages, progress line and
exit statuses (0 identical, 1 different, 2 an image could not be opened,
3 a block status query failed, 4 a read failed), over pyqcrypt's
readers (pyqcrypt.compare_images); ``--ciphertext`` compares the stored
ciphertext of a keep-ciphertext pair instead (pyqcrypt.compare_ciphertext)."""

import struct
import sys

from ..errors import Error
from . import common, image_args


def register(sub):
    p = common.add_command(
        sub, "compare", "compare two images' contents (qemu-img compare)",
        "Compare what two images read as, the way qemu-img compare does: ranges both report "
        "as zeros are skipped, the rest is read and compared; images of different sizes are "
        "identical when the excess of the larger one reads as zeros.  Exit status 0: "
        "identical, 1: different, 2: an image cannot be opened.  With --ciphertext, the "
        "stored ciphertext of a LUKS volume and of a qcow2-luks image with a raw data file "
        "(a keep-ciphertext pair) is compared, and their headers' key facts, without a "
        "passphrase.",
        ["pyqcrypt compare disk.qcow2 disk.raw",
         "pyqcrypt compare -s -f qcow2 -F raw disk.qcow2 disk.raw",
         "pyqcrypt compare --object secret,id=s0,file=pass.txt --image-opts \\",
         "    driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=s0 driver=raw,file.filename=disk.raw",
         "pyqcrypt compare --ciphertext vol.luks disk.qcow2"])
    image_args.add_image_options(p, "the first image's format (default: probed)")
    p.add_argument("-F", dest="format2", choices=("qcow2", "luks", "luks2", "raw"),
                   help="the second image's format (default: probed)")
    p.add_argument("-s", "--strict", action="store_true",
                   help="strict: images of different sizes, or allocated differently, differ")
    p.add_argument("-p", "--progress", action="store_true", help="show progress")
    common.add_cache_option(p, "-T", "cache", source=True)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing, only the exit status")
    p.add_argument("--ciphertext", action="store_true",
                   help="compare the stored ciphertext of a keep-ciphertext pair (a LUKS volume "
                        "and a qcow2-luks image with data_file_raw=on), no passphrase needed")
    p.add_argument("image1", help="the first image")
    p.add_argument("image2", help="the second image")
    p.set_defaults(func=_cmd_compare)


def _f32(value):
    """*value* rounded to a C float, as qemu-img's progress arithmetic is."""
    return struct.unpack("f", struct.pack("f", value))[0]


class Progress:
    """qemu-img's progress line (util/qemu-progress.c): printed on stdout
    when it moved by more than 2 points, in float arithmetic."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.current = self.last_print = 0.0

    def add(self, percent):
        current = _f32(self.current + _f32(_f32(percent / 100) * 100))
        self.current = current
        if current > _f32(self.last_print + 2.0) or current < _f32(self.last_print - 2.0) or \
                current in (0.0, 100.0):
            self.last_print = current
            if self.enabled:
                sys.stdout.write("    (%3.2f/100%%)\r" % current)
                sys.stdout.flush()

    def tick(self, done, total):
        self.add(_f32(_f32(_f32(done) / _f32(total)) * 100))

    def end(self):
        if self.enabled:
            sys.stdout.write("\n")


def _cmd_compare(args):
    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    progress = Progress(args.progress and not args.quiet)
    try:
        common.check_cache_mode(args.cache, source=True)
        if args.ciphertext:
            from ..compare_ciphertext import compare_ciphertext
            return compare_ciphertext(args.image1, args.image2, say, args.strict, args.force_share)
        return _compare(args, say, progress)
    except Error as exc:
        print("pyqcrypt: %s" % exc, file=sys.stderr)
        return getattr(exc, "status", 2)
    except OSError as exc:
        print("pyqcrypt: %s" % exc, file=sys.stderr)
        return 2
    finally:
        progress.end()


def _compare(args, say, progress):
    from ..compare_images import CompareRequest, compare_images
    store = common.secret_store(args)
    opened = []
    try:
        for text, fmt in ((args.image1, args.format), (args.image2, args.format2)):
            arg = image_args.resolve(text, args.image_opts, fmt, store, args.force_share)
            opened.append(image_args.open_image(arg))
    except BaseException:
        for img in opened:
            img.close()
        raise
    finally:
        store.close()
    a, b = opened
    with a, b:
        progress.add(0)
        req = CompareRequest(a, b, args.image1, args.image2, args.strict, say, progress.tick)
        return compare_images(req)
