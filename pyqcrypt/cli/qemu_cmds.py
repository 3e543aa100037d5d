# SPDX-License-Identifier: LGPL-2.1-or-later
"""The qemu-img-style commands: create and amend (info and check: inspect_cmds.py).

Option names and secret handling follow qemu-img: ``--object
secret,id=ID,file=PATH`` defines a secret, ``-o key-secret=ID`` (or
``encrypt.key-secret`` for qcow2) refers to it.
"""

import os
import sys

from ..errors import Error
from . import common

_LUKS_CREATE_OPTS = {"key-secret", "cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg",
                     "hash-alg", "iter-time", "header", "uuid", "preallocation"}


def _collect_opts(option_texts):
    from ..secrets import parse_options
    opts = {}
    for text in option_texts or []:
        for key, value in parse_options(text).items():
            if key in opts:
                raise Error("option %r given twice" % key)
            opts[key] = value
    return opts


_QCOW2_CREATE_OPTS = {"encrypt.format", "encryption", "encrypt.key-secret", "encrypt.cipher-alg",
                      "encrypt.cipher-mode", "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg",
                      "encrypt.hash-alg", "encrypt.iter-time", "cluster_size", "refcount_bits",
                      "compat", "data_file", "data_file_raw", "preallocation", "lazy_refcounts",
                      "encrypt.uuid", "backing_file", "backing_fmt", "extended_l2"}


def _warn_device_names(filename, opts):
    """Warn about a data file, backing file or detached header given by a
    kernel device name (it may name another disk after a reboot)."""
    from ..device_names import warn_unstable
    from ..qcow2.open import backing_path
    for key, role in (("data_file", "data file"), ("backing_file", "backing file")):
        if opts.get(key):
            warn_unstable(backing_path(filename, opts[key]), role)
    warn_unstable(opts.get("header"), "detached LUKS header")


def _create_qcow2(args, opts, size):
    from ..crypto import CipherSpec
    from ..image import create
    common.check_options(opts, _QCOW2_CREATE_OPTS, "format qcow2")
    for name in ("preallocation", "lazy_refcounts"):
        if opts.get(name, "off") != "off":
            raise Error("%s=%s is not supported (only off)" % (name, opts[name]))
    fmt = opts.get("encrypt.format")
    if common.parse_bool(opts.get("encryption", "off"), "encryption"):
        if fmt not in (None, "aes"):
            raise Error("encryption=on means encrypt.format=aes")
        fmt = "aes"
    spec = None
    if fmt == "luks":
        spec = CipherSpec.from_qemu(opts.get("encrypt.cipher-alg", "aes-256"),
                                    opts.get("encrypt.cipher-mode", "xts"),
                                    opts.get("encrypt.ivgen-alg", "plain64"),
                                    opts.get("encrypt.ivgen-hash-alg"))
    elif any(k.startswith("encrypt.") and k not in ("encrypt.format", "encrypt.key-secret")
             for k in opts):
        raise Error("encrypt.* cipher options need encrypt.format=luks")
    _warn_device_names(args.filename, opts)
    store = common.secret_store(args)
    try:
        secret = None
        if fmt is not None:
            if "encrypt.key-secret" not in opts:
                raise Error("encryption needs -o encrypt.key-secret=ID with an --object secret")
            secret = store.get(opts["encrypt.key-secret"])
        create(args.filename, size, "qcow2", passphrase=secret, encrypt_format=fmt, spec=spec,
               cluster_size=common.parse_size(opts.get("cluster_size", "65536")),
               refcount_bits=common.parse_int(opts.get("refcount_bits", "16"), "refcount_bits"),
               compat=opts.get("compat", "1.1"), data_file=opts.get("data_file"),
               data_file_raw=common.parse_bool(opts.get("data_file_raw", "off"), "data_file_raw"),
               hash_name=opts.get("encrypt.hash-alg", "sha256"),
               iter_time_ms=(common.parse_int(opts["encrypt.iter-time"], "encrypt.iter-time", 1)
                             if "encrypt.iter-time" in opts else None),
               uuid=opts.get("encrypt.uuid"), allow_insecure=args.allow_insecure,
               backing_file=opts.get("backing_file"), backing_format=opts.get("backing_fmt"),
               extended_l2=common.parse_bool(opts.get("extended_l2", "off"), "extended_l2"))
    finally:
        store.close()
    if fmt == "aes":
        print("pyqcrypt: warning: legacy qcow2 AES encryption is weak (no key stretching, "
              "IVs from guest sectors allow watermarking); use encrypt.format=luks", file=sys.stderr)


def _backing_size(args, opts):
    """An overlay's size when none is given: its backing image's virtual
    size (qemu-img create -b).  The backing must exist and be readable."""
    import os
    from ..info_report import backing_path, image_info
    full = backing_path(args.filename, opts["backing_file"])
    if not os.path.exists(full):
        raise Error("Could not open backing image %s: No such file or directory" % full)
    info = image_info(full, force_share=True)
    if opts.get("backing_fmt") == "raw":
        return os.stat(full).st_size if info["format"] != "raw" else info["virtual-size"]
    return info["virtual-size"]


def cmd_create(args):
    from . import option_help
    fmt = args.format or "raw"
    if option_help.wants_help(args.options):
        return option_help.show("create", fmt, args.filename is not None)
    if args.filename is None:
        raise Error("Expecting image file name")
    opts = _collect_opts(args.options)
    for flag, key in ((args.backing, "backing_file"), (args.backing_format, "backing_fmt")):
        if flag is not None:
            if opts.get(key, flag) != flag:
                raise Error("%s given twice with different values" % key)
            opts[key] = flag
    if "backing_fmt" in opts and "backing_file" not in opts:
        raise Error("-F / backing_fmt needs -b / backing_file")
    if "backing_file" in opts and fmt != "qcow2":
        raise Error("only qcow2 images can have a backing file")
    if args.size is None and fmt == "raw" and "size" in opts:
        args.size = opts.pop("size")
    if args.size is None:
        if "backing_file" not in opts:
            raise Error("image size must be given")
        if args.unsafe:
            raise Error("%s: Image creation needs a size parameter" % args.filename)
        size = _backing_size(args, opts)
    else:
        size = common.parse_size(args.size)
        if "backing_file" in opts and not args.unsafe:
            _backing_size(args, opts)           # it must exist, as qemu-img checks
    if fmt == "qcow2":
        _create_qcow2(args, opts, size)
        if not args.quiet:
            print("Formatting '%s', fmt=qcow2 size=%d" % (args.filename, size))
        return 0
    if fmt == "raw":
        return _create_raw(args, opts, size)
    if fmt not in ("luks", "luks2"):
        raise Error("cannot create %s images (supported: qcow2, luks, luks2, raw)" % fmt)
    if fmt == "luks2":
        return _create_luks2(args, opts, size)
    return _create_luks1(args, opts, size)


def _create_luks1(args, opts, size):
    """create -f luks: a LUKS1 volume (or a detached header, -o header=)."""
    from ..crypto import CipherSpec
    from ..image import create
    common.check_options(opts, _LUKS_CREATE_OPTS, "format luks")
    if "key-secret" not in opts:
        raise Error("format luks needs -o key-secret=ID with an --object secret,id=ID,file=...")
    if opts.get("preallocation", "off") != "off":
        raise Error("preallocation %r is not supported for luks yet" % opts["preallocation"])
    spec = CipherSpec.from_qemu(opts.get("cipher-alg", "aes-256"), opts.get("cipher-mode", "xts"),
                                opts.get("ivgen-alg", "plain64"), opts.get("ivgen-hash-alg"))
    iter_time = common.parse_int(opts["iter-time"], "iter-time", 1) if "iter-time" in opts else None
    _warn_device_names(args.filename, opts)
    store = common.secret_store(args)
    try:
        create(args.filename, size, "luks", passphrase=store.get(opts["key-secret"]), spec=spec,
               hash_name=opts.get("hash-alg", "sha256"), iter_time_ms=iter_time,
               header=opts.get("header"), uuid=opts.get("uuid"), allow_insecure=args.allow_insecure)
    finally:
        store.close()
    if not args.quiet:
        print("Formatting '%s', fmt=luks size=%d" % (args.filename, size))
    return 0


def _create_raw(args, opts, size):
    """create -f raw: a sparse (or preallocated) file of SIZE, never over
    an existing one (qemu-img would truncate it)."""
    from ..rawfile import create_raw
    common.check_options(opts, {"preallocation"}, "format raw")
    create_raw(args.filename, size, opts.get("preallocation", "off"))
    if not args.quiet:
        extra = " preallocation=%s" % opts["preallocation"] if "preallocation" in opts else ""
        print("Formatting '%s', fmt=raw size=%d%s" % (args.filename, size, extra))
    return 0


def _create_luks2(args, opts, size):
    """create -f luks2: a new LUKS2 volume through libcryptsetup, with
    qemu-img's luks option names plus cryptsetup's LUKS2 settings."""
    from ..crypto import CipherSpec
    common.check_options(opts, _LUKS_CREATE_OPTS | _LUKS2_CREATE_OPTS, "format luks2")
    if "key-secret" not in opts:
        raise Error("format luks2 needs -o key-secret=ID with an --object secret,id=ID,file=...")
    if opts.get("preallocation", "off") != "off":
        raise Error("preallocation %r is not supported for luks2" % opts["preallocation"])
    request = common.luks2_request_from_options(opts)
    request.spec = CipherSpec.from_qemu(opts.get("cipher-alg", "aes-256"),
                                        opts.get("cipher-mode", "xts"),
                                        opts.get("ivgen-alg", "plain64"),
                                        opts.get("ivgen-hash-alg")).check()
    _warn_device_names(args.filename, opts)
    store = common.secret_store(args)
    try:
        from ..luks.luks2_format import create_luks2
        create_luks2(args.filename, size, store.get(opts["key-secret"]), request,
                     header=opts.get("header"))
    finally:
        store.close()
    if not args.quiet:
        print("Formatting '%s', fmt=luks2 size=%d" % (args.filename, size))
    return 0


_LUKS2_CREATE_OPTS = {"sector-size", "pbkdf", "pbkdf-memory", "pbkdf-parallel",
                      "pbkdf-force-iterations", "label"}


def _forced_format(path, fmt, known=("qcow2", "luks", "raw")):
    """-f FMT: *fmt* checked against what *path* is (qemu-img's "Image is
    not in qcow2 format"); any file can be read as raw."""
    from ..image import probe
    if fmt is None:
        return None
    if fmt == "luks2" and "luks" in known:
        from ..luks.magic import luks_version
        if os.path.exists(path) and luks_version(path) != 2:
            raise Error("%s is not in luks2 format" % path)
        return "luks"
    if fmt not in known:
        raise Error("unknown format %r here (%s)" % (fmt, ", ".join(known)))
    if fmt != "raw" and os.path.exists(path) and probe(path) != fmt:
        raise Error("%s is not in %s format" % (path, fmt))
    return fmt


def _amend_opts(opts, qcow2, where):
    """amend's options without their prefix: qcow2 spells them
    ``encrypt.state``, a luks image ``state`` (as qemu-img takes them;
    the other spelling is refused, naming the option)."""
    out = {}
    for key, value in opts.items():
        prefixed = key.startswith("encrypt.")
        if prefixed != qcow2:
            raise Error("%s: option %s is not one of a %s image's (%s)" % (
                where, key, "qcow2" if qcow2 else "luks",
                "encrypt.state, encrypt.keyslot, encrypt.new-secret, encrypt.old-secret, "
                "encrypt.iter-time" if qcow2 else
                "state, keyslot, new-secret, old-secret, iter-time"))
        out[key[len("encrypt."):] if prefixed else key] = value
    return out


def cmd_amend(args):
    from .. import luks
    from ..image import open_luks_area, probe
    from . import option_help
    filename = args.filename
    if option_help.wants_help(args.options):
        if args.format is None and (filename is None or args.image_opts):
            raise Error("Expecting one image file name" if filename is None else
                        "give -f FMT with --image-opts to list a format's options")
        return option_help.show("amend", args.format or probe(filename))
    if filename is None:
        raise Error("Expecting one image file name")
    common.check_cache_mode(args.cache, source=False)
    image_opts = common.image_options(filename, args.image_opts)
    fmt = args.format
    if image_opts is None:
        image_opts = {}
    else:
        filename = image_opts.pop("file.filename", None)
        if not filename:
            raise Error("--image-opts needs file.filename=PATH")
        fmt = fmt or image_opts.pop("driver", None)
    _forced_format(image_opts.get("header") or filename, fmt, ("qcow2", "luks"))
    qcow2 = image_opts.get("header") is None and probe(filename) == "qcow2"
    opts = _amend_opts(_collect_opts(args.options), qcow2, "-o")
    common.check_options(opts, {"state", "keyslot", "new-secret", "old-secret", "iter-time"},
                         "amend")
    secret_key = "encrypt.key-secret" if qcow2 else "key-secret"
    common.check_options(image_opts, {secret_key, "header"}, "--image-opts")
    state, keyslot, iter_time = _amend_change(opts, qcow2)
    if secret_key not in image_opts:
        raise Error("amend opens the image first, as qemu-img does: give its secret with "
                    "--image-opts driver=%s,file.filename=%s,%s=ID"
                    % ("qcow2" if qcow2 else "luks", filename, secret_key))
    store = common.secret_store(args)
    try:
        with open_luks_area(filename, writable=True, header=image_opts.get("header")) as area:
            _, mk = luks.unlock(area, store.get(image_opts[secret_key]))
            if args.progress:                   # qemu-img's frame: 0 before, 100 after
                sys.stdout.write("    (0.00/100%)\r")
                sys.stdout.flush()
            with mk:
                if state == "active":
                    _amend_activate(args, area, opts, store, keyslot, iter_time, mk)
                else:
                    _amend_deactivate(args, area, opts, store, keyslot)
            if args.progress:
                sys.stdout.write("    (100.00/100%)\r\n")
    finally:
        store.close()
    return 0


def _amend_change(opts, qcow2):
    """(state, keyslot, iter-time) of amend's -o, checked as qemu-img does."""
    state = opts.get("state")
    if state not in ("active", "inactive"):
        raise Error("amend needs -o %sstate=active or %sstate=inactive"
                    % (("encrypt.",) * 2 if qcow2 else ("",) * 2))
    conflicts = ("old-secret",) if state == "active" else ("new-secret", "iter-time")
    for name in conflicts:
        if name in opts:
            raise Error("%s%s must not be given when %s keyslots"
                        % ("encrypt." if qcow2 else "", name,
                           "adding" if state == "active" else "erasing"))
    keyslot = common.parse_int(opts["keyslot"], "encrypt.keyslot", 0, 7) if "keyslot" in opts else None
    iter_time = (common.parse_int(opts["iter-time"], "encrypt.iter-time", 0)
                 if "iter-time" in opts else None)
    return state, keyslot, iter_time


def _amend_activate(args, area, opts, store, keyslot, iter_time, mk):
    """amend -o encrypt.state=active: a new keyslot for encrypt.new-secret,
    the master key from the image's own secret."""
    from .. import luks
    if "new-secret" not in opts:
        raise Error("encrypt.new-secret is needed to activate a keyslot")
    if keyslot is not None and area.header.slots[keyslot].active and not args.force:
        raise Error("refusing to overwrite active keyslot %d - please erase it "
                    "first (or use --force)" % keyslot)
    from ..crypto.keybuf import qemu_can_use
    new = store.get(opts["new-secret"])
    if not qemu_can_use(new):
        raise Error("secret %s is not valid UTF-8 (or holds a NUL byte): qemu-img refuses such a "
                    "secret, and QEMU could never open the image with it" % opts["new-secret"])
    # iter-time=0 is qemu-img's "as cheap as allowed": the 1000-iteration floor
    timing = {"iterations": 1000} if iter_time == 0 else {"iter_time_ms": iter_time}
    luks.add_key(area, mk, new, keyslot, overwrite=args.force, calibration="qemu", **timing)


def _amend_deactivate(args, area, opts, store, keyslot):
    """amend -o encrypt.state=inactive, with qemu-img's rules: a named
    keyslot must hold the old secret when one is given, and must be active
    unless --force; without a keyslot, every one the old secret opens; the
    last active keyslots never without --force."""
    from .. import luks
    path = area.path
    active = area.header.active_slots()
    if keyslot is not None:
        if "old-secret" in opts and not luks.slots_opened_by(area, store.get(opts["old-secret"]),
                                                             [keyslot]):
            raise Error("keyslot %d of %s does not hold the given old secret; nothing was erased"
                        % (keyslot, path))
        if keyslot not in active:
            if args.force:
                return                  # already erased: qemu-img --force says nothing
            raise Error("keyslot %d is already erased (inactive)" % keyslot)
        targets = [keyslot]
    else:
        if "old-secret" not in opts:
            raise Error("to deactivate keyslots give encrypt.keyslot=N or encrypt.old-secret=ID")
        targets = luks.slots_opened_by(area, store.get(opts["old-secret"]))
        if not targets:
            raise Error("no keyslot of %s matches the old secret; nothing was erased" % path)
    if set(targets) >= set(active) and not args.force:
        raise Error("refusing to erase the only active keyslot(s) of %s: that would "
                    "make the data unrecoverable (use --force to do it anyway)" % path)
    for n in targets:
        luks.kill_slot(area, n, allow_last=True)


def register(sub):
    """Add this module's subcommands to the parser *sub*."""
    from .create_args import register_amend, register_create
    register_create(sub, cmd_create)
    register_amend(sub, cmd_amend)
