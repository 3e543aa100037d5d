# SPDX-License-Identifier: LGPL-2.1-or-later
"""cryptsetup's command names (luksDump, luksAddKey, luksKillSlot, ...)
are accepted as they are in cryptsetup: a script's ``cryptsetup luksDump
VOL`` line runs unchanged with pyqcrypt in its place.  Each is compared
with cryptsetup on copies of the same volume: the same exit code, and the
same ``luksDump`` output after the change.  Every verb on LUKS1 and LUKS2,
with a success and a failure case each (luksDump's output included), is in
test_cryptsetup_parity; the cases here are those it does not run (the last
keyslot, -q without a passphrase, isLuks's and luksUUID's edge inputs)."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import cs_format, tool

PW, PW2 = b"names-one", b"names-two"


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *args], capture_output=True,
                          stdin=subprocess.DEVNULL)


def _cs(*args):
    return subprocess.run([tool("cryptsetup"), *args], capture_output=True, stdin=subprocess.DEVNULL)


def _keys(workdir):
    paths = []
    for name, pw in (("k1", PW), ("k2", PW2)):
        path = os.path.join(workdir, name)
        with open(path, "wb") as fh:
            fh.write(pw)
        paths.append(path)
    return paths


def _slots(vol):
    """luksDump's keyslot lines (which slots are enabled), by cryptsetup."""
    out = _cs("luksDump", vol).stdout.decode().splitlines()
    return [line for line in out if line.startswith("Key Slot")]


@pytest.mark.parametrize("verb", ["luksAddKey", "luksKillSlot", "luksRemoveKey", "luksChangeKey",
                                  "luksErase"])
def test_keyslot_verbs_under_cryptsetups_names(workdir, verb):
    k1, k2 = _keys(workdir)
    src = cs_format(workdir, "src.luks", PW)
    a, b = os.path.join(workdir, "a.luks"), os.path.join(workdir, "b.luks")
    shutil.copyfile(src, a)
    shutil.copyfile(src, b)
    cost = ["--pbkdf-force-iterations", "1000"]
    args = {"luksAddKey": ["-d", k1] + cost,
            "luksKillSlot": ["-q"],
            "luksRemoveKey": ["-q", "-d", k1],
            "luksChangeKey": ["-d", k1] + cost,
            "luksErase": ["-q"]}[verb]
    tail = {"luksAddKey": [k2], "luksKillSlot": ["0"], "luksChangeKey": [k2]}.get(verb, [])
    theirs = _cs(verb, *args, a, *tail)
    ours = _pyq(verb, *args, b, *tail)
    assert ours.returncode == theirs.returncode, (ours.stderr, theirs.stderr)
    assert _slots(a) == _slots(b)
    if verb in ("luksAddKey", "luksChangeKey"):
        for vol in (a, b):
            assert _cs("open", "--test-passphrase", "-d", k2, vol).returncode == 0


def test_help_names_both_spellings():
    out = _pyq("--help").stdout.decode()
    for name in ("luksFormat", "luksDump", "luksAddKey", "luksRemoveKey", "luksChangeKey",
                 "luksKillSlot", "luksErase", "luksHeaderBackup", "luksHeaderRestore"):
        assert "(%s)" % name in out, name
        assert _pyq(name, "--help").returncode == 0


def test_is_luks_and_luks_uuid_answer_as_cryptsetup(workdir):
    v1 = cs_format(workdir, "v1.luks", PW)
    v2 = cs_format(workdir, "v2.luks", PW, size=24 << 20, extra=("--type", "luks2", "--pbkdf", "pbkdf2"))
    plain = os.path.join(workdir, "plain")
    with open(plain, "wb") as fh:
        fh.write(bytes(1 << 20))
    short = os.path.join(workdir, "short")
    with open(short, "wb") as fh:
        fh.write(b"LUKS\xba\xbe")
    missing = os.path.join(workdir, "missing")
    for dev in (v1, v2, plain, short, missing):
        for extra in ([], ["-v"], ["--type", "luks1"], ["--type", "luks2"], ["-v", "--type", "luks2"]):
            ours, theirs = _pyq("isLuks", *extra, dev), _cs("isLuks", *extra, dev)
            assert (ours.returncode, ours.stdout, ours.stderr) == \
                (theirs.returncode, theirs.stdout, theirs.stderr), (dev, extra, ours, theirs)
        ours, theirs = _pyq("luksUUID", dev), _cs("luksUUID", dev)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), (dev, ours, theirs)
