# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shared pieces of the command line: key sources, confirmations, sizes.

Secrets come from ``--key-file`` (cryptsetup style), ``--object secret``
(QEMU style) or a no-echo prompt; never from a plain argument.
"""

import argparse
import re
import sys
import textwrap

from ..errors import Error


EXIT_USAGE = 1          # qemu-img and cryptsetup: 2 means a wrong passphrase (check: corruption)


class Parser(argparse.ArgumentParser):
    """argparse with qemu-img's and cryptsetup's conventions: a usage error
    exits 1 (2 keeps its meaning: a wrong passphrase, or corruption for
    check), long options are never abbreviated (``--pbkdf`` must not turn
    into ``--pbkdf-force-iterations``), and examples keep their lines."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, message))


# cryptsetup's spelling of a command, accepted as it is in cryptsetup
CRYPTSETUP_NAMES = {"format": "luksFormat", "dump": "luksDump", "add-key": "luksAddKey",
                    "remove-key": "luksRemoveKey", "change-key": "luksChangeKey",
                    "kill-slot": "luksKillSlot", "erase": "luksErase",
                    "header-backup": "luksHeaderBackup", "header-restore": "luksHeaderRestore"}


def add_command(sub, name, summary, description, examples, **kwargs):
    """A sub-command: *summary* is its line in ``pyqcrypt --help``,
    *description* the paragraph its own ``--help`` starts with, *examples*
    the command lines shown (as written) at its end.  A command cryptsetup
    has answers to cryptsetup's name too (``luksDump`` is ``dump``)."""
    epilog = "examples:\n" + "\n".join("  " + line for line in examples)
    if name in CRYPTSETUP_NAMES:
        kwargs.setdefault("aliases", [CRYPTSETUP_NAMES[name]])
    return sub.add_parser(name, help=summary, description=textwrap.fill(description, 79),
                          epilog=epilog, **kwargs)


def commands(sub):
    """(name, aliases, parser) of each command of the sub-command action
    *sub*, once each (its ``choices`` also maps every alias)."""
    aliases = {}
    for alias, parser in sub.choices.items():
        aliases.setdefault(id(parser), []).append(alias)
    return [(names[0], names[1:], sub.choices[names[0]]) for names in aliases.values()]


CACHE_MODES = ("none", "writeback", "writethrough", "directsync", "unsafe")


def add_cache_option(p, flag, dest, source):
    """qemu-img's -t/-T cache mode: checked as qemu-img checks it, and
    otherwise without effect (pyqcrypt has no block cache: it reads and
    writes through the page cache and syncs what it writes itself)."""
    p.add_argument(flag, dest=dest, metavar="SRC_CACHE" if source else "CACHE",
                   help="qemu-img's cache mode (%s): accepted and checked, but without effect: "
                        "pyqcrypt has no block cache and syncs what it writes itself"
                        % ", ".join(CACHE_MODES))


def check_cache_mode(mode, source):
    """qemu-img's refusal of a cache mode it does not know."""
    if mode is not None and mode not in CACHE_MODES:
        raise Error("Invalid %scache option: %s" % ("source " if source else "", mode))


def add_object_option(p):
    p.add_argument("--object", action="append", metavar="OBJ",
                   help="define a secret as qemu-img does: secret,id=ID,file=PATH (also data=, "
                        "format=base64, keyid=ID,iv=B64; secret_keyring,id=ID,serial=N) or its "
                        "JSON form {\"qom-type\":\"secret\",\"id\":ID,...}")


def _pbkdf(value):
    if value.lower() in ("pbkdf2", "argon2i", "argon2id"):
        return value.lower()
    raise argparse.ArgumentTypeError("unknown PBKDF %r (pbkdf2, argon2i or argon2id)" % value)


_NOT_LUKS = ("plain", "loopaes", "tcrypt", "bitlk", "fvault2")


def _device_type(allow_luks2):
    def parse(value):
        v = value.lower()
        if v in ("luks1", "luks"):
            return "luks1"
        if v == "luks2" and allow_luks2:
            return "luks2"
        if v in _NOT_LUKS:
            raise argparse.ArgumentTypeError(
                "%s devices have no LUKS header; pyqcrypt handles luks1 and luks2" % v)
        raise argparse.ArgumentTypeError("unknown device type %r (luks1 or luks2)" % value)
    return parse


def add_type_option(p, allow_luks2=True, what="device type, as cryptsetup takes it"):
    p.add_argument("--type", type=_device_type(allow_luks2), metavar="TYPE",
                   help="%s: luks1 (or luks) or luks2" % what)


def add_key_file_options(p, new=False, slot=True):
    p.add_argument("-d", "--key-file", metavar="FILE",
                   help="read the passphrase from FILE (- for standard input); the whole "
                        "file is the key, binary allowed")
    p.add_argument("--keyfile-offset", type=int, default=0, metavar="BYTES",
                   help="skip BYTES at the start of the key file")
    p.add_argument("-l", "--keyfile-size", type=int, metavar="BYTES",
                   help="read only BYTES of the key file")
    if new:
        p.add_argument("--new-key-file", metavar="FILE",
                       help="read the new passphrase from FILE (- for standard input)")
        p.add_argument("--new-keyfile-offset", type=int, default=0, metavar="BYTES",
                       help="skip BYTES at the start of the new key file")
        p.add_argument("--new-keyfile-size", type=int, metavar="BYTES",
                       help="read only BYTES of the new key file")
    if slot:
        p.add_argument("-S", "--key-slot", type=int, metavar="N", help="keyslot number (0-7)")
    p.add_argument("--header", metavar="HDR", help="detached LUKS header file")


def add_pbkdf_options(p):
    p.add_argument("-i", "--iter-time", type=int, metavar="MS",
                   help="PBKDF time for new keyslots in milliseconds (default 2000)")
    p.add_argument("--pbkdf-force-iterations", type=int, metavar="N",
                   help="use exactly N PBKDF2 iterations (at least 1000), or argon2's time cost "
                        "N (at least 4)")
    p.add_argument("--pbkdf", type=_pbkdf, metavar="PBKDF",
                   help="key derivation of new keyslots: pbkdf2 (LUKS1 has only this), or on "
                        "LUKS2 argon2id (the default there) or argon2i")
    p.add_argument("--pbkdf-memory", type=int, metavar="KIB",
                   help="LUKS2 argon2 memory cost in KiB (default 1048576)")
    p.add_argument("--pbkdf-parallel", type=int, metavar="N",
                   help="LUKS2 argon2 threads (default: the cores, at most 4)")


def add_batch_option(p):
    p.add_argument("-q", "--batch-mode", action="store_true",
                   help="do not ask for confirmation")


def passphrase(args, prompt="Enter passphrase: "):
    """The passphrase given by --key-file, or typed at the terminal."""
    from ..secrets import prompt_passphrase, read_key_file
    if getattr(args, "key_file", None):
        return read_key_file(args.key_file, args.keyfile_offset, args.keyfile_size)
    if not sys.stdin.isatty():
        raise Error("no passphrase given: use --key-file FILE (or - for standard input)")
    return prompt_passphrase(prompt)


def new_passphrase(args, positional=None, prompt="Enter new passphrase: "):
    """The new passphrase: --new-key-file, a positional key file, or typed
    twice at the terminal."""
    from ..secrets import prompt_passphrase, read_key_file
    path = getattr(args, "new_key_file", None) or positional
    if path:
        if path == "-" and getattr(args, "key_file", None) == "-":
            raise Error("standard input cannot hold both the old and the new passphrase")
        return read_key_file(path, getattr(args, "new_keyfile_offset", 0),
                             getattr(args, "new_keyfile_size", None))
    if not sys.stdin.isatty():
        raise Error("no new passphrase given: use --new-key-file FILE")
    return prompt_passphrase(prompt, confirm=True)


def confirm(args, warning):
    """cryptsetup's confirmation: batch mode, or 'YES' typed at a terminal."""
    if getattr(args, "batch_mode", False):
        return
    if not sys.stdin.isatty():
        raise Error("%s; refusing without confirmation (use --batch-mode)" % warning)
    sys.stderr.write("WARNING!\n========\n%s.\n\nAre you sure? (Type 'yes' in capital letters): "
                     % warning)
    sys.stderr.flush()
    if sys.stdin.readline().strip() != "YES":
        raise Error("operation aborted")


def iteration_args(args):
    """PBKDF2 settings for a new LUKS1 keyslot; argon2 is refused in words."""
    kind = getattr(args, "pbkdf", None)
    if kind not in (None, "pbkdf2"):
        raise Error("LUKS1 keyslots use pbkdf2 only, not %s (argon2i and argon2id need LUKS2: "
                    "--type luks2)" % kind)
    for opt in ("pbkdf_memory", "pbkdf_parallel"):
        if getattr(args, opt, None) is not None:
            raise Error("--%s applies to argon2 on LUKS2 only" % opt.replace("_", "-"))
    return {"iter_time_ms": getattr(args, "iter_time", None),
            "iterations": getattr(args, "pbkdf_force_iterations", None)}


def luks2_pbkdf(args):
    """The Pbkdf of a new LUKS2 keyslot from cryptsetup's options."""
    from ..luks.luks2_format import Pbkdf
    return Pbkdf(getattr(args, "pbkdf", None), getattr(args, "hash", None) or "sha256",
                 getattr(args, "iter_time", None), getattr(args, "pbkdf_force_iterations", None),
                 getattr(args, "pbkdf_memory", None), getattr(args, "pbkdf_parallel", None))


_SIZE_RE = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*([bkmgtpe]?)(?:i?b)?\s*$", re.IGNORECASE)
_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
           "p": 1 << 50, "e": 1 << 60}
MAX_SIZE = (1 << 63) - 1


def parse_size(text):
    """qemu-img sizes: plain bytes or a k/M/G/T/P/E suffix (powers of
    1024), in exact integer arithmetic (no float: 9007199254740993 stays
    itself).  A decimal such as 1.5G is taken only when it is a whole
    number of bytes."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise Error("invalid size %r (examples: 1048576, 512M, 10G)" % (text,))
    whole, frac, unit = m.group(1), m.group(2) or "", m.group(3).lower()
    numerator = int(whole + frac) * _SUFFIX[unit]
    denominator = 10 ** len(frac)
    if numerator % denominator:
        raise Error("invalid size %r: not a whole number of bytes" % (text,))
    value = numerator // denominator
    if value > MAX_SIZE:
        raise Error("invalid size %r: larger than %d bytes" % (text, MAX_SIZE))
    return value


def parse_int(value, name, lo=None, hi=None):
    """An integer option (``-o name=value``), range-checked, or an Error
    naming the option."""
    try:
        n = int(str(value), 10)
    except ValueError:
        raise Error("option %s must be an integer, not %r" % (name, value)) from None
    if lo is not None and n < lo or hi is not None and n > hi:
        raise Error("option %s must be %s, not %d" % (
            name, "%d..%d" % (lo, hi) if hi is not None else "at least %d" % lo, n))
    return n


def pop_backing_secrets(opts, store):
    """Take qemu's per-layer secret options out of an --image-opts dict:
    ``backing.encrypt.key-secret=ID`` (a qcow2 backing),
    ``backing.key-secret=ID`` (a LUKS backing), ``backing.backing.…`` for
    deeper layers.  Returns the API's backing_passphrase list (one entry
    per lower layer from the top down, None where none was given), or
    None when there are none."""
    layers = {}
    for key in list(opts):
        m = re.fullmatch(r"((?:backing\.)+)(?:encrypt\.)?key-secret", key)
        if m:
            layers[m.group(1).count("backing.")] = store.get(opts.pop(key))
    if not layers:
        return None
    return [layers.get(d) for d in range(1, max(layers) + 1)]


def image_options(text, image_opts):
    """The option dict of an image argument, or None for a plain filename:
    ``--image-opts`` text (``driver=luks,file.filename=X,...``) or, without
    it, a ``json:{...}`` filename as qemu-img takes it (nested objects
    become dotted keys: ``{"file": {"filename": X}}`` is
    ``file.filename=X``).  Only the local-file protocol is opened."""
    if image_opts:                  # qemu-img: the text is key=value, even "json:..."
        from ..secrets import parse_options
        opts = parse_options(text)
    elif text.startswith("json:"):
        import json
        try:
            tree = json.loads(text[5:])
        except ValueError as exc:
            raise Error("the json: filename is not valid JSON (%s)" % exc.msg) from None
        if not isinstance(tree, dict):
            raise Error("the json: filename must hold a JSON object")
        opts = {}
        _flatten(tree, "", opts)
    else:
        return None
    driver = opts.pop("file.driver", "file")
    if driver not in ("file", "host_device"):
        raise Error("file.driver=%s: pyqcrypt opens local files and block devices only "
                    "(file, host_device)" % driver)
    return opts


def _flatten(tree, prefix, out):
    for key, value in tree.items():
        if isinstance(value, dict):
            _flatten(value, prefix + key + ".", out)
        elif isinstance(value, bool):
            out[prefix + key] = "on" if value else "off"
        elif isinstance(value, (str, int)):
            out[prefix + key] = str(value)
        else:
            raise Error("the json: filename's %s%s must be a string, number, boolean or object"
                        % (prefix, key))


def check_options(opts, allowed, what):
    """Refuse the keys of an option string (-o, --image-opts, ...) that
    nothing reads, naming them and the ones *what* knows."""
    unknown = set(opts) - set(allowed)
    if unknown:
        raise Error("unknown option(s) for %s: %s (known: %s)"
                    % (what, ", ".join(sorted(unknown)), ", ".join(sorted(allowed))))


def secret_store(args):
    from ..secrets import SecretStore
    store = SecretStore()
    for obj in getattr(args, "object", None) or []:
        store.add_object(obj)
    return store


def parse_bool(value, name):
    v = str(value).lower()
    if v in ("on", "yes", "true", "1"):
        return True
    if v in ("off", "no", "false", "0"):
        return False
    raise Error("option %s must be on or off, not %r" % (name, value))


def luks2_request_from_options(opts):
    """A Luks2Request from -o options (cryptsetup's names without the
    dashes: sector-size, pbkdf, pbkdf-memory, pbkdf-parallel,
    pbkdf-force-iterations, iter-time, hash-alg, label, uuid); the cipher
    is set by the caller."""
    from ..luks.luks2_format import Luks2Request, Pbkdf

    def num(name, low=1):
        return parse_int(opts[name], name, low) if name in opts else None
    pbkdf = Pbkdf(opts.get("pbkdf"), opts.get("hash-alg", "sha256"), num("iter-time"),
                  num("pbkdf-force-iterations"), num("pbkdf-memory"), num("pbkdf-parallel"))
    return Luks2Request(sector_size=num("sector-size", 0) or 0, pbkdf=pbkdf,
                        uuid=opts.get("uuid"), label=opts.get("label"))
