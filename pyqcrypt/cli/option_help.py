# SPDX-License-Identifier: LGPL-2.1-or-later
"""``-o help`` and ``-o ?`` of create, convert and amend: a format's
options listed as qemu-img 7.2 lists them (same names, types, words and
layout), each marked where pyqcrypt differs.

The rule for the marks: an option pyqcrypt refuses ends with
``(not supported by pyqcrypt)``; one it takes with fewer values ends with
``(pyqcrypt: only ...)``; unmarked lines are qemu-img's exactly.  Options
pyqcrypt has beyond qemu-img (luks2's cryptsetup settings, header, uuid,
data_file_existing) are in each command's --help, not here.  Without a
filename the listing ends with qemu-img's note about protocol options;
with one (create, convert) the file protocol's options are merged in, as
qemu-img does.
"""

import sys
from typing import Dict, Optional

from ..errors import Error

NOT_SUPPORTED = "(not supported by pyqcrypt)"
_SIZE = ("size", "size", "Virtual disk size")
_PREALLOC = "Preallocation mode (allowed values: off, %s)"
_LUKS_CREATE = [
    ("cipher-alg", "str", "Name of encryption cipher algorithm"),
    ("cipher-mode", "str", "Name of encryption cipher mode"),
    ("hash-alg", "str", "Name of encryption hash algorithm"),
    ("iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    ("ivgen-alg", "str", "Name of IV generator algorithm"),
    ("ivgen-hash-alg", "str", "Name of IV generator hash algorithm"),
    ("key-secret", "str", "ID of the secret that provides the keyslot passphrase"),
    _SIZE]
_QCOW2_CREATE = [
    ("backing_file", "str", "File name of a base image"),
    ("backing_fmt", "str", "Image format of the base image"),
    ("cluster_size", "size", "qcow2 cluster size"),
    ("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
    ("compression_type", "str", "Compression method used for image cluster compression"),
    ("data_file", "str", "File name of an external data file"),
    ("data_file_raw", "bool (on/off)", "The external data file must stay valid as a raw image")] + [
    ("encrypt." + name, kind, text) for name, kind, text in _LUKS_CREATE[:2]] + [
    ("encrypt.format", "str", "Encrypt the image, format choices: 'aes', 'luks'")] + [
    ("encrypt." + name, kind, text) for name, kind, text in _LUKS_CREATE[2:6]] + [
    ("encrypt.key-secret", "str", "ID of secret providing qcow AES key or LUKS passphrase"),
    ("encryption", "bool (on/off)", "Encrypt the image with format 'aes'. (Deprecated in favor "
                                    "of encrypt.format=aes)"),
    ("extended_l2", "bool (on/off)", "Extended L2 tables"),
    ("lazy_refcounts", "bool (on/off)", "Postpone refcount updates"),
    ("preallocation", "str", _PREALLOC % "metadata, falloc, full"),
    ("refcount_bits", "num", "Width of a reference count entry in bits"),
    _SIZE]
_FILE = [("extent_size_hint", "size", "Extent size hint for the image file, 0 to disable"),
         ("nocow", "bool (on/off)", "Turn off copy-on-write (valid only on btrfs)"),
         ("preallocation", "str", _PREALLOC % "falloc, full"),
         _SIZE]
_KEYSLOTS = [("iter-time", "num", "Time to spend in PBKDF in milliseconds"),
             ("keyslot", "num", "Select a single keyslot to modify explicitly"),
             ("new-secret", "str", "New secret to set in the matching keyslots. Empty string to "
                                   "erase"),
             ("old-secret", "str", "Select all keyslots that match this password"),
             ("state", "str", "Select new state of affected keyslots (active/inactive)")]
_QCOW2_AMEND = sorted([o for o in _QCOW2_CREATE if o[0] in (
    "backing_file", "backing_fmt", "compat", "data_file", "data_file_raw", "lazy_refcounts",
    "refcount_bits", "size")] + [("encrypt." + name, kind, text) for name, kind, text in _KEYSLOTS],
    key=lambda o: o[0])

OPTIONS = {"qcow2": _QCOW2_CREATE, "luks": _LUKS_CREATE, "luks2": _LUKS_CREATE, "raw": [_SIZE]}
AMEND_OPTIONS = {"qcow2": _QCOW2_AMEND, "luks": _KEYSLOTS}

# What pyqcrypt does with each option, per verb and format: a missing name
# is refused, a string is the values it takes.
_ALL = None
_KEYSLOT_NAMES = {o[0]: _ALL for o in _KEYSLOTS}
_LUKS_NAMES = {o[0]: _ALL for o in _LUKS_CREATE if o[0] != "size"}
_QCOW2_BASE: Dict[str, Optional[str]] = {name: _ALL for name in (
    "cluster_size", "compat", "data_file", "data_file_raw", "extended_l2", "refcount_bits")}
_QCOW2_BASE.update({"encrypt." + k: _ALL for k in _LUKS_NAMES})
_QCOW2_BASE.update(preallocation="off", lazy_refcounts="off")
SUPPORT = {
    ("create", "qcow2"): dict(_QCOW2_BASE, backing_file=_ALL, backing_fmt=_ALL, encryption=_ALL,
                              **{"encrypt.format": _ALL}),
    ("convert", "qcow2"): {k: v for k, v in dict(_QCOW2_BASE, **{"encrypt.format": "luks"}).items()
                           if k != "lazy_refcounts"},
    ("create", "luks"): _LUKS_NAMES, ("convert", "luks"): _LUKS_NAMES,
    ("create", "luks2"): _LUKS_NAMES, ("convert", "luks2"): _LUKS_NAMES,
    ("create", "raw"): {"size": _ALL, "preallocation": _ALL},
    ("convert", "raw"): {},
    ("amend", "qcow2"): {"encrypt." + k: _ALL for k in _KEYSLOT_NAMES},
    ("amend", "luks"): _KEYSLOT_NAMES,
}


def wants_help(option_texts):
    """True when one of the -o strings asks for the listing ("help" or
    "?" as one of its comma-separated items, as qemu-img takes it)."""
    return any(item.strip() in ("help", "?")
               for text in option_texts or [] for item in str(text).split(","))


def _line(option, support):
    name, kind, text = option
    line = "  %-22s - %s" % ("%s=<%s>" % (name, kind), text)
    if name not in support:
        return line + " " + NOT_SUPPORTED
    if support[name] is not None:
        return line + " (pyqcrypt: only %s)" % support[name]
    return line


def listing(verb, fmt, with_file=False):
    """The text of ``VERB -f FMT -o help``; *with_file*: a filename was
    given, so the file protocol's options are merged in."""
    table = (AMEND_OPTIONS if verb == "amend" else OPTIONS).get(fmt)
    if table is None:
        raise Error("pyqcrypt knows no options of format %r (qcow2, luks, luks2, raw)" % fmt)
    support = SUPPORT.get((verb, fmt), {})
    if verb == "amend":
        return "Amend options for '%s':\n%s\n" % (
            fmt, "\n".join(_line(o, support) for o in table))
    if with_file:
        names = {o[0] for o in table}
        merged = sorted(table + [o for o in _FILE if o[0] not in names], key=lambda o: o[0])
        return "Supported options:\n%s\n" % "\n".join(_line(o, support) for o in merged)
    return ("Supported %s options:\n%s\n\nThe protocol level may support further options.\n"
            "Specify the target filename to include those options.\n"
            % (fmt, "\n".join(_line(o, support) for o in table)))


def show(verb, fmt, with_file=False):
    """Print the listing on stdout; the command's exit status (0)."""
    sys.stdout.write(listing(verb, fmt, with_file))
    return 0
