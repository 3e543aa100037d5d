# SPDX-License-Identifier: LGPL-2.1-or-later
"""Each cryptsetup verb pyqcrypt spells as cryptsetup does, run by both
tools on copies of the same LUKS1 or LUKS2 volume: their exit codes, their
stdout, and the two copies afterwards as cryptsetup sees them (luksDump
with random salts, digests and UUIDs masked, nothing else; the header
backup a verb wrote; the UUID; which passphrases open it).  One success and one
failure case per verb.  Used by tests/test_cryptsetup_parity.py and
ci/parity_cryptsetup.py (which prints the table); needs no pytest."""

import contextlib
import os
import re
import shutil
import subprocess
import sys

PW1, PW2, PW3, WRONG = b"parity-one", b"parity-two", b"parity-three", b"parity-wrong"
NEW_UUID = "0b9d8f6e-25c4-4a6f-9c1e-3f7a2d5b8c41"
COST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
SIZE = {1: 4 << 20, 2: 24 << 20}


# (version, verb, case) -> why pyqcrypt differs there, on purpose.
KNOWN = {
    (2, "luksChangeKey", "success"):
        "the new passphrase lands in a free keyslot (here 2) and then the old one is destroyed; "
        "cryptsetup keeps the keyslot number (new key material, same id)",
}
for _v in (1, 2):
    KNOWN[(_v, "luksAddKey", "image locked")] = (
        "pyqcrypt honours QEMU's image locks (held here as a QEMU writing the volume holds them) "
        "and exits 5, cryptsetup's 'busy'; cryptsetup does not look at them and adds the key")


def cryptsetup():
    return shutil.which("cryptsetup") or "/usr/sbin/cryptsetup"


def _write(path, data):
    with open(path, "wb") as fh:
        fh.write(data)
    return path


class Scene:
    """The files one case needs, in *root*: key files k1 (slot 0), k2
    (slot 1), k3 (new), wrong; the source volume ``src`` (LUKS *version*,
    two keyslots), its header backup, a plain file and a missing path."""

    def __init__(self, root, version):
        self.root, self.version = root, version
        self.k1, self.k2, self.k3, self.wrong = (_write(os.path.join(root, n), pw) for n, pw in
                                                 (("k1", PW1), ("k2", PW2), ("k3", PW3),
                                                  ("wrong", WRONG)))
        self.src = os.path.join(root, "src")
        self.blank = self._blank("blank")
        shutil.copyfile(self.blank, self.src)
        _run([cryptsetup(), "luksFormat", "-q", "--type", "luks%d" % version, *COST, "-d", self.k1,
              self.src], check=True)
        _run([cryptsetup(), "luksAddKey", *COST, "-d", self.k1, self.src, self.k2], check=True)
        self.backup = os.path.join(root, "src.backup")
        _run([cryptsetup(), "luksHeaderBackup", self.src, "--header-backup-file", self.backup],
             check=True)
        self.plain = _write(os.path.join(root, "plain"), bytes(1 << 20))
        self.missing = os.path.join(root, "missing")

    def _blank(self, name):
        path = os.path.join(self.root, name)
        with open(path, "wb") as fh:
            fh.truncate(SIZE[self.version])
        return path

    def fresh_pair(self, source):
        """Two copies of *source* (None: the LUKS volume): cryptsetup's, pyqcrypt's."""
        pair = []
        for who in ("cs", "pyq"):
            path = os.path.join(self.root, who + ".vol")
            for stale in (path, path + ".bak"):
                if os.path.exists(stale):
                    os.unlink(stale)
            shutil.copyfile(source or self.src, path)
            pair.append(path)
        return pair


# verb -> {case: (source ("luks", "blank", "plain"), args with DEV for the device)}
def cases(scene):
    s = scene
    t = "luks%d" % s.version
    return {
        "luksFormat": {"success": ("blank", ["-q", "--type", t, *COST, "-d", s.k1, "DEV"]),
                       "missing device": ("missing", ["-q", "--type", t, *COST, "-d", s.k1, "DEV"])},
        "luksDump": {"success": ("luks", ["DEV"]),
                     "missing device": ("missing", ["DEV"])},
        "luksAddKey": {"success": ("luks", [*COST, "-d", s.k1, "DEV", s.k3]),
                       "wrong passphrase": ("luks", [*COST, "-d", s.wrong, "DEV", s.k3]),
                       "image locked": ("luks-held", [*COST, "-d", s.k1, "DEV", s.k3])},
        "luksRemoveKey": {"success": ("luks", ["-q", "-d", s.k2, "DEV"]),
                          "wrong passphrase": ("luks", ["-q", "-d", s.wrong, "DEV"])},
        "luksChangeKey": {"success": ("luks", [*COST, "-d", s.k1, "DEV", s.k3]),
                          "wrong passphrase": ("luks", [*COST, "-d", s.wrong, "DEV", s.k3])},
        "luksKillSlot": {"success": ("luks", ["-d", s.k1, "DEV", "1"]),
                         "wrong passphrase": ("luks", ["-d", s.wrong, "DEV", "1"])},
        "luksErase": {"success": ("luks", ["-q", "DEV"]),
                      "missing device": ("missing", ["-q", "DEV"])},
        "luksHeaderBackup": {"success": ("luks", ["DEV", "--header-backup-file", "DEV.bak"]),
                             "missing device": ("missing", ["DEV", "--header-backup-file", "DEV.bak"])},
        "luksHeaderRestore": {"success": ("luks-changed", ["-q", "DEV", "--header-backup-file",
                                                           s.backup]),
                              "missing backup": ("luks", ["-q", "DEV", "--header-backup-file",
                                                          s.missing])},
        "isLuks": {"success": ("luks", ["DEV"]), "not LUKS": ("plain", ["DEV"])},
        "luksUUID": {"success": ("luks", ["DEV"]), "not LUKS": ("plain", ["DEV"])},
        "luksUUID --uuid": {"success": ("luks", ["--uuid", NEW_UUID, "DEV"]),
                            "bad UUID": ("luks", ["--uuid", "not-a-uuid", "DEV"])},
    }


_HEX = re.compile(r"(?m)^(\s*(?:[A-Za-z ]+:)?\s*)(?:[0-9a-f]{2} )+[0-9a-f]{2} ?$")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def masked(text):
    """luksDump text with what cryptsetup makes up at random (salts,
    digests, UUIDs) masked, and the device's name made the same."""
    text = _HEX.sub(lambda m: m.group(1) + "<hex>", text)
    text = _UUID.sub("<uuid>", text)
    return re.sub(r"(?m)^(LUKS header information for ).*$", r"\1<device>", text)


def _run(argv, check=False):
    proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), proc.stderr.decode(errors="replace")))
    return proc


def _dump(path):
    """luksDump of *path* by cryptsetup (masked), or None when it is no LUKS volume."""
    if not os.path.exists(path):
        return None
    proc = _run([cryptsetup(), "luksDump", path])
    return masked(proc.stdout.decode()) if proc.returncode == 0 else None


def _backup_bytes(path):
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        return fh.read()


class Outcome:
    """What both tools did in one case."""

    def __init__(self, verb, case, theirs, ours, after):
        self.verb, self.case = verb, case
        self.cs_exit, self.pyq_exit = theirs.returncode, ours.returncode
        self.stdout_same = masked(theirs.stdout.decode()) == masked(ours.stdout.decode())
        self.after_same = after[0] == after[1]
        self.stderr = (theirs.stderr.decode(errors="replace"), ours.stderr.decode(errors="replace"))

    def same(self):
        return self.cs_exit == self.pyq_exit and self.stdout_same and self.after_same


def run_case(scene, verb, case):
    source, args = cases(scene)[verb][case]
    if source == "luks-changed":        # keyslot 1 killed since the backup was taken
        pair = scene.fresh_pair(None)
        for dev in pair:
            _run([cryptsetup(), "luksKillSlot", "-q", dev, "1"], check=True)
    elif source == "missing":
        pair = [scene.missing, scene.missing]
    else:
        pair = scene.fresh_pair({"luks": None, "luks-held": None, "blank": scene.blank,
                                 "plain": scene.plain}[source])
    name = verb.split()[0]
    results = []
    for tool, dev in zip(([cryptsetup()], [sys.executable, "-m", "pyqcrypt"]), pair):
        argv = tool + [name] + [dev + a[3:] if a.startswith("DEV") else a for a in args]
        with _held(dev, source == "luks-held"):
            results.append(_run(argv))
    return Outcome(verb, case, results[0], results[1], [_after(scene, dev) for dev in pair])


@contextlib.contextmanager
def _held(path, hold):
    """While the block runs, this process holds QEMU's lock bytes on *path*
    as a QEMU writing it would (when *hold*)."""
    if not hold:
        yield
        return
    from pyqcrypt.locks import lock_image
    from pyqcrypt.storage import Storage
    with Storage(path, writable=True) as st:
        lock_image(st, mode="exclusive")
        yield


def _after(scene, dev):
    """What a volume looks like after a case, to cryptsetup: its masked
    luksDump, the header backup made of it, whether its UUID is the one
    luksUUID --uuid sets (others are random), and which key files open it."""
    if not os.path.exists(dev):
        return None
    opens = [_run([cryptsetup(), "open", "--test-passphrase", "-d", k, dev]).returncode == 0
             for k in (scene.k1, scene.k2, scene.k3)]
    uuid = _run([cryptsetup(), "luksUUID", dev]).stdout.decode().strip()
    return _dump(dev), _backup_bytes(dev + ".bak"), uuid == NEW_UUID, opens


class _Names:
    """Stand-in paths: enough of a Scene to list the cases."""
    version = 1
    k1 = k2 = k3 = wrong = backup = missing = "x"


def case_list():
    """Every (verb, case) pair, in table order."""
    return [(verb, case) for verb, by_case in cases(_Names()).items() for case in by_case]
