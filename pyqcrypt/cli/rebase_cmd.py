# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt rebase`` and ``pyqcrypt commit``: qemu-img's syntax, output
and exit codes over ``pyqcrypt.rebase`` and ``pyqcrypt.commit``.

``rebase [--object OBJ] [--image-opts] [-U] [-q] [-f FMT] [-t CACHE]
[-T SRC_CACHE] [-p] [-u] -b BACKING [-F BACKING_FMT] FILENAME``

``commit [--object OBJ] [--image-opts] [-q] [-f FMT] [-t CACHE] [-b BASE]
[-d] [-p] FILENAME``: prints "Image committed." as qemu-img does.

Secrets: ``--image-opts driver=qcow2,file.filename=X,encrypt.key-secret=s0,
backing.encrypt.key-secret=s1,...`` names one per layer.  A safe rebase
onto a file of the old chain reads it with that layer's secret.
"""

import sys

from ..errors import Error
from . import common, image_args


def _image(args, store):
    arg = image_args.resolve(args.filename, args.image_opts, args.format, store)
    if arg.format not in (None, "qcow2"):
        raise Error("Could not change the backing file to '%s': Operation not supported"
                    % (getattr(args, "backing", None) or ""))
    return arg


def _progress(args):
    if not args.progress or args.quiet:
        return None, None
    from .compare_cmd import Progress
    bar = Progress(True)
    bar.add(0)
    state = {"done": 0}

    def advance(done, total):          # Progress adds steps: give it the step
        if not total:
            bar.add(100)
        elif done > state["done"]:
            bar.tick(done - state["done"], total)
            state["done"] = done
    return bar, advance


class QemuProgress:
    """util/qemu-progress.c's arithmetic (C floats; printed when it moved
    by more than 2 points, or at 0 and 100), for rebase's steps."""

    def __init__(self):
        self.current = self.last_print = 0.0

    def show(self, delta, scale):
        """qemu_progress_print(delta, scale): scale 0 sets *delta*."""
        from .compare_cmd import _f32
        current = delta if scale == 0 else _f32(self.current + _f32(_f32(delta / 100) * scale))
        current = min(current, 100.0)
        self.current = current
        if current > _f32(self.last_print + 2.0) or current < _f32(self.last_print - 2.0) or \
                current in (0.0, 100.0):
            self.last_print = current
            sys.stdout.write("    (%3.2f/100%%)\r" % current)
            sys.stdout.flush()


def _rebase_progress(args):
    """(start, step callback, finish) drawing -p as qemu-img rebase does:
    each step of the library adds 100 / (size / min(size, 2 MiB))."""
    if not args.progress or args.quiet:
        return (lambda: None), None, (lambda: None)
    from .compare_cmd import _f32
    bar = QemuProgress()

    def step(_done, size):
        bar.show(_f32(100.0 / (size // min(size, 2 << 20))), 100)

    def finish():
        bar.show(100.0, 0)
        sys.stdout.write("\n")
    return (lambda: bar.show(0.0, 100)), step, finish


def _new_chain_secrets(arg, backing):
    """The secrets of the new backing chain: those of the old chain's
    layer that is the same file, from there down (None: none known)."""
    from ..image import backing_path
    from ..rebasing import backing_layers, same_file
    secrets = arg.backing_passphrase
    if not backing or not isinstance(secrets, list):
        return None
    target = backing_path(arg.path, backing)
    for depth, (layer, _) in enumerate(backing_layers(arg.path)):
        if same_file(layer, target):
            return secrets[depth:] or None
    return None


def cmd_rebase(args):
    from ..rebasing import RebaseRequest, run_rebase
    if args.backing is None and not args.unsafe:
        raise Error("Must specify backing file (-b) or use unsafe mode (-u)")
    store = common.secret_store(args)
    start, step, finish = _rebase_progress(args)
    try:
        start()
        arg = _image(args, store)
        backing = args.backing or ""
        if backing:
            from ..device_names import warn_unstable
            from ..qcow2.open import backing_path
            warn_unstable(backing_path(arg.path, backing), "backing file")
        request = RebaseRequest(backing, args.backing_format, args.unsafe, arg.passphrase,
                                arg.backing_passphrase, _new_chain_secrets(arg, backing),
                                step, args.force_share)
        run_rebase(arg.path, request)
        finish()
    finally:
        store.close()
    return 0


def cmd_commit(args):
    from ..committing import CommitRequest, run_commit
    store = common.secret_store(args)
    bar = None
    try:
        arg = image_args.resolve(args.filename, args.image_opts, args.format, store)
        if arg.format not in (None, "qcow2"):
            raise Error("Image does not have a backing file")
        bar, progress = _progress(args)
        # qemu-img: -b implies -d (only the top's own backing file could
        # take its emptied clusters' place)
        request = CommitRequest(args.base, not (args.keep or args.base is not None),
                                arg.passphrase, arg.backing_passphrase, progress)
        run_commit(arg.path, request)
    finally:
        store.close()
        if bar is not None:
            bar.end()
    if not args.quiet:
        sys.stdout.write("Image committed.\n")
    return 0


def _common_options(p):
    common.add_object_option(p)
    p.add_argument("--image-opts", action="store_true",
                   help="FILENAME is an option list: driver=qcow2,file.filename=PATH,"
                        "encrypt.key-secret=ID,backing.encrypt.key-secret=ID,...")
    p.add_argument("-f", "--format", dest="format", metavar="FMT",
                   help="the image's format (qcow2)")
    p.add_argument("-t", dest="cache", metavar="CACHE",
                   help="qemu-img's cache mode: accepted, no effect")
    p.add_argument("-p", "--progress", action="store_true", help="show progress on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def register(sub):
    p = common.add_command(
        sub, "rebase", "change a qcow2 image's backing file (qemu-img rebase)",
        "Give a qcow2 image another backing file, as qemu-img rebase does.  Safe mode (the "
        "default) keeps what the guest sees: wherever the image reads through to its backing "
        "chain and the old chain and the new one differ, the old data is copied into the image "
        "(encrypted with its key), then the header names the new backing file.  -b \"\" "
        "copies everything the old chain provides and removes the backing file.  With -u only "
        "the header changes (no data read, no key needed), e.g. after moving or renaming the "
        "backing file.  A backing file needs its format (-F), as in qemu-img 7.2.",
        ["pyqcrypt rebase -b base.qcow2 -F qcow2 top.qcow2",
         "pyqcrypt rebase -u -b /new/place/base.qcow2 -F qcow2 top.qcow2",
         "pyqcrypt rebase -b \"\" top.qcow2      # flatten",
         "pyqcrypt rebase --object secret,id=s0,file=pw --object secret,id=s1,file=pw1 "
         "--image-opts -b base.qcow2 -F qcow2 "
         "driver=qcow2,file.filename=top.qcow2,encrypt.key-secret=s0,"
         "backing.encrypt.key-secret=s1"])
    _common_options(p)
    p.add_argument("-U", "--force-share", action="store_true",
                   help="read the new backing file without QEMU's lock (the image and its "
                        "old chain are locked as usual)")
    p.add_argument("-T", dest="src_cache", metavar="SRC_CACHE",
                   help="qemu-img's cache mode for the backing files: accepted, no effect")
    p.add_argument("-u", dest="unsafe", action="store_true",
                   help="unsafe: change only the header (no data copied, no key needed)")
    p.add_argument("-b", dest="backing", metavar="BACKING_FILE",
                   help="the new backing file (\"\": none), stored as given; a relative name is "
                        "found from the image's directory")
    p.add_argument("-F", dest="backing_format", metavar="BACKING_FMT",
                   help="the new backing file's format (qcow2, raw, luks, ...)")
    p.add_argument("filename", help="the qcow2 image to rebase")
    p.set_defaults(func=cmd_rebase)
    _register_commit(sub)


def _register_commit(sub):
    p = common.add_command(
        sub, "commit", "write a qcow2 image's changes into its backing file (qemu-img commit)",
        "Write every cluster a qcow2 image allocates into its backing file, as qemu-img commit "
        "does, then empty the image (unless -d), so that it reads its backing file again.  "
        "With -b BASE the data goes into that layer further down the chain, together with what "
        "the layers in between hold, and nothing is emptied (as qemu-img: -b implies -d).  An "
        "encrypted layer written or read needs its secret (--image-opts "
        "backing.encrypt.key-secret=ID, backing.backing.encrypt.key-secret=ID, ...).",
        ["pyqcrypt commit top.qcow2",
         "pyqcrypt commit -d top.qcow2          # keep top.qcow2's clusters",
         "pyqcrypt commit -b base.qcow2 top.qcow2",
         "pyqcrypt commit --object secret,id=s0,file=pw --object secret,id=s1,file=pw1 "
         "--image-opts driver=qcow2,file.filename=top.qcow2,encrypt.key-secret=s0,"
         "backing.encrypt.key-secret=s1"])
    _common_options(p)
    p.add_argument("-b", dest="base", metavar="BASE",
                   help="the layer of the backing chain to commit into (default: the backing "
                        "file); implies -d")
    p.add_argument("-d", dest="keep", action="store_true",
                   help="keep the image's clusters (do not empty it)")
    p.add_argument("-r", dest="rate_limit", metavar="RATE",
                   help="qemu-img's rate limit: accepted, no effect")
    p.add_argument("filename", help="the qcow2 image to commit")
    p.set_defaults(func=cmd_commit)
