# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keyslot salts, master-key digest salts and volume UUIDs of new LUKS1
headers are random: distinct across volumes and across keyslots, never all
zero, and every UUID a version-4 (random) one.

A salt that repeats (or is zero) lets one precomputed PBKDF2 table attack
every volume; a UUID that repeats makes udev and cryptsetup confuse two
volumes.  Every path that makes a header is covered: ``pyqcrypt.create``
(raw LUKS1, attached and detached, and qcow2-luks), ``format`` (the API and
the CLI) and ``add-key`` into every free slot.  The headers are read with
the test-side parser (conftest.parse_luks1), not pyqcrypt's.
"""

import os
import struct
import subprocess
import sys
import uuid

import pyqcrypt
from pyqcrypt import luks
from pyqcrypt.luks.device import format_device

from conftest import parse_luks1, write_file

PW = b"randomness guard"
VOLUMES = 8
EXT_FDE = 0x0537BE77


def _header(path, offset=0):
    with open(path, "rb") as fh:
        fh.seek(offset)
        return parse_luks1(fh.read(592))


def _fde_offset(path):
    """The offset of a qcow2-luks image's LUKS header (FDE extension),
    parsed here with struct."""
    with open(path, "rb") as fh:
        data = fh.read(1 << 16)
    assert data[:4] == b"QFI\xfb"
    version = struct.unpack_from(">I", data, 4)[0]
    pos = struct.unpack_from(">I", data, 100)[0] if version >= 3 else 72
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from(">II", data, pos)
        assert kind != 0, "no FDE extension in %s" % path
        if kind == EXT_FDE:
            return struct.unpack_from(">Q", data, pos + 8)[0]
        pos += 8 + (length + 7) // 8 * 8
    raise AssertionError("no FDE extension in %s" % path)


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _check_random(headers):
    """Every header: a v4 UUID, a non-zero digest salt, non-zero salts in
    active slots, zero salts in inactive ones; across all of them, UUIDs,
    digest salts and keyslot salts all distinct."""
    uuids, digest_salts, slot_salts = [], [], []
    for hdr in headers:
        u = uuid.UUID(hdr["uuid"])
        assert str(u) == hdr["uuid"], hdr["uuid"]
        assert u.version == 4 and u.variant == uuid.RFC_4122, hdr["uuid"]
        uuids.append(hdr["uuid"])
        assert len(hdr["mk_digest_salt"]) == 32 and any(hdr["mk_digest_salt"])
        digest_salts.append(hdr["mk_digest_salt"])
        for n, slot in enumerate(hdr["slots"]):
            if slot["active"]:
                assert any(slot["salt"]), "keyslot %d has an all-zero salt" % n
                slot_salts.append(slot["salt"])
    assert len(set(uuids)) == len(uuids), uuids
    assert len(set(digest_salts)) == len(digest_salts)
    assert len(set(slot_salts)) == len(slot_salts)
    # A salt never doubles as another field's salt either.
    assert not set(digest_salts) & set(slot_salts)
    return slot_salts


def _fill_slots(path, header=None):
    """add-key (the API) into every free keyslot; returns the header."""
    with luks.open_area(path, writable=True, header=header) as area:
        _, mk = luks.unlock(area, PW)
        with mk:
            for n in area.header.free_slots():
                assert luks.add_key(area, mk, PW + b"%d" % n, slot=n, iterations=1000) == n
    return _header(header or path)


def test_create_luks_salts_and_uuids(workdir):
    headers = []
    for i in range(VOLUMES):
        vol = os.path.join(workdir, "c%d.luks" % i)
        pyqcrypt.create(vol, 1 << 20, "luks", passphrase=PW, key_bits=256, iterations=1000)
        headers.append(_header(vol))
    _check_random(headers)
    assert all(sum(s["active"] for s in h["slots"]) == 1 for h in headers)


def test_detached_header_salts_and_uuids(workdir):
    headers = []
    for i in range(VOLUMES):
        vol, hdr = os.path.join(workdir, "d%d.img" % i), os.path.join(workdir, "d%d.hdr" % i)
        pyqcrypt.create(vol, 1 << 20, "luks", passphrase=PW, key_bits=256, iterations=1000,
                        header=hdr)
        headers.append(_header(hdr))
    _check_random(headers)


def test_format_salts_and_uuids(workdir):
    headers = []
    for i in range(VOLUMES):
        vol = write_file(os.path.join(workdir, "f%d.img" % i), bytes(3 << 20))
        format_device(vol, PW, key_bits=256, iterations=1000)
        headers.append(_header(vol))
    # The same file formatted again gets a new UUID and new salts.
    format_device(vol, PW, key_bits=256, iterations=1000)
    headers.append(_header(vol))
    _check_random(headers)


def test_cli_format_and_add_key_salts_and_uuids(workdir):
    key = write_file(os.path.join(workdir, "k"), PW)
    headers = []
    for i in range(3):
        vol = write_file(os.path.join(workdir, "cli%d.img" % i), bytes(3 << 20))
        proc = _pyq("format", vol, "-q", "--key-file", key, "--key-size", "256",
                    "--pbkdf-force-iterations", "1000")
        assert proc.returncode == 0, proc.stderr
        for n in (1, 2):
            new = write_file(os.path.join(workdir, "k%d" % n), PW + b"%d" % n)
            proc = _pyq("add-key", vol, "--key-file", key, "--new-key-file", new,
                        "--pbkdf-force-iterations", "1000")
            assert proc.returncode == 0, proc.stderr
        hdr = _header(vol)
        assert [s["active"] for s in hdr["slots"]] == [True] * 3 + [False] * 5
        headers.append(hdr)
    assert len(_check_random(headers)) == 9


def test_add_key_into_every_slot_salts(workdir):
    headers = []
    for i in range(3):
        vol = os.path.join(workdir, "a%d.luks" % i)
        pyqcrypt.create(vol, 1 << 20, "luks", passphrase=PW, key_bits=256, iterations=1000)
        hdr = _fill_slots(vol)
        assert all(s["active"] for s in hdr["slots"])
        headers.append(hdr)
    assert len(_check_random(headers)) == 3 * 8
    # Killing a slot zeroes its salt; adding into it again draws a new one.
    vol = os.path.join(workdir, "a0.luks")
    old = _header(vol)["slots"][3]["salt"]
    with luks.open_area(vol, writable=True) as area:
        luks.kill_slot(area, 3)
        assert _header(vol)["slots"][3]["salt"] == bytes(32)
        _, mk = luks.unlock(area, PW)
        with mk:
            luks.add_key(area, mk, b"again", slot=3, iterations=1000)
    new = _header(vol)["slots"][3]["salt"]
    assert any(new) and new != old


def test_qcow2_luks_salts_and_uuids(workdir):
    headers = []
    for i in range(VOLUMES):
        img = os.path.join(workdir, "q%d.qcow2" % i)
        pyqcrypt.create(img, 1 << 20, "qcow2", passphrase=PW, iterations=1000)
        headers.append(_header(img, _fde_offset(img)))
    _check_random(headers)
