# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt convert``: qemu-img convert's syntax over pyqcrypt.conversion.

Source secrets come from ``--image-opts`` (``driver=luks,file.filename=X,
key-secret=ID[,header=HDR]`` or ``driver=qcow2,file.filename=X,
encrypt.key-secret=ID``); target encryption from ``-o encrypt.*`` (qcow2)
or ``-o key-secret=...`` (luks).  ``--keep-ciphertext`` moves ciphertext
without decrypting it.
"""

import sys

from ..errors import Error
from . import common

_QCOW2_OPTS = {"encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg", "encrypt.cipher-mode",
               "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time",
               "cluster_size", "refcount_bits", "compat", "data_file", "data_file_raw",
               "data_file_existing", "preallocation", "extended_l2"}
_SOURCE_IMAGE_OPTS = {"qcow2": {"encrypt.key-secret", "encrypt.format", "file.driver"},
                      "luks": {"key-secret", "header", "file.driver"},
                      "raw": {"file.driver"}}
_LUKS_OPTS = {"key-secret", "cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg", "hash-alg",
              "iter-time", "header"}
# LUKS2 targets (-O luks2, or -O luks --type luks2) take cryptsetup's settings too.
_LUKS2_OPTS = _LUKS_OPTS | {"sector-size", "pbkdf", "pbkdf-memory", "pbkdf-parallel",
                            "pbkdf-force-iterations", "label", "uuid"}


# What --keep-ciphertext can honour: the ciphertext fixes the cipher, mode,
# IV generator and key, so options about those are refused by name.
_KEEP_QCOW2_OPTS = {"cluster_size", "data_file", "data_file_raw", "data_file_existing",
                    "encrypt.format", "encrypt.key-secret", "encrypt.iter-time", "compat",
                    "extended_l2"}
_KEEP_LUKS2_OPTS = {"header", "key-secret", "iter-time", "hash-alg", "pbkdf", "pbkdf-memory",
                    "pbkdf-parallel", "pbkdf-force-iterations", "label", "uuid", "sector-size"}


def _refuse_unkept(opts, allowed, where):
    """--keep-ciphertext: every option outside *allowed* is refused, named."""
    extra = sorted(k for k in opts if k not in allowed)
    if extra:
        raise Error("--keep-ciphertext %s cannot honour %s: the ciphertext keeps the source's "
                    "cipher and key (convert re-encrypting, without --keep-ciphertext, to change "
                    "them)" % (where, ", ".join(extra)))
    if opts.get("data_file_raw", "on") not in ("on", "true", "yes"):
        raise Error("--keep-ciphertext needs data_file_raw=on (it is the payload as it is)")
    if opts.get("compat", "1.1") not in ("1.1", "v3"):
        raise Error("--keep-ciphertext needs compat=1.1 (external data files are qcow2 v3)")


def _progress():
    """-p as qemu-img draws it: 0.00 before any work, a line per step of
    at least 1%, and at the end the final figure once more with a newline
    (an empty image shows only the 0.00 and the final line)."""
    state = {"last": None, "done": False}

    def line(pct, end="\r"):
        sys.stdout.write("    (%.2f/100%%)%s" % (pct, end))

    def show(done, total):
        if state["done"]:
            return
        if state["last"] is None:
            line(0.0)
            state["last"] = 0.0
        pct = 100.0 * done / total if total else 100.0
        if total and (pct - state["last"] >= 1.0 or (done == total and state["last"] != pct)):
            line(pct)
            state["last"] = pct
        if done == total:
            line(100.0, "\r\n")
            state["done"] = True
        sys.stdout.flush()
    return show


def cmd_convert(args):
    from ..conversion import convert
    from ..secrets import parse_options
    from . import option_help
    if option_help.wants_help(args.options):
        return option_help.show("convert", args.output_format or "raw", len(args.paths) > 1)
    _check_qemu_compat(args)
    if not 1 <= len(args.paths) <= 2:
        raise Error("convert needs SOURCE and DESTINATION")
    args.source = args.paths[0]
    args.destination = args.paths[1] if len(args.paths) > 1 else None
    store = common.secret_store(args)
    try:
        src, src_opts, src_secret, src_backing = _source(args, store)
        if args.target_image_opts:
            return _convert_into_image(args, store, src, src_opts, src_secret, src_backing)
        opts = {}
        for text in args.options or []:
            opts.update(parse_options(text))
        out_fmt = args.output_format or "raw"
        if args.type is not None:
            if out_fmt not in ("luks", "luks2"):
                raise Error("--type %s applies to a LUKS destination (-O luks)" % args.type)
            out_fmt = "luks2" if args.type == "luks2" else "luks"
        kw = dict(dst_format=out_fmt, keep_ciphertext=args.keep_ciphertext, src_passphrase=src_secret,
                  src_header=src_opts.get("header"), src_format=args.format if args.format != "raw" else None,
                  progress=_progress() if args.progress else None)
        if out_fmt == "qcow2":
            kw.update(_qcow2_target(args, opts, store))
        elif out_fmt in ("luks", "luks2"):
            kw.update(_luks_target(args, opts, store, out_fmt == "luks2"))
        elif out_fmt != "raw":
            raise Error("unknown output format %r (qcow2, luks, raw)" % out_fmt)
        dst = args.destination
        if dst is None:
            if not (args.keep_ciphertext and out_fmt in ("luks", "luks2") and kw.get("dst_header")):
                raise Error("a destination file is needed")
            dst = kw["dst_header"]
        kw.update(allow_insecure=args.allow_insecure, existing_target=args.no_create,
                  force_share=args.force_share, src_backing_passphrase=src_backing,
                  verify=args.verify)
        _warn_device_names(dst, kw)
        payload = convert(src, dst, **kw)
        if payload and kw.get("dst_header") and not args.quiet:
            print("header written to %s; its payload is %s" % (kw["dst_header"], payload))
    finally:
        store.close()
    return 0


def _source(args, store):
    """(path, its --image-opts, its secret, its backing layers' secrets)."""
    src, src_backing = args.source, None
    src_opts = common.image_options(args.source, args.image_opts)
    if src_opts is None:
        src_opts = {}
    else:
        src = src_opts.pop("file.filename", None)
        if not src:
            raise Error("--image-opts needs file.filename=PATH")
        driver = src_opts.pop("driver", None)
        src_backing = common.pop_backing_secrets(src_opts, store)
        common.check_options(src_opts, _SOURCE_IMAGE_OPTS.get(driver, ()),
                             "--image-opts (driver=%s)" % driver)
        if args.format is None and driver:
            args.format = driver
    sid = src_opts.get("key-secret") or src_opts.get("encrypt.key-secret")
    secret = store.get(sid) if sid else None
    carry = getattr(args, "carry_secret", None) or []
    if carry:
        if not args.keep_ciphertext or secret is None:
            raise Error("--carry-secret adds passphrases to a keep-ciphertext conversion of a LUKS2 "
                        "volume; give the source's own secret with --image-opts ...,key-secret=ID "
                        "and --keep-ciphertext")
        secret = [secret] + [store.get(c) for c in carry]
    return src, src_opts, secret, src_backing


def _warn_device_names(dst, kw):
    """Warn when the new image records a data file, or its detached header
    is written, under a kernel device name that may change at reboot."""
    from ..device_names import warn_unstable
    from ..qcow2.open import backing_path
    data_file = kw.get("data_file") or (kw.get("qcow2_options") or {}).get("data_file")
    if data_file:
        warn_unstable(backing_path(dst, data_file), "data file")
    warn_unstable(kw.get("dst_header"), "detached LUKS header")


def _qcow2_target(args, opts, store):
    """convert()'s keywords for -O qcow2 from the -o options."""
    from ..crypto import CipherSpec
    common.check_options(opts, _QCOW2_OPTS, "format qcow2")
    if opts.get("preallocation", "off") != "off":
        raise Error("preallocation=%s is not supported (only off)" % opts["preallocation"])
    kw = {}
    if "cluster_size" in opts:
        kw["cluster_size"] = common.parse_size(opts["cluster_size"])
    extended_l2 = common.parse_bool(opts.get("extended_l2", "off"), "extended_l2")
    if args.keep_ciphertext:
        if extended_l2:
            raise Error("--keep-ciphertext maps the LUKS payload as a raw external data "
                        "file (data_file_raw), which extended L2 entries cannot describe; "
                        "convert without extended_l2=on")
        _refuse_unkept(opts, _KEEP_QCOW2_OPTS, "-O qcow2")
        if opts.get("encrypt.format", "luks") != "luks":
            raise Error("--keep-ciphertext keeps LUKS encryption: encrypt.format=%s cannot be "
                        "honoured" % opts["encrypt.format"])
        if "encrypt.key-secret" in opts:
            kw["dst_passphrase"] = store.get(opts["encrypt.key-secret"])
        kw["data_file"] = opts.get("data_file")
        kw["data_file_existing"] = common.parse_bool(opts.get("data_file_existing", "off"),
                                                     "data_file_existing")
        if "encrypt.iter-time" in opts:     # the LUKS1 keyslots a LUKS2 source's key gets
            kw["iter_time_ms"] = common.parse_int(opts["encrypt.iter-time"], "encrypt.iter-time", 1)
        return kw
    if opts.get("encrypt.format") not in (None, "luks"):
        raise Error("conversion writes LUKS encryption only (encrypt.format=luks)")
    if "encrypt.key-secret" in opts:
        kw["dst_passphrase"] = store.get(opts["encrypt.key-secret"])
        kw["spec"] = CipherSpec.from_qemu(
            opts.get("encrypt.cipher-alg", "aes-256"), opts.get("encrypt.cipher-mode", "xts"),
            opts.get("encrypt.ivgen-alg", "plain64"), opts.get("encrypt.ivgen-hash-alg"))
        if "encrypt.iter-time" in opts:
            kw["iter_time_ms"] = common.parse_int(opts["encrypt.iter-time"], "encrypt.iter-time", 1)
    q = {}
    if "data_file" in opts:
        q["data_file"] = opts["data_file"]
        q["data_file_raw"] = common.parse_bool(opts.get("data_file_raw", "off"), "data_file_raw")
    if "refcount_bits" in opts:
        q["refcount_bits"] = common.parse_int(opts["refcount_bits"], "refcount_bits")
    if "compat" in opts:
        q["compat"] = opts["compat"]
    if extended_l2:
        q["extended_l2"] = True
    kw["qcow2_options"] = q
    return kw


def _luks_target(args, opts, store, luks2=False):
    """convert()'s keywords for -O luks (or luks2) from the -o options."""
    from ..crypto import CipherSpec
    common.check_options(opts, _LUKS2_OPTS if luks2 else _LUKS_OPTS,
                         "format luks2" if luks2 else "format luks")
    kw = {"dst_header": args.header or opts.get("header")}
    if luks2:
        kw["luks2_request"] = common.luks2_request_from_options(opts)
    if args.keep_ciphertext:
        _refuse_unkept(opts, _KEEP_LUKS2_OPTS if luks2 else {"header"},
                       "-O luks2" if luks2 else "-O luks")
        if luks2 and "key-secret" in opts:
            kw["dst_passphrase"] = store.get(opts["key-secret"])
        return kw
    if "key-secret" not in opts:
        raise Error("-O luks needs -o key-secret=ID")
    kw["dst_passphrase"] = store.get(opts["key-secret"])
    kw["spec"] = CipherSpec.from_qemu(opts.get("cipher-alg", "aes-256"),
                                      opts.get("cipher-mode", "xts"),
                                      opts.get("ivgen-alg", "plain64"),
                                      opts.get("ivgen-hash-alg"))
    if "iter-time" in opts:
        kw["iter_time_ms"] = common.parse_int(opts["iter-time"], "iter-time", 1)
    if "hash-alg" in opts:
        kw["hash_name"] = opts["hash-alg"]
    if luks2:
        kw["luks2_request"].spec = kw["spec"].check()
    return kw


def _target_options(args, store):
    """--target-image-opts (qemu-img's meaning): DESTINATION is the option
    string of an existing image, opened as it says and written through its
    own header.  Returns (path, driver, passphrase, header)."""
    from ..secrets import parse_options
    if not args.no_create:
        raise Error("--target-image-opts needs -n: the target is an existing image, opened with "
                    "its options (as qemu-img requires)")
    if args.destination is None:
        raise Error("a destination is needed: driver=FMT,file.filename=PATH,...")
    if args.keep_ciphertext or args.header or args.options:
        raise Error("--target-image-opts writes through the target's own header: --keep-ciphertext, "
                    "--header and -o (options for a new image) do not apply")
    opts = parse_options(args.destination)
    path = opts.pop("file.filename", None)
    if not path:
        raise Error("--target-image-opts needs file.filename=PATH")
    driver = opts.pop("driver", None)
    if driver not in _SOURCE_IMAGE_OPTS:
        raise Error("--target-image-opts needs driver=qcow2, driver=luks or driver=raw")
    if args.output_format not in (None, driver):
        raise Error("-O %s contradicts the target's driver=%s" % (args.output_format, driver))
    common.check_options(opts, _SOURCE_IMAGE_OPTS[driver] - {"encrypt.format"},
                         "--target-image-opts (driver=%s)" % driver)
    sid = opts.get("key-secret") or opts.get("encrypt.key-secret")
    return path, driver, store.get(sid) if sid else None, opts.get("header")


def _convert_into_image(args, store, src, src_opts, src_secret, src_backing):
    """qemu-img convert -n --target-image-opts: every byte of the source,
    zeros included (the target's old bytes must go), written into the
    existing target image through its header; then read back with
    --verify."""
    from ..conversion import check_apart, copy_image, source_files
    from ..image import open_image
    dst, driver, dst_secret, dst_header = _target_options(args, store)
    check_apart([dst, dst_header], source_files(src, src_opts.get("header")))
    with open_image(src, passphrase=src_secret, header=src_opts.get("header"), format=args.format,
                    force_share=args.force_share, backing_passphrase=src_backing) as src_img, \
            open_image(dst, passphrase=dst_secret, writable=True, header=dst_header,
                       format=driver) as dst_img:
        if dst_img.size < src_img.size:
            raise Error("%s holds %d bytes, the source %d: the target is too small"
                        % (dst, dst_img.size, src_img.size))
        # Every byte, zeros included (the target's old bytes must go),
        # unless --target-is-zero says the target already reads as zeros.
        copy_image(src_img, dst_img, _progress() if args.progress else None,
                   sparse=args.target_is_zero)
        dst_img.flush()
        if args.verify:
            chunk = 1 << 20
            for pos in range(0, src_img.size, chunk):
                n = min(chunk, src_img.size - pos)
                if src_img.read(pos, n) != dst_img.read(pos, n):
                    raise Error("verification failed: %s differs from the source in bytes %d..%d"
                                % (dst, pos, pos + n))
    return 0


def register(sub):
    p = common.add_command(
        sub, "convert", "convert images (qemu-img convert), optionally keeping the ciphertext",
        "Convert between raw, LUKS1 and qcow2 (plain or LUKS-encrypted) with qemu-img convert's "
        "syntax.  Source secrets come with --image-opts (key-secret=ID, or encrypt.key-secret=ID "
        "for qcow2), target encryption with -o.  --keep-ciphertext moves a LUKS1 volume into a "
        "qcow2-luks image (and back) without decrypting it and without the passphrase (a LUKS2 "
        "volume with 512-byte sectors needs its passphrase).  LUKS2 sources convert "
        "re-encrypting with any sector size.  A "
        "destination is always created new unless -n.",
        ["pyqcrypt convert --keep-ciphertext -O qcow2 vol.luks disk.qcow2",
         "pyqcrypt convert --object secret,id=s0,file=pass.txt \\",
         "    --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=s0 -O raw disk.raw",
         "pyqcrypt convert --object secret,id=s0,file=pass.txt -O qcow2 \\",
         "    -o encrypt.format=luks,encrypt.key-secret=s0 disk.raw disk.qcow2",
         "pyqcrypt convert -n --object secret,id=s0,file=pass.txt disk.raw \\",
         "    --target-image-opts driver=luks,file.filename=vol.luks,key-secret=s0"])
    _add_run_options(p)
    _add_image_options(p)
    _add_keep_ciphertext_options(p)
    _add_qemu_compat_options(p)
    p.add_argument("--allow-insecure", action="store_true",
                   help="allow weak target ciphers (ECB, CBC with plain IVs)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("paths", nargs="*", metavar="SOURCE [DESTINATION]",
                   help="the image to read and the one to write")
    # argparse parses positionals in runs between options; the CLI's main()
    # hands the leftovers of later runs back to this list.
    p.set_defaults(func=cmd_convert, collect_paths=True)


# qemu-img convert options pyqcrypt refuses, each with its reason.
_REFUSED = (
    ("compress", "-c", "pyqcrypt does not write compressed clusters"),
    ("backing", "-B", "pyqcrypt writes whole images, never an overlay over a backing file"),
    ("backing_format", "-F", "it goes with -B, which pyqcrypt does not support"),
    ("sparse_size", "-S", "pyqcrypt finds zeros in 64 KiB grains and always keeps a new image "
                          "sparse; the grain cannot be changed"),
    ("copy_offload", "-C", "copy offloading is not implemented; pyqcrypt copies through its "
                           "own pipeline (drop -C)"),
    ("snapshot", "-l", "pyqcrypt does not read internal snapshots"),
    ("rate_limit", "-r", "rate limiting is not implemented"),
    ("salvage", "--salvage", "pyqcrypt stops at the first read error rather than writing zeros "
                             "where the source cannot be read"),
    ("bitmaps", "--bitmaps", "pyqcrypt does not copy persistent dirty bitmaps"),
    ("skip_broken_bitmaps", "--skip-broken-bitmaps",
     "pyqcrypt does not copy persistent dirty bitmaps"),
)


def _check_qemu_compat(args):
    """The qemu-img options pyqcrypt takes without an effect are checked
    as qemu-img checks them; those it does not implement are refused,
    one line naming the option and why."""
    for dest, flag, reason in _REFUSED:
        if getattr(args, dest) not in (None, False):
            raise Error("%s is not supported: %s" % (flag, reason))
    if args.m is not None and not 1 <= args.m <= 16:
        raise Error("Invalid number of coroutines. Allowed number of coroutines is between 1 "
                    "and 16")
    for mode in (args.cache, args.src_cache):
        common.check_cache_mode(mode, source=False)
    if args.target_is_zero:
        if not args.no_create:
            raise Error("--target-is-zero requires use of -n flag")
        if not args.target_image_opts:
            raise Error("--target-is-zero works with -n --target-image-opts (an existing image "
                        "written through its header); -n -O raw or luks always write every byte")


def _add_qemu_compat_options(p):
    """qemu-img convert's options that change nothing here, or that
    pyqcrypt refuses with a reason (they are parsed so that the refusal
    names them)."""
    p.add_argument("-m", type=int, metavar="N",
                   help="parallel requests (1..16, checked as qemu-img does); accepted, no "
                        "effect: pyqcrypt's pipeline sets its own parallelism")
    p.add_argument("-W", action="store_true",
                   help="out-of-order writes; accepted, no effect: pyqcrypt's pipeline always "
                        "issues writes in order")
    p.add_argument("-t", dest="cache", metavar="CACHE",
                   help="target cache mode (%s); accepted, no effect: pyqcrypt writes through "
                        "the page cache and syncs the target before it exits"
                        % ", ".join(common.CACHE_MODES))
    p.add_argument("-T", dest="src_cache", metavar="SRC_CACHE",
                   help="source cache mode; accepted, no effect (the page cache is used)")
    p.add_argument("--target-is-zero", action="store_true",
                   help="with -n --target-image-opts: the target already reads as zeros, so "
                        "zero ranges of the source are not written")
    switches = ("-c", "-C", "--salvage", "--bitmaps", "--skip-broken-bitmaps")
    for dest, flag, reason in _REFUSED:
        kind = {"action": "store_true"} if flag in switches else {"metavar": "X"}
        p.add_argument(flag, dest=dest, help="refused: " + reason, **kind)


def _add_run_options(p):
    """How the conversion runs: progress, into an existing image, sharing, --verify."""
    p.add_argument("-p", "--progress", action="store_true", help="show progress")
    p.add_argument("-n", dest="no_create", action="store_true",
                   help="write into the existing DESTINATION (-O raw or luks, or "
                        "--target-image-opts); without -n an existing one is never touched")
    p.add_argument("-U", "--force-share", action="store_true",
                   help="read the source even while another process writes it (no lock)")
    p.add_argument("--verify", action="store_true",
                   help="read both sides back afterwards and fail at the first difference (the "
                        "ciphertext with --keep-ciphertext)")


def _add_image_options(p):
    """What is read and written: formats, secrets, --image-opts, -o."""
    p.add_argument("-f", "--format", metavar="FMT",
                   help="source format (qcow2, luks, raw; probed if omitted)")
    p.add_argument("-O", dest="output_format", metavar="FMT",
                   help="output format: qcow2, luks (LUKS1), luks2 or raw (default raw)")
    p.add_argument("--type", choices=("luks1", "luks2"),
                   help="with -O luks: the LUKS version to write (luks2 is -O luks2)")
    common.add_object_option(p)
    p.add_argument("--image-opts", action="store_true",
                   help="SOURCE is driver=...,file.filename=PATH,[encrypt.]key-secret=ID[,header=HDR]")
    p.add_argument("--target-image-opts", action="store_true",
                   help="DESTINATION is an existing image given as driver=...,file.filename=PATH,"
                        "[encrypt.]key-secret=ID[,header=HDR] and written through its own header "
                        "(needs -n)")
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS",
                   help="options of the new image, qemu-img's names, comma-separated: qcow2: "
                        "encrypt.format=luks, encrypt.key-secret=ID, cluster_size, data_file, "
                        "...; luks: key-secret=ID, cipher-alg, iter-time, header, ...; luks2: "
                        "those and sector-size, pbkdf, pbkdf-memory, pbkdf-parallel, "
                        "pbkdf-force-iterations, label, uuid; -o help lists -O's options as "
                        "qemu-img does, marking those pyqcrypt refuses or limits.  A data_file "
                        "or header on a kernel device name (/dev/sdb1, /dev/loop0, ...) is kept "
                        "as given, with a warning naming its /dev/disk/by-* link, if any")


def _add_keep_ciphertext_options(p):
    """Moving the ciphertext as it is: --keep-ciphertext and what goes with it."""
    p.add_argument("--keep-ciphertext", action="store_true",
                   help="move the ciphertext without decrypting it (LUKS <-> qcow2-luks with a "
                        "raw data file; no passphrase needed for LUKS1; a LUKS2 source with "
                        "512-byte sectors needs its key-secret)")
    p.add_argument("--carry-secret", action="append", metavar="ID",
                   help="with --keep-ciphertext from LUKS2: another passphrase of the source "
                        "(a --object secret) to carry into its own keyslot of the result; "
                        "repeat for each")
    p.add_argument("--header", metavar="HDR",
                   help="with -O luks: write a detached header (the payload stays where it is)")
