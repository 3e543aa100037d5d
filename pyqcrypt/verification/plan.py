# SPDX-License-Identifier: LGPL-2.1-or-later
"""What ``pyqcrypt verify`` is asked to check: the checks file (TOML, or
JSON with the same keys) and the command line's inline checks, turned
into a list of Check.

The file lives in the user's repository; its paths are relative to its
own directory.  It never holds a passphrase: ``[keys]`` names key files
(the whole file is the passphrase, as cryptsetup's --key-file reads it),
and the checks refer to them by name::

    [keys]
    main = "secrets/main.key"

    [[passphrase]]              # image, key; opens, header, slot optional
    image = "vol.luks"
    key = "main"

    [[check]]                   # image; key for an encrypted qcow2
    image = "disk.qcow2"
    key = "main"

    [[same-data]]               # images; key (both) or keys (one each)
    images = ["vol.luks", "disk.qcow2"]
    key = "main"

    [[same-ciphertext]]         # images: a keep-ciphertext pair
    images = ["vol.luks", "kept.qcow2"]

Anything wrong (an unknown key, a wrong type, a missing file, an unknown
key name) is a one-line Error naming the key, before any check runs.
"""

import json
import os

from ..errors import Error

PASSPHRASE, CHECK, SAME_DATA, SAME_CIPHERTEXT = "passphrase", "check", "same-data", "same-ciphertext"
KINDS = (PASSPHRASE, CHECK, SAME_DATA, SAME_CIPHERTEXT)
MAX_CHECKS_FILE = 1 << 20
NO_KEY_FILE = "no such key file (a key file's name belongs here, never a passphrase)"

# Each kind's keys: name -> (type, required).  Types: path (an existing
# file), key (a [keys] name), bool, slot (0..31), pair (two paths), keys2
# (two key names).
FIELDS = {
    PASSPHRASE: {"image": ("path", True), "key": ("key", True), "opens": ("bool", False),
                 "header": ("path", False), "slot": ("slot", False)},
    CHECK: {"image": ("path", True), "key": ("key", False)},
    SAME_DATA: {"images": ("pair", True), "key": ("key", False), "keys": ("keys2", False)},
    SAME_CIPHERTEXT: {"images": ("pair", True)},
}


class Check:
    """One check: its *kind*, the *images* (paths), the key file of each
    image in *keys* (None where no key is given), a detached *header*, the
    *slot* a passphrase must open, *opens* (False: it must be refused), and
    the *name* reports show (the images as written, and the key's name)."""

    __slots__ = ("kind", "name", "images", "keys", "header", "slot", "opens")

    def __init__(self, kind, name, images, keys, header=None, slot=None, opens=True):
        self.kind, self.name, self.images, self.keys = kind, name, tuple(images), tuple(keys)
        self.header, self.slot, self.opens = header, slot, opens

    def __repr__(self):
        return "<Check %s %s>" % (self.kind, self.name)


def check_name(kind, images, key_names=(), header=None, opens=True):
    """The name a check is reported under: never a secret, only file and
    key names."""
    if kind == PASSPHRASE:
        where = images[0] + (" (header %s)" % header if header else "")
        return "%s %s key %s" % (where, "opens with" if opens else "refuses", key_names[0])
    if kind == CHECK:
        return images[0]
    return "%s = %s" % tuple(images)


class _Reader:
    """Validation of one checks file, whose directory is *base*; *keys*
    maps key names to key file paths."""

    def __init__(self, source, keys):
        self.source, self.base, self.keys = source, os.path.dirname(os.path.abspath(source)), keys

    def fail(self, where, what):
        raise Error("%s: %s: %s" % (self.source, where, what))

    def path(self, where, value, is_key=False):
        """An existing file named relative to the checks file; a key file
        that is missing is not named (the value may be a passphrase
        written where its file's name belongs)."""
        if not isinstance(value, str) or not value:
            self.fail(where, "must be a file name (a string)")
        full = os.path.join(self.base, value)
        if not os.path.exists(full):
            self.fail(where, NO_KEY_FILE if is_key else "no such file: %s" % full)
        return full

    def key(self, where, value):
        if not isinstance(value, str) or value not in self.keys:
            self.fail(where, "must name a key file of [keys] (known: %s)"
                      % (", ".join(sorted(self.keys)) or "none"))
        return value

    def value(self, where, kind, value):
        if kind == "path":
            return self.path(where, value)
        if kind == "key":
            return self.key(where, value)
        if kind == "bool":
            if not isinstance(value, bool):
                self.fail(where, "must be true or false")
            return value
        if kind == "slot":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 32:
                self.fail(where, "must be a keyslot number, 0 to 31")
            return value
        if not isinstance(value, list) or len(value) != 2:
            self.fail(where, "must be a list of two %s" % ("file names" if kind == "pair" else "key names"))
        item = self.path if kind == "pair" else self.key
        return [item("%s[%d]" % (where, n), v) for n, v in enumerate(value)]

    def entry(self, kind, index, table):
        where = "%s[%d]" % (kind, index)
        if not isinstance(table, dict):
            self.fail(where, "must be a table")
        fields = FIELDS[kind]
        for name in table:
            if name not in fields:
                self.fail(where, "unknown key %r (known: %s)" % (name, ", ".join(fields)))
        got = {}
        for name, (vtype, required) in fields.items():
            if name in table:
                got[name] = self.value("%s.%s" % (where, name), vtype, table[name])
            elif required:
                self.fail(where, "%s is missing" % name)
        if "key" in got and "keys" in got:
            self.fail(where, "give key (both images) or keys (one each), not both")
        return self.check(kind, table, got)

    def check(self, kind, table, got):
        if kind in (PASSPHRASE, CHECK):
            images, names = [table["image"]], [got.get("key")]
            paths = [got["image"]]
        else:
            images, paths = table["images"], got["images"]
            names = got.get("keys") or [got.get("key")] * 2
        keys = [self.keys[n] if n else None for n in names]
        opens = got.get("opens", True)
        header = got.get("header")
        name = check_name(kind, images, names, table.get("header"), opens)
        return Check(kind, name, paths, keys, header, got.get("slot"), opens)


def _parse(source, text):
    """The checks file's data: JSON when it says so (a .json name or a
    leading '{'), else TOML."""
    if source.endswith(".json") or text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise Error("%s: not valid JSON: %s" % (source, exc)) from None
    try:
        import tomllib                                  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise Error("%s: reading TOML needs Python 3.11 or later (tomllib); write the same keys "
                    "as JSON instead (a .json file)" % source) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Error("%s: not valid TOML: %s" % (source, str(exc).splitlines()[0])) from None


def read_text(source):
    try:
        with open(source, "rb") as fh:
            raw = fh.read(MAX_CHECKS_FILE + 1)
    except OSError as exc:
        raise Error("cannot read the checks file %s: %s" % (source, exc.strerror or exc)) from None
    if len(raw) > MAX_CHECKS_FILE:
        raise Error("%s: a checks file is at most %d bytes" % (source, MAX_CHECKS_FILE))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Error("%s: not UTF-8 text" % source) from None


def load_checks_file(source, key_overrides):
    """The Checks of the file *source*; *key_overrides* (name -> path, from
    --key) add to or replace its [keys]."""
    data = _parse(source, read_text(source))
    if not isinstance(data, dict):
        raise Error("%s: must be a table of keys and checks" % source)
    for name in data:
        if name != "keys" and name not in KINDS:
            raise Error("%s: unknown key %r (known: keys, %s)" % (source, name, ", ".join(KINDS)))
    reader = _Reader(source, {})
    table = data.get("keys", {})
    if not isinstance(table, dict):
        reader.fail("keys", "must be a table of key names and key file names")
    # a key --key replaces need not exist here: in CI the file's entry names
    # a developer's local key file, and the CI's secret takes its place
    keys = {name: reader.path("keys.%s" % name, value, is_key=True)
            for name, value in table.items() if name not in key_overrides}
    keys.update(key_overrides)
    reader.keys = keys
    checks = []
    for kind in KINDS:
        entries = data.get(kind, [])
        if not isinstance(entries, list):
            reader.fail(kind, "must be a list of tables ([[%s]])" % kind)
        checks += [reader.entry(kind, n, entry) for n, entry in enumerate(entries)]
    return checks


def existing(option, path, is_key=False):
    """*path* of a command-line check, which must exist (a key file's name
    is not repeated: it may be a passphrase given by mistake)."""
    if not os.path.exists(path):
        raise Error("%s: %s" % (option, NO_KEY_FILE if is_key else "no such file: %s" % path))
    return path


def parse_key_override(text):
    """``NAME=PATH`` of --key."""
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise Error("--key takes NAME=PATH: a key name of the checks file and its key file")
    return name, existing("--key %s" % name, path, is_key=True)


def inline_checks(request):
    """The Checks of the command line's inline forms.  *request* has
    ``opens`` and ``refuses`` ([IMAGE, KEYFILE] pairs), ``check`` (images),
    ``same_data`` and ``same_ciphertext`` ([A, B] pairs), each a list or
    None, and ``key_file``: the key file of --check and --same-data."""
    checks = []
    for option, opens in (("opens", True), ("refuses", False)):
        for image, key in getattr(request, option) or ():
            flag = "--" + option
            checks.append(Check(PASSPHRASE, check_name(PASSPHRASE, [image], [key], opens=opens),
                                [existing(flag, image)], [existing(flag, key, is_key=True)], opens=opens))
    key = request.key_file and existing("--key-file", request.key_file, is_key=True)
    for image in request.check or ():
        checks.append(Check(CHECK, check_name(CHECK, [image]), [existing("--check", image)], [key]))
    for kind, pairs in ((SAME_DATA, request.same_data), (SAME_CIPHERTEXT, request.same_ciphertext)):
        flag = "--" + kind
        for pair in pairs or ():
            keys = [key, key] if kind == SAME_DATA else [None, None]
            checks.append(Check(kind, check_name(kind, pair), [existing(flag, p) for p in pair], keys))
    return checks
