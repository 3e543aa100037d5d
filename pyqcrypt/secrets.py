# SPDX-License-Identifier: LGPL-2.1-or-later
"""Where passphrases and keys come from, for every command and the API.

* QEMU's secret objects: ``secret,id=ID,file=PATH`` or ``data=...``, with
  ``format=raw|base64`` and, for a secret encrypted under another one,
  ``keyid=ID,iv=BASE64`` (AES-256-CBC, the padding QEMU strips).  ``data=``
  works but warns: every user of the machine can read a process's argv.
* cryptsetup's key files: ``--key-file PATH`` (``-`` for standard input),
  with ``--keyfile-offset`` and ``--keyfile-size``; the whole file is the
  key, newlines and NUL bytes included.
* QEMU's ``secret_keyring,id=ID,serial=N``: a key in the Linux kernel
  keyring, read with keyctl(KEYCTL_READ), where the kernel permits.
* A prompt without echo when standard input is a terminal.

Every secret comes back as a SecretBuffer; messages name ids and paths,
never contents.
"""

import base64
import binascii
import os
import sys

from .crypto.keybuf import SecretBuffer
from .crypto.oneshot import cipher_oneshot
from .errors import Error

MAX_KEYFILE_BYTES = 8 << 20          # cryptsetup's default key file limit
MAX_PASSPHRASE_BYTES = 512           # cryptsetup's interactive limit


def split_options(text):
    """QEMU-style ``a=b,c=d`` (a doubled comma is a literal comma)."""
    items, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    items.append("".join(cur))
    return [item for item in items if item != ""]


def parse_options(text, implied_key=None, redact=False):
    """``k=v,...`` into an ordered dict; a bare first word becomes
    *implied_key* (``secret,id=x`` -> {"qom-type": "secret", ...}).  With
    *redact*, errors never quote the text (it may hold a secret)."""
    out = {}
    for n, item in enumerate(split_options(text)):
        key, eq, value = item.partition("=")
        if not eq:
            if n == 0 and implied_key:
                key, value = implied_key, item
            elif redact:
                raise Error("an --object parameter has no value (a ',' inside a value must be "
                            "doubled: ',,')")
            else:
                raise Error("option %r needs a value (key=value)" % key)
        if key in out:
            raise Error("option %s given twice" % ("in --object" if redact else repr(key)))
        out[key] = value
    return out


class SecretStore:
    """The ``--object secret,...`` definitions of one command line."""

    def __init__(self, warn=None):
        self._defs = {}
        self._cache = {}
        self._warn = warn if warn is not None else (lambda msg: print("pyqcrypt: warning: " + msg,
                                                                     file=sys.stderr))

    def add_object(self, text):
        """One ``--object``: ``secret,id=ID,...`` or its JSON form
        ``{"qom-type": "secret", "id": ID, ...}``, as qemu-img takes both."""
        if text.lstrip().startswith("{"):
            opts = _json_object(text)
        else:
            opts = parse_options(text, implied_key="qom-type", redact=True)
        kind = opts.pop("qom-type", None)
        if kind not in ("secret", "secret_keyring"):
            raise Error("unsupported --object type (pyqcrypt understands secret and secret_keyring)")
        sid = opts.get("id")
        if not sid:
            raise Error("a secret object needs an id")
        if sid in self._defs:
            raise Error("secret id %r defined twice" % sid)
        allowed = {"id", "format", "keyid", "iv"} | (
            {"serial"} if kind == "secret_keyring" else {"data", "file"})
        if set(opts) - allowed:
            raise Error("secret %r: unknown parameter (allowed: %s)" % (sid, ", ".join(sorted(allowed))))
        if kind == "secret_keyring":
            try:
                opts["serial"] = int(opts.get("serial", ""), 0)
            except ValueError:
                raise Error("secret_keyring %r needs serial=N (a key's serial number)" % sid) from None
        elif ("data" in opts) == ("file" in opts):
            raise Error("secret %r needs exactly one of data= or file=" % sid)
        if opts.get("format", "raw") not in ("raw", "base64"):
            raise Error("secret %r: format must be raw or base64" % sid)
        if ("keyid" in opts) != ("iv" in opts):
            raise Error("secret %r: keyid= and iv= go together" % sid)
        if "data" in opts:
            self._warn("secret %r is given with data=, which every user of this machine can read "
                       "in the process list; prefer file=" % sid)
        self._defs[sid] = opts

    def __repr__(self):
        """The ids defined (and how many are loaded), never a secret."""
        return "<SecretStore ids=%r, %d loaded>" % (sorted(self._defs), len(self._cache))

    def get(self, sid):
        """The secret *sid* as a SecretBuffer (owned by the store)."""
        if sid not in self._defs:
            raise Error("no secret object with id %r (define it with --object secret,id=%s,file=...)"
                        % (sid, sid))
        if sid not in self._cache:
            self._cache[sid] = self._load(sid, set())
        return self._cache[sid]

    def _load(self, sid, seen):
        if sid in seen:
            raise Error("secret %r is encrypted under itself" % sid)
        seen = seen | {sid}
        opts = self._defs[sid]
        if "serial" in opts:
            raw = read_keyring(opts["serial"], sid)
        elif "data" in opts:
            raw = SecretBuffer.from_bytes(opts["data"].encode("utf-8"))
        else:
            raw = read_key_file(opts["file"])
        fmt = opts.get("format", "raw")
        if "keyid" in opts:
            if opts["keyid"] not in self._defs:
                raise Error("secret %r: key secret %r is not defined" % (sid, opts["keyid"]))
            with raw:
                ciphertext = _b64(raw, sid) if fmt == "base64" else SecretBuffer.from_bytes(raw.writable_view())
            key = self._cache.get(opts["keyid"]) or self._load(opts["keyid"], seen)
            self._cache.setdefault(opts["keyid"], key)
            try:
                iv = base64.b64decode(opts["iv"], validate=True)
            except (binascii.Error, ValueError):
                raise Error("secret %r: iv is not valid base64" % sid) from None
            if len(key) != 32:
                raise Error("secret %r: key secret %r must be 32 bytes for AES-256, not %d"
                            % (sid, opts["keyid"], len(key)))
            if len(iv) != 16:
                raise Error("secret %r: iv must be 16 bytes, not %d" % (sid, len(iv)))
            if len(ciphertext) == 0 or len(ciphertext) % 16:
                raise Error("secret %r: encrypted data must be a non-empty multiple of 16 bytes" % sid)
            with ciphertext, cipher_oneshot("AES-256-CBC", key, iv, ciphertext, False) as plain:
                # QEMU strips as many bytes as the last byte says.
                pad = plain.byte(len(plain) - 1)
                if pad > len(plain):
                    raise Error("secret %r: incorrect number of padding bytes (wrong key or iv?)" % sid)
                return plain.slice(0, len(plain) - pad)
        if fmt == "base64":
            with raw:
                return _b64(raw, sid)
        return raw

    def close(self):
        for buf in self._cache.values():
            buf.wipe()
        self._cache.clear()


def _json_object(text):
    """The JSON form of an --object as a dict of strings (numbers, such as
    a keyring serial, become their decimal text).  Errors never quote the
    text: it may hold a secret."""
    import json

    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                raise Error("option given twice in --object")
            out[key] = value
        return out
    try:
        obj = json.loads(text, object_pairs_hook=pairs)
    except ValueError:
        raise Error("an --object starting with '{' is not valid JSON") from None
    if not isinstance(obj, dict):
        raise Error("an --object in JSON form must be an object {...}")
    out = {}
    for key, value in obj.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise Error("--object parameter %r must be a string or an integer" % key[:32])
        out[key] = value if isinstance(value, str) else str(value)
    return out


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64_ALPHABET)}


def _b64(buf, sid):
    """Decode the base64 text held in SecretBuffer *buf* straight into a
    new SecretBuffer, a group of four characters at a time: no copy of the
    secret is ever made as immutable ``bytes``, which could not be wiped
    (SECURITY.md).  As strict as ``base64.b64decode(validate=True)``: the
    alphabet only, and '=' padding only to complete the last group."""
    text = buf.cdata                    # unsigned char *: indexing gives ints
    n = len(buf)
    bad = Error("secret %r is not valid base64" % sid)
    pad = 0
    while pad < min(n, 2) and text[n - 1 - pad] == 0x3d:
        pad += 1
    if n % 4:
        raise bad
    out = SecretBuffer(n // 4 * 3 - pad)
    view = out.cdata
    try:
        for group in range(0, n, 4):
            word = 0
            for i in range(group, group + 4):
                ch = text[i]
                if ch == 0x3d and i >= n - pad:            # "=" in the padding
                    word <<= 6
                    continue
                value = _B64_VALUE.get(ch)
                if value is None:
                    raise bad
                word = word << 6 | value
            at = group // 4 * 3
            for k in range(min(3, len(out) - at)):
                view[at + k] = word >> (16 - 8 * k) & 0xff
        return out
    except BaseException:
        out.wipe()
        raise
    finally:
        word = value = 0


def read_keyring(serial, sid="?"):
    """A key's payload from the kernel keyring (keyctl KEYCTL_READ)."""
    from ._native import os_native
    ffi, lib = os_native()
    n = lib.pyq_keyctl_read(serial, ffi.NULL, 0)
    if n < 0:
        raise Error("secret_keyring %r: cannot read key %d: %s" % (sid, serial, os.strerror(-n)))
    if n > MAX_KEYFILE_BYTES:
        raise Error("secret_keyring %r: key %d is larger than %d bytes" % (sid, serial, MAX_KEYFILE_BYTES))
    buf = SecretBuffer(max(n, 1))
    got = lib.pyq_keyctl_read(serial, buf.cdata, len(buf))
    if got < 0:
        buf.wipe()
        raise Error("secret_keyring %r: cannot read key %d: %s" % (sid, serial, os.strerror(-got)))
    out = buf.slice(0, min(got, n))
    buf.wipe()
    return out


def read_key_file(path, offset=0, size=None, limit=MAX_KEYFILE_BYTES):
    """A key file's bytes (``-``: standard input), cryptsetup style."""
    if offset < 0 or (size is not None and size < 0):
        raise Error("key file offset and size must not be negative")
    if path == "-":
        fh = sys.stdin.buffer
        close = False
    else:
        try:
            fh = open(path, "rb", buffering=0)
        except OSError as exc:
            raise Error("cannot read key file %s: %s" % (path, exc.strerror or exc)) from None
        close = True
    buf = None
    try:
        try:
            if offset:
                if fh.seekable():
                    fh.seek(offset)
                else:
                    _skip(fh, offset)
            want = limit + 1 if size is None else size
            buf = SecretBuffer(want)
            view = buf.writable_view()
            got = 0
            while got < want:
                n = fh.readinto(memoryview(view)[got:])
                if not n:
                    break
                got += n
        except OSError as exc:
            if buf is not None:
                buf.wipe()
            raise Error("cannot read key file %s: %s" % (path, exc.strerror or exc)) from None
        if size is None and got > limit:
            buf.wipe()
            raise Error("key file %s is larger than %d bytes" % (path, limit))
        if size is not None and got < size:
            buf.wipe()
            raise Error("key file %s is shorter than the requested %d bytes" % (path, size))
        out = buf.slice(0, got)
        buf.wipe()
        return out
    finally:
        if close:
            fh.close()


def _skip(fh, count):
    while count:
        chunk = fh.read(min(count, 65536))
        if not chunk:
            raise Error("key file ends before the requested offset")
        count -= len(chunk)


def prompt_passphrase(prompt, confirm=False):
    """Read a passphrase from the terminal without echo (bytes, wiped)."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise Error("no passphrase source: give --key-file (or an --object secret), or run on a "
                    "terminal") from None
    first = None
    try:
        first = _read_tty(tty, prompt)
        if confirm:
            with _read_tty(tty, "Verify passphrase: ") as second:
                if not first.equals(second):
                    first.wipe()
                    raise Error("passphrases do not match")
        return first
    except OSError as exc:
        if first is not None:
            first.wipe()
        raise Error("reading the passphrase from the terminal failed: %s"
                    % (exc.strerror or exc)) from None
    finally:
        try:
            os.close(tty)
        except OSError:
            pass


def _read_tty(fd, prompt):
    import termios
    old = termios.tcgetattr(fd)
    new = list(old)
    new[3] &= ~termios.ECHO
    # Echo off (discarding stale input) before the prompt appears, so an
    # answer typed right after the prompt is neither echoed nor thrown away.
    termios.tcsetattr(fd, termios.TCSAFLUSH, new)
    os.write(fd, prompt.encode())
    buf = SecretBuffer(MAX_PASSPHRASE_BYTES + 1)
    got = 0
    try:
        view = buf.writable_view()
        while got <= MAX_PASSPHRASE_BYTES:
            ch = os.read(fd, 1)
            if not ch or ch == b"\n":
                break
            view[got:got + 1] = ch
            got += 1
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, old)
        os.write(fd, b"\n")
    if got > MAX_PASSPHRASE_BYTES:
        buf.wipe()
        raise Error("passphrase longer than %d bytes" % MAX_PASSPHRASE_BYTES)
    out = buf.slice(0, got)
    buf.wipe()
    return out
