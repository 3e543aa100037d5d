# SPDX-License-Identifier: LGPL-2.1-or-later
"""The four checks of ``pyqcrypt verify``, each a function of a Check and
the Tools: it returns what it found (a line for the report) or raises
CheckFailed with what went wrong, naming every tool's answer.

* passphrase: pyqcrypt unlocks the image with the key (LUKS1 and
  qcow2-luks through its own keyslot code, LUKS2 through its open); for a
  LUKS1 or LUKS2 volume or detached header ``cryptsetup open
  --test-passphrase`` must give the same answer and keyslot, for a
  qcow2-luks image ``qemu-img check`` must open it or refuse the key too;
* check: ``qemu-img check`` and ``pyqcrypt check`` (``--output json``)
  must agree on the exit status and the counts, and find nothing;
* same-data: the plaintext of two images is equal (compare_images, what
  ``pyqcrypt compare`` runs);
* same-ciphertext: a keep-ciphertext pair stores the same ciphertext
  (compare_ciphertext, what ``pyqcrypt compare --ciphertext`` runs).

Passphrases are read from their key files into SecretBuffers and wiped
when the check ends; cryptsetup reads them on its standard input, and
qemu-img's secret object names the key file: no secret is ever in an
argument list, a message or a report.
"""

import json
import re
import subprocess
import sys

from ..errors import Error, WrongPassphrase

COMMAND_TIMEOUT = 600


class CheckFailed(Exception):
    """A check's failure; the message says what each side answered."""


class Tools:
    """The qemu-img and cryptsetup to run (paths or names on PATH), and
    the command that runs this pyqcrypt."""

    __slots__ = ("qemu_img", "cryptsetup", "pyqcrypt")

    def __init__(self, qemu_img=None, cryptsetup=None):
        self.qemu_img = qemu_img or "qemu-img"
        self.cryptsetup = cryptsetup or "cryptsetup"
        self.pyqcrypt = [sys.executable, "-m", "pyqcrypt"]


def _run(argv, secret=None):
    """Run a tool; *secret* (a SecretBuffer) goes to its standard input
    straight from its buffer (subprocess writes memoryview slices, no copy)."""
    try:
        return subprocess.run(argv, input=None if secret is None else secret.writable_view(),
                              capture_output=True, timeout=COMMAND_TIMEOUT)
    except OSError as exc:
        raise CheckFailed("cannot run %s: %s" % (argv[0], exc.strerror or exc)) from None
    except subprocess.TimeoutExpired:
        raise CheckFailed("%s did not finish within %d s" % (argv[0], COMMAND_TIMEOUT)) from None


def _last_line(data):
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no message"


def _read_key(path):
    from ..secrets import read_key_file
    return read_key_file(path)


# -- passphrase ----------------------------------------------------------------------------------
def _luks_kind(check):
    """"luks1", "luks2" or "qcow2" for the image (or detached header)."""
    from ..luks.magic import luks_version
    from ..qcow2.open import is_qcow2
    version = luks_version(check.header or check.images[0])
    if version is not None:
        return "luks%d" % version
    if check.header is None and is_qcow2(check.images[0]):
        return "qcow2"
    raise CheckFailed("%s is neither a LUKS volume nor a qcow2 image" % (check.header or check.images[0]))


def _pyqcrypt_slot(check, kind, secret):
    """The keyslot pyqcrypt opens with *secret*, or None when it refuses."""
    path = check.images[0]
    try:
        if kind == "luks2":
            from ..image import open_image
            with open_image(path, secret, header=check.header, format="luks") as img:
                return img.keyslot
        from ..image import open_luks_area
        from ..luks.keyslots import unlock
        with open_luks_area(path, header=check.header) as area:
            slot, master_key = unlock(area, secret)
            master_key.wipe()
            return slot
    except WrongPassphrase:
        return None
    except Error as exc:
        raise CheckFailed("pyqcrypt cannot open %s: %s" % (path, exc)) from None


def _cryptsetup_slot(check, tools, secret):
    """The keyslot ``cryptsetup open --test-passphrase`` opens, or None."""
    argv = [tools.cryptsetup, "open", "--test-passphrase", "-v", "--key-file", "-"]
    if check.header:
        argv += ["--header", check.header]
    proc = _run(argv + [check.images[0]], secret)
    if proc.returncode == 2 or proc.returncode == 1 and b"No usable keyslot" in proc.stderr:
        return None
    found = re.search(rb"Key slot (\d+) unlocked", proc.stdout)
    if proc.returncode != 0 or not found:
        raise CheckFailed("cryptsetup open --test-passphrase exited %d: %s"
                          % (proc.returncode, _last_line(proc.stderr)))
    return int(found.group(1))


def _qemu_opens(check, tools):
    """True when ``qemu-img check`` opens the qcow2-luks image with the
    key (it unlocks the image before checking it), False when it says no
    keyslot opens."""
    proc = _run([tools.qemu_img, "check", "--output", "json"] + _check_args(check))
    if proc.returncode in (0, 2, 3):
        return True
    if b"Invalid password" in proc.stderr:
        return False
    raise CheckFailed("qemu-img check exited %d: %s" % (proc.returncode, _last_line(proc.stderr)))


def _answer(slot):
    return "refuses" if slot is None else "opens keyslot %d" % slot


def _peer(check, kind, tools, secret, ours):
    """(the peer tool, its answer): cryptsetup's keyslot for a LUKS volume
    or header; for a qcow2-luks image, whether qemu-img opens it (it names
    no keyslot: *ours* when both open)."""
    if kind != "qcow2":
        return "cryptsetup", _cryptsetup_slot(check, tools, secret)
    if not _qemu_opens(check, tools):
        return "qemu-img", None
    return "qemu-img", -1 if ours is None else ours


def passphrase(check, tools):
    kind = _luks_kind(check)
    secret = _read_key(check.keys[0])
    try:
        ours = _pyqcrypt_slot(check, kind, secret)
        peer, theirs = _peer(check, kind, tools, secret, ours)
    finally:
        secret.wipe()
    if ours != theirs:
        raise CheckFailed("pyqcrypt and %s disagree: pyqcrypt %s, %s %s" % (
            peer, _answer(ours), peer, "opens" if theirs == -1 else _answer(theirs)))
    who = "pyqcrypt and %s" % peer
    if not check.opens:
        if ours is not None:
            raise CheckFailed("the key must be refused, but %s open keyslot %d with it" % (who, ours))
        return "refused by %s" % who
    if ours is None:
        raise CheckFailed("no keyslot opens with the key (%s refuse it)" % who)
    if check.slot is not None and ours != check.slot:
        raise CheckFailed("the key opens keyslot %d, not keyslot %d (%s)" % (ours, check.slot, who))
    return "keyslot %d opens (%s)" % (ours, who)


# -- check ---------------------------------------------------------------------------------------
def _check_args(check):
    """The image arguments of both tools' check: the file name, or for an
    encrypted qcow2 its options with the key file as a secret object."""
    path, key = check.images[0], check.keys[0]
    if key is None:
        return [path]
    return ["--object", "secret,id=verify0,file=%s" % key.replace(",", ",,"), "--image-opts",
            "driver=qcow2,file.filename=%s,encrypt.key-secret=verify0" % path.replace(",", ",,")]


COUNTS = (("leaks", "leaked clusters"), ("corruptions", "corruptions"), ("check-errors", "check errors"))


def _findings(proc):
    """(exit status, counts or None) of one tool's check --output json."""
    try:
        report = json.loads(proc.stdout.decode("utf-8"))
        counts = tuple(int(report.get(name, 0)) for name, _ in COUNTS)
    except (ValueError, TypeError, AttributeError):
        counts = None
    return proc.returncode, counts


def _describe(tool, proc, findings):
    rc, counts = findings
    if counts is None:
        return "%s exited %d (%s)" % (tool, rc, _last_line(proc.stderr))
    return "%s exited %d: %s" % (tool, rc, ", ".join("%d %s" % (n, label)
                                                    for n, (_, label) in zip(counts, COUNTS)))


def qemu_check(check, tools):
    from ..qcow2.open import is_qcow2, qcow2_encrypted
    path = check.images[0]
    try:
        if not is_qcow2(path):
            raise CheckFailed("%s is not a qcow2 image (only qcow2 has consistency checks)" % path)
        encrypted = qcow2_encrypted(path)
        if encrypted and check.keys[0] is None:
            raise CheckFailed("%s is encrypted: qemu-img check opens it only with its key (give key)" % path)
    except Error as exc:
        raise CheckFailed(str(exc)) from None
    image = _check_args(check) if encrypted else [path]
    theirs = _run([tools.qemu_img, "check", "--output", "json"] + image)
    ours = _run(tools.pyqcrypt + ["check", "--output", "json"] + image)
    found_theirs, found_ours = _findings(theirs), _findings(ours)
    both = "%s; %s" % (_describe("qemu-img check", theirs, found_theirs),
                       _describe("pyqcrypt check", ours, found_ours))
    if found_theirs != found_ours:
        raise CheckFailed("the tools disagree: " + both)
    if found_theirs != (0, (0, 0, 0)):
        raise CheckFailed(both)
    return "clean: " + both


# -- same-data and same-ciphertext ---------------------------------------------------------------
def _open(path, key_path):
    from ..image import open_image
    secret = None if key_path is None else _read_key(key_path)
    try:
        return open_image(path, secret)
    finally:
        if secret is not None:
            secret.wipe()


def same_data(check, tools):
    from ..compare_images import CompareRequest, compare_images
    said = []
    try:
        with _open(check.images[0], check.keys[0]) as a, _open(check.images[1], check.keys[1]) as b:
            sizes = (a.size, b.size)
            same = compare_images(CompareRequest(a, b, check.images[0], check.images[1], say=said.append))
    except Error as exc:
        raise CheckFailed(str(exc)) from None
    if same != 0:
        raise CheckFailed(" ".join(said))
    note = "" if sizes[0] == sizes[1] else " (sizes %d and %d bytes; the excess reads as zeros)" % sizes
    return "the plaintext is identical%s" % note


def same_ciphertext(check, tools):
    from ..compare_ciphertext import compare_ciphertext
    said = []
    try:
        same = compare_ciphertext(check.images[0], check.images[1], say=said.append, strict=True)
    except Error as exc:
        raise CheckFailed(str(exc)) from None
    if same != 0:
        raise CheckFailed(" ".join(said))
    return "the stored ciphertext is identical"


RUNNERS = {"passphrase": passphrase, "check": qemu_check, "same-data": same_data,
           "same-ciphertext": same_ciphertext}
