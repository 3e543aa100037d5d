# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keyslot changes guard the data and the keys:

* ``add_key`` with a master key that is not the volume's raises
  pyqcrypt.Error and writes nothing: the whole file stays byte-identical
  (a slot wrapping a wrong key would be a passphrase that "opens" garbage);
* the documented write order (pyqcrypt/luks/keyslots.py), recorded through
  ``storage.injected_faults`` as the exact sequence of writes and syncs, with the
  bytes on disk checked at each step:
  - add: key material, sync, then the header entry that enables it, sync;
  - kill: the material overwritten, sync, then the header entry cleared, sync;
  - change (change_key, replace_slot): the new slot complete (material,
    sync, header, sync) before the old slot is touched at all.

Both a raw LUKS1 volume (header at 0) and a qcow2-luks image (the header in
its FDE clusters) are covered; offsets come from the test-side parser.
"""

import os
import struct

import pytest

import pyqcrypt
from pyqcrypt import luks, storage
from pyqcrypt.crypto import SecretBuffer
from pyqcrypt.image import open_luks_area

from conftest import luks1_master_key, parse_luks1, two_key_volume, write_file

PW, PW2, PW3 = b"first passphrase", b"second passphrase", b"third passphrase"
EXT_FDE = 0x0537BE77
HEADER_BYTES = 592


def _fde_offset(path):
    with open(path, "rb") as fh:
        data = fh.read(1 << 16)
    pos = struct.unpack_from(">I", data, 100)[0]
    while True:
        kind, length = struct.unpack_from(">II", data, pos)
        assert kind != 0, "no FDE extension"
        if kind == EXT_FDE:
            return struct.unpack_from(">Q", data, pos + 8)[0]
        pos += 8 + (length + 7) // 8 * 8


@pytest.fixture(params=["raw", "qcow2"])
def volume(request, workdir):
    """(path, offset of its LUKS header): PW in slot 0, PW2 in slot 1."""
    if request.param == "raw":
        return two_key_volume(os.path.join(workdir, "v.luks"), PW, PW2), 0
    path = os.path.join(workdir, "v.qcow2")
    pyqcrypt.create(path, 1 << 20, "qcow2", passphrase=PW, iterations=1000)
    with open_luks_area(path, writable=True) as area:
        _, mk = luks.unlock(area, PW)
        with mk:
            luks.add_key(area, mk, PW2, iterations=1000)
    return path, _fde_offset(path)


def _read(path, offset, length):
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def _header(path, base):
    return parse_luks1(_read(path, base, HEADER_BYTES))


def _material(path, base, slot):
    """(absolute offset, length, bytes) of keyslot *slot*'s key material."""
    hdr = _header(path, base)
    ks = hdr["slots"][slot]
    length = -(-hdr["key_bytes"] * ks["stripes"] // 512) * 512
    offset = base + ks["km_offset"] * 512
    return offset, length, _read(path, offset, length)


def _opens(path, base, pw, workdir):
    """True when *pw* opens the bytes on disk now (the test-side parser and
    pyqcrypt's primitives, reading with plain open(): no image locks)."""
    region = write_file(os.path.join(workdir, "region.%d" % os.getpid()),
                        _read(path, base, 1 << 20))
    try:
        luks1_master_key(region, pw)
        return True
    except AssertionError:
        return False


def _record(path, op, on_write=None):
    """Run op(area) on *path*'s HeaderArea, recording every write and sync
    of that file as (kind, offset, length); *on_write(offset, length,
    events so far)* runs before each write, while the disk holds what the
    earlier writes left."""
    events = []

    def hook(kind, st, offset, length):
        if os.path.realpath(st.path) != os.path.realpath(path):
            return
        if kind == "write" and on_write is not None:
            on_write(offset, length, list(events))
        events.append((kind, offset, length) if kind == "write" else (kind,))

    with open_luks_area(path, writable=True) as area:
        with storage.injected_faults(hook):
            result = op(area)
    return events, result


# ---------------------------------------------------------------- wrong master key

def _wrong_keys(mk):
    right = mk.reveal()
    flipped = bytearray(right)
    flipped[-1] ^= 1
    return {"random": os.urandom(len(right)), "one bit flipped": bytes(flipped),
            "zeros": bytes(len(right)), "random, same last byte": os.urandom(len(right))[:-1] + right[-1:]}


def test_add_key_with_wrong_master_key_writes_nothing(volume):
    path, base = volume
    with open_luks_area(path) as area:
        _, mk = luks.unlock(area, PW)
    with mk:
        wrong = _wrong_keys(mk)
    with open(path, "rb") as fh:
        before = fh.read()
    for name, key in wrong.items():
        for as_buffer in (False, True):
            secret = SecretBuffer.from_bytes(key) if as_buffer else key
            for slot in (None, 2, 7):
                events = []
                with open_luks_area(path, writable=True) as area, \
                        storage.injected_faults(lambda kind, *a: events.append(kind)):
                    with pytest.raises(pyqcrypt.Error, match="master key does not match"):
                        luks.add_key(area, secret, PW3, slot=slot, iterations=1000)
                    assert area.header.free_slots() == [2, 3, 4, 5, 6, 7], name
                assert events == [], (name, events)
            if as_buffer:
                secret.wipe()
        with open(path, "rb") as fh:
            assert fh.read() == before, name
    assert [s["active"] for s in _header(path, base)["slots"]] == [True, True] + [False] * 6


def test_add_key_with_wrong_master_key_into_a_used_slot(volume):
    """Even with overwrite=True (replacing slot 1), a wrong key changes nothing."""
    path, base = volume
    with open(path, "rb") as fh:
        before = fh.read()
    with open_luks_area(path, writable=True) as area:
        with pytest.raises(pyqcrypt.Error, match="master key does not match"):
            luks.add_key(area, os.urandom(area.header.key_bytes), PW3, slot=1,
                         iterations=1000, overwrite=True)
    with open(path, "rb") as fh:
        assert fh.read() == before


def test_add_key_refuses_a_master_key_of_the_wrong_length(workdir):
    """The digest is PBKDF2-HMAC keyed with the master key, and HMAC pads a
    short key with zero bytes: a key one trailing zero byte shorter or
    longer than the volume's matches its digest.  add_key must still refuse
    it (a pyqcrypt.Error, nothing written), as cryptsetup checks the key
    size first; a slot wrapping 31 of 32 bytes is a passphrase that never
    opens the volume."""
    mk = os.urandom(31) + b"\0"              # the 1 in 256 volumes whose key ends in 0
    path = os.path.join(workdir, "z.luks")
    pyqcrypt.create(path, 1 << 20, "luks", passphrase=PW, key_bits=256, iterations=1000,
                    master_key=mk)
    with open(path, "rb") as fh:
        before = fh.read()
    for name, key in (("one byte short", mk[:-1]), ("one zero byte long", mk + b"\0"),
                      ("half", mk[:16]), ("twice", mk + mk)):
        with open_luks_area(path, writable=True) as area:
            with pytest.raises(pyqcrypt.Error):
                luks.add_key(area, key, PW3, iterations=1000)
        with open(path, "rb") as fh:
            assert fh.read() == before, name


# ---------------------------------------------------------------- write order

def test_add_key_material_synced_before_header(volume, workdir):
    path, base = volume
    m_off, m_len, old_material = _material(path, base, 2)
    seen = {}

    def on_write(offset, length, events):
        if offset == base:                      # the header write
            seen["material"] = _read(path, m_off, m_len)
            seen["slot active"] = _header(path, base)["slots"][2]["active"]
            seen["new opens"] = _opens(path, base, PW3, workdir)

    def add(area):
        _, mk = luks.unlock(area, PW)
        with mk:
            return luks.add_key(area, mk, PW3, iterations=1000)

    events, slot = _record(path, add, on_write)
    assert slot == 2
    assert events == [("write", m_off, m_len), ("sync",), ("write", base, HEADER_BYTES),
                      ("sync",)], events
    final = _read(path, m_off, m_len)
    assert final != old_material
    # When the header went out, the material already on disk was the final one,
    # and the slot was not yet enabled.
    assert seen == {"material": final, "slot active": False, "new opens": False}
    assert _header(path, base)["slots"][2]["active"]
    assert _opens(path, base, PW3, workdir) and _opens(path, base, PW, workdir)


def test_kill_slot_material_destroyed_before_header(volume, workdir):
    path, base = volume
    m_off, m_len, old_material = _material(path, base, 1)
    assert _opens(path, base, PW2, workdir)
    seen = {}

    def on_write(offset, length, events):
        if offset == base:
            seen["material"] = _read(path, m_off, m_len)
            seen["slot active"] = _header(path, base)["slots"][1]["active"]

    events, _ = _record(path, lambda area: luks.kill_slot(area, 1), on_write)
    assert events == [("write", m_off, m_len), ("sync",), ("write", base, HEADER_BYTES),
                      ("sync",)], events
    final = _read(path, m_off, m_len)
    # Every sector of the old material is gone (overwritten, not left in place).
    for i in range(0, m_len, 512):
        assert final[i:i + 512] != old_material[i:i + 512], "sector %d kept" % (i // 512)
    assert seen == {"material": final, "slot active": True}
    hdr = _header(path, base)
    assert not hdr["slots"][1]["active"] and hdr["slots"][1]["salt"] == bytes(32)
    assert not _opens(path, base, PW2, workdir) and _opens(path, base, PW, workdir)


@pytest.mark.parametrize("how", ["change_key", "replace_slot"])
def test_change_key_new_slot_complete_before_old_touched(volume, workdir, how):
    path, base = volume
    new_off, new_len, _ = _material(path, base, 2)
    old_off, old_len, old_material = _material(path, base, 1)
    checks = []

    def on_write(offset, length, events):
        if offset == old_off:
            # The first write near the old slot: the new one is complete on disk.
            hdr = _header(path, base)
            checks.append((hdr["slots"][1]["active"], hdr["slots"][2]["active"],
                           _opens(path, base, PW3, workdir), _opens(path, base, PW2, workdir),
                           _read(path, old_off, old_len) == old_material))

    def change(area):
        if how == "change_key":
            return luks.change_key(area, PW2, PW3, iterations=1000)
        slot, mk = luks.unlock(area, PW2)
        with mk:
            return slot, luks.replace_slot(area, slot, mk, PW3, iterations=1000)

    events, (old_slot, new_slot) = _record(path, change, on_write)
    assert (old_slot, new_slot) == (1, 2)
    assert events == [("write", new_off, new_len), ("sync",), ("write", base, HEADER_BYTES),
                      ("sync",),
                      ("write", old_off, old_len), ("sync",), ("write", base, HEADER_BYTES),
                      ("sync",)], events
    assert checks == [(True, True, True, True, True)]
    assert [s["active"] for s in _header(path, base)["slots"]] == [True, False, True] + [False] * 5
    assert _opens(path, base, PW3, workdir) and not _opens(path, base, PW2, workdir)
    assert _opens(path, base, PW, workdir)
