# SPDX-License-Identifier: LGPL-2.1-or-later
"""The qemu-img commands that inspect an image: info and check (with
check's repairs, -r leaks|all).

Both take the image as qemu-img does (a filename, a ``json:{...}``
filename, or ``--image-opts`` with ``--object`` secrets; ``-f``; ``-U``),
resolved by ``image_args.py``.  Output, streams and exit codes are
qemu-img 7.2's: check prints its per-item findings on stderr and the
summary on stdout and exits 0 clean, 1 when the check could not complete,
2 with corruptions, 3 with leaks only, 63 for a format without checks.
"""

import os
import sys

from ..errors import Error
from . import common, image_args

EXIT_NO_CHECKS = 63          # qemu-img check: the format has no consistency checks


def cmd_info(args):
    from ..info_report import as_json, chain_info, human, image_info
    from .qemu_cmds import _forced_format
    # qemu-img info opens the image without I/O and without its backing file:
    # no key is looked up or tried, and options for the backing are refused
    opts = common.image_options(args.filename, args.image_opts) or {}
    for key in opts:
        if key.startswith("backing."):
            raise Error("Could not open '%s': Block format '%s' does not support the option '%s'"
                        % (args.filename, opts.get("driver", "qcow2"), key))
    arg = image_args.resolve(args.filename, args.image_opts, args.format, image_args.NO_SECRETS,
                             args.force_share)
    fmt = _forced_format(arg.path, arg.format)
    name = image_args.display_name(args.filename, args.image_opts)
    if args.backing_chain:
        chain = chain_info(arg.path, force_share=args.force_share, format=fmt)
        chain[0]["filename"] = name
        if args.output == "json":
            import json
            sys.stdout.write(json.dumps(chain, indent=4) + "\n")
        else:
            sys.stdout.write("\n".join(human(info) for info in chain))
        return 0
    info = image_info(arg.path, force_share=args.force_share, format=fmt)
    info["filename"] = name
    sys.stdout.write(as_json(info) if args.output == "json" else human(info))
    return 0


def cmd_check(args):
    from ..qcow2.repair import parse_fix
    fix = parse_fix(args.repair) if args.repair is not None else 0
    common.check_cache_mode(args.cache, source=True)
    store = common.secret_store(args)
    try:
        arg = image_args.resolve(args.filename, args.image_opts, args.format, store,
                                 args.force_share)
        if fix and args.force_share:
            raise Error("Could not open '%s': force-share=on can only be used with read-only "
                        "images" % args.filename)
        return _check(args, arg, fix)
    finally:
        store.close()


def _check(args, arg, fix):
    from ..image import probe
    if not os.path.exists(arg.path):
        raise Error("cannot open %s: No such file or directory" % arg.path)
    qcow2 = probe(arg.path) == "qcow2"
    if arg.format == "qcow2" and not qcow2:
        raise Error("%s is not in qcow2 format" % arg.path)
    opts = common.image_options(args.filename, args.image_opts)
    if opts is not None and (arg.format in ("luks", "luks2") or arg.passphrase is not None
                             or arg.backing_passphrase):
        _unlock(args, arg, qcow2)
    if not qcow2 or arg.format in ("raw", "luks", "luks2"):
        # qemu-img's answer and exit status for a format without checks
        sys.stderr.write("pyqcrypt: This image format does not support checks\n")
        return EXIT_NO_CHECKS
    first, second = _run_check(arg, fix)
    return _report(args, first, second)


def _unlock(args, arg, qcow2):
    """qemu-img check opens the image (and its backing chain) with the
    keys given: a LUKS volume without key-secret, or a secret that opens no
    keyslot, fails as qemu-img's.  (Without any key given, pyqcrypt checks
    an encrypted qcow2 image's metadata, which needs none.)"""
    from ..errors import WrongPassphrase
    if arg.passphrase is None and not qcow2:
        raise Error("Could not open '%s': Parameter 'key-secret' is required for cipher"
                    % args.filename)
    try:
        image_args.open_image(arg).close()
    except WrongPassphrase:
        raise Error("Could not open '%s': Invalid password, cannot unlock any keyslot"
                    % args.filename) from None


def _run_check(arg, fix):
    """(the check's CheckResult, the second check's after a repair or
    None), read under QEMU's consistent-read lock (refused while another
    process writes, unless -U), or for a repair under its write lock."""
    from ..locks import lock_image
    from ..qcow2.check import check_qcow2
    from ..qcow2.repair import repair_qcow2
    from ..storage import Storage
    if not fix:
        with Storage(arg.path) as st:
            lock_image(st, mode="read", force_share=arg.force_share)
            return check_qcow2(arg.path), None
    with Storage(arg.path, writable=True) as st:
        lock_image(st, mode="write")
        return repair_qcow2(st, arg.path, fix)


def _report(args, first, second):
    """Print as qemu-img check does: per-item lines on stderr, the summary
    (after a repair: what was repaired, then the second check's) on stdout."""
    final = second if second is not None else first
    final.path = first.path = args.filename
    err = first.stderr()
    out = ""
    if second is not None:
        err = first.preamble + "".join(line + "\n" for line in first.messages) + second.stderr()
        second.leaks_fixed, second.corruptions_fixed = first.leaks_fixed, first.corruptions_fixed
        if args.output != "json":
            out = ("The following inconsistencies were found and repaired:\n\n    %d leaked "
                   "clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n"
                   % (first.leaks_fixed, first.corruptions_fixed))
    out += final.json() if args.output == "json" else final.human()
    sys.stdout.flush()
    sys.stderr.buffer.write(err.encode("utf-8", "surrogateescape"))
    sys.stderr.flush()
    if not args.quiet:
        sys.stdout.buffer.write(out.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    return final.exit_code


def register(sub):
    """Add info and check to the parser *sub*."""
    _register_info(sub)
    _register_check(sub)


def _register_info(sub):
    p = common.add_command(
        sub, "info", "show image information (qemu-img info)",
        "Show what qemu-img info shows of a qcow2 image, a LUKS volume or a raw file (format, "
        "virtual size, encryption, keyslots), in the same words or the same JSON.  No "
        "passphrase is needed: only headers are read (as qemu-img info, which opens the image "
        "without I/O, a secret given with --image-opts is not tried; it only changes the "
        "image's name to qemu-img's json:{...} form).",
        ["pyqcrypt info disk.qcow2",
         "pyqcrypt info --output json --backing-chain overlay.qcow2",
         "pyqcrypt info -U disk.qcow2          # while a QEMU is using it",
         "pyqcrypt info --object secret,id=s0,file=pass.txt \\",
         "    --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=s0"])
    p.add_argument("--output", choices=("human", "json"), default="human",
                   help="output format: human (default) or json")
    image_args.add_image_options(
        p, "read the image as this format; raw shows any file as raw bytes")
    p.add_argument("--backing-chain", action="store_true",
                   help="also show every image below, as qemu-img info --backing-chain")
    p.add_argument("filename", help="the image to describe (or its options with --image-opts)")
    p.set_defaults(func=cmd_info)


def _register_check(sub):
    p = common.add_command(
        sub, "check", "check or repair a qcow2 image's consistency (qemu-img check)",
        "Check a qcow2 image's metadata as qemu-img check does: every cluster in use is "
        "counted against its refcount, and the COPIED flags against the refcounts.  Exit "
        "status: 0 clean, 2 corruptions, 3 leaked clusters only, 1 the check could not run, "
        "63 a format without checks (raw, luks).  With -r leaks, refcounts above the "
        "references are lowered; with -r all, refcounts below them are also raised and COPIED "
        "flags set right; then the image is checked again and that result decides the exit "
        "status, as qemu-img does.  What qemu-img repairs by rebuilding the refcount structure "
        "or rewriting other metadata is refused before anything is written.  A repair needs "
        "QEMU's write lock: an image in use is refused.",
        ["pyqcrypt check disk.qcow2",
         "pyqcrypt check --output json disk.qcow2",
         "pyqcrypt check -r leaks disk.qcow2",
         "pyqcrypt check -q -r all disk.qcow2 || echo \"still damaged: $?\"",
         "pyqcrypt check --object secret,id=s0,file=pass.txt \\",
         "    --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=s0"])
    p.add_argument("--output", choices=("human", "json"), default="human",
                   help="output format: human (default) or json")
    image_args.add_image_options(p, "the image's format; only qcow2 has checks")
    p.add_argument("-r", dest="repair", metavar="leaks|all",
                   help="repair: leaks (lower refcounts above the references) or all (also "
                        "raise refcounts below them and fix COPIED flags)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on stdout; the exit status tells the result (the "
                        "per-item findings still go to stderr, as with qemu-img)")
    p.add_argument("-T", dest="cache", metavar="SRC_CACHE",
                   help="qemu-img's cache mode (none, writeback, writethrough, directsync, "
                        "unsafe): accepted and checked for compatibility, but changes nothing, "
                        "as pyqcrypt has no block cache and syncs its repairs itself")
    p.add_argument("filename", help="the qcow2 image to check (or its options with --image-opts)")
    p.set_defaults(func=cmd_check)
