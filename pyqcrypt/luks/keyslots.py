# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS1 keyslots: unlock, add, remove, change, kill, and secure erase.

Every change is ordered so that a crash after any single write or sync
leaves every passphrase that is valid both before and after the operation
still working, and never more than one write between two syncs:

* add: key material into a free slot, sync; then the header entry, sync.
  A crash in between leaves a disabled slot with stray material.
* remove / kill: random data over the key material, sync; then the header
  entry cleared, sync.  A crash in between leaves an enabled slot that no
  passphrase opens, never the old passphrase recoverable from disk.
* change: add the new passphrase in a free slot (as above); only then
  remove the old slot (as above).  At every point old or new opens.
* erase: each keyslot area overwritten with random data and synced in
  turn; then a header with all slots disabled and a random digest, synced.
"""

import os

from ..crypto import SecretBuffer, SectorCipher, af_merge, af_split, pbkdf2, random_bytes
from ..crypto.keybuf import as_secret
from ..crypto.kdf import LUKS_MIN_ITERATIONS, MAX_ITERATIONS, benchmark_for, iterations_for
from ..errors import Error, FormatError, WrongPassphrase
from .header import DIGEST_SIZE, SALT_SIZE, NUM_SLOTS, STRIPES, check_names

DEFAULT_ITER_TIME_MS = 2000      # cryptsetup's and QEMU's LUKS1 default
# Unlocking refuses iteration counts above this (about a minute of sha256
# here; cryptsetup's 2 s default stays far below it even on fast CPUs), so
# a hostile header cannot pin a CPU for hours.  PYQCRYPT_MAX_ITERATIONS
# raises (or, for fuzzing, lowers) it.
DEFAULT_MAX_UNLOCK_ITERATIONS = 1 << 27


def max_unlock_iterations():
    try:
        return int(os.environ.get("PYQCRYPT_MAX_ITERATIONS", DEFAULT_MAX_UNLOCK_ITERATIONS))
    except ValueError:
        return DEFAULT_MAX_UNLOCK_ITERATIONS


def _check_cost(iterations, what, path):
    limit = max_unlock_iterations()
    if iterations > limit:
        raise FormatError("%s asks for %d PBKDF2 iterations, more than the %d pyqcrypt will spend "
                          "(set PYQCRYPT_MAX_ITERATIONS to allow it)" % (what, iterations, limit),
                          field=what, path=path)


class NoFreeSlot(Error):
    pass


# How a new keyslot's cost is calibrated, as the tool pyqcrypt mirrors does
# it (measured against cryptsetup 2.6 and qemu-img 7.2 here).  "cryptsetup"
# (format, add-key, change-key): timed with OpenSSL's PBKDF2, cryptsetup's
# library here, for the key's length; the master-key digest always gets
# 125 ms, whatever the keyslot's time.  "qemu" (create, amend, convert
# targets): timed with the faster library pyqcrypt derives with (QEMU uses
# nettle, faster still than OpenSSL 3); the digest, timed for its own
# 20-byte output, gets 1/8 of the keyslot's time.
# name -> (benchmark backend, digest benchmark output bytes, digest time)
CALIBRATIONS = {"cryptsetup": ("openssl", None, lambda ms: 125),
                "qemu": (None, DIGEST_SIZE, lambda ms: max(1, ms // 8))}


def _calibration(name):
    try:
        return CALIBRATIONS[name]
    except KeyError:
        raise Error("unknown PBKDF2 calibration %r" % (name,)) from None


def slot_iterations(hash_name, key_bytes, iter_time_ms=None, iterations=None, ips=None,
                    calibration="cryptsetup"):
    """Forced *iterations*, or the count that takes *iter_time_ms* here;
    never below cryptsetup's LUKS1 minimum of 1000."""
    if iterations is not None:
        if not isinstance(iterations, int) or not LUKS_MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise Error("iteration count must be between %d and %d"
                        % (LUKS_MIN_ITERATIONS, MAX_ITERATIONS))
        return iterations
    backend = _calibration(calibration)[0]
    time_ms = iter_time_ms or DEFAULT_ITER_TIME_MS
    if ips is None:
        ips = benchmark_for(hash_name, time_ms, key_bytes, backend)
    return iterations_for(hash_name, time_ms, key_bytes, ips=ips)


def digest_iterations(hash_name, key_bytes, iter_time_ms=None, slot_iterations=None, ips=None,
                      calibration="cryptsetup"):
    """Master-key digest iterations: 125 ms (cryptsetup) or 1/8 of the
    keyslot time (QEMU), at least 1000; 1000 when the keyslot's count is
    forced (*slot_iterations* given: its value does not matter, as with
    cryptsetup's --pbkdf-force-iterations).  *ips* is reused only where the
    digest is timed like the slot."""
    if slot_iterations is not None:
        return LUKS_MIN_ITERATIONS
    backend, out_bytes, digest_ms = _calibration(calibration)
    time_ms = digest_ms(iter_time_ms or DEFAULT_ITER_TIME_MS)
    if out_bytes is not None or ips is None:
        ips = benchmark_for(hash_name, max(time_ms, 20), out_bytes or key_bytes, backend)
    return iterations_for(hash_name, time_ms, key_bytes, ips=ips)


def master_key_digest(header, master_key):
    _check_cost(header.mk_digest_iter, "mk-digest-iter", None)
    return pbkdf2(header.hash_spec, master_key, header.mk_digest_salt,
                  header.mk_digest_iter, DIGEST_SIZE)


def master_key_matches(header, master_key):
    """True when *master_key* is this header's: its length, then its digest
    (HMAC pads a short key with zeros, so the length must be checked)."""
    if len(master_key) != header.key_bytes:
        return False
    with master_key_digest(header, master_key) as digest:
        return digest.equals(header.mk_digest)


def _material_cipher(header, split_key):
    return SectorCipher(header.spec, split_key)


def try_slot(area, slot, passphrase):
    """The master key if *passphrase* opens keyslot *slot*, else None."""
    header = area.header
    ks = header.slots[slot]
    if not ks.active:
        return None
    _check_cost(ks.iterations, "keyslot %d iterations" % slot, area.path)
    start, end = ks.area(header.key_bytes)
    with pbkdf2(header.hash_spec, passphrase, ks.salt, ks.iterations, header.key_bytes,
                notice="keyslot %d of %s" % (slot, area.path)) as split_key, \
            SecretBuffer(end - start) as material:
        area.read_material_into(slot, material.writable_view())
        with _material_cipher(header, split_key) as cipher:
            cipher.decrypt(material.writable_view(), 0)
        master_key = af_merge(material, header.key_bytes, ks.stripes, header.hash_spec)
    if master_key_matches(header, master_key):
        return master_key
    master_key.wipe()
    return None


def slots_opened_by(area, passphrase, slots=None, first_only=False):
    """The active keyslots (of *slots*, default all) that *passphrase*
    opens, trying each in turn; with *first_only*, stop at the first.  The
    master keys found are wiped at once."""
    found = []
    for n in area.header.active_slots() if slots is None else slots:
        mk = try_slot(area, n, passphrase)
        if mk is not None:
            mk.wipe()
            found.append(n)
            if first_only:
                break
    return found

def unlock(area, passphrase, slot=None):
    """(slot, master key) for the first keyslot *passphrase* opens.

    Raises WrongPassphrase when none does (or the asked-for slot does not)."""
    check_names(area.header)
    secret, owned = as_secret(passphrase)
    try:
        if slot is not None:
            _check_slot_number(slot)
            if not area.header.slots[slot].active:
                raise Error("keyslot %d of %s is not active" % (slot, area.path))
            candidates = [slot]
        else:
            candidates = area.header.active_slots()
        for n in candidates:
            mk = try_slot(area, n, secret)
            if mk is not None:
                return n, mk
        raise WrongPassphrase()
    finally:
        if owned:
            secret.wipe()


def _check_slot_number(slot):
    if not isinstance(slot, int) or not 0 <= slot < NUM_SLOTS:
        raise Error("keyslot number must be 0..%d, not %r" % (NUM_SLOTS - 1, slot))


def encrypted_material(header, slot, master_key, passphrase, iterations, salt):
    """The encrypted, AF-split key material for a keyslot (a SecretBuffer
    of the slot's area size; zero-padded to whole sectors before
    encryption, as cryptsetup does)."""
    ks = header.slots[slot]
    start, end = ks.area(header.key_bytes)
    out = SecretBuffer(end - start)
    with af_split(master_key, ks.stripes, header.hash_spec) as split, \
            pbkdf2(header.hash_spec, passphrase, salt, iterations, header.key_bytes) as split_key:
        view = out.writable_view()
        view[:len(split)] = split.writable_view()
        with _material_cipher(header, split_key) as cipher:
            cipher.encrypt(view, 0)
    return out


def add_key(area, master_key, new_passphrase, slot=None, iter_time_ms=None, iterations=None,
            overwrite=False, calibration="cryptsetup"):
    """Add *new_passphrase* in *slot* (or the first free one); returns it.

    The caller proves possession of the volume by supplying the master key
    (from unlock); it is checked against the digest first."""
    header = area.header
    check_names(header)
    if not master_key_matches(header, master_key):
        raise Error("the master key does not match the volume's digest")
    if slot is None:
        free = header.free_slots()
        if not free:
            raise NoFreeSlot("all %d keyslots of %s are in use; remove one first"
                             % (NUM_SLOTS, area.path))
        slot = free[0]
    _check_slot_number(slot)
    if header.slots[slot].active and not overwrite:
        raise Error("keyslot %d of %s is in use; choose a free slot (free: %s)" % (
            slot, area.path, ", ".join(map(str, header.free_slots())) or "none"))
    if header.slots[slot].km_offset == 0:
        raise Error("keyslot %d has no key material area" % slot)
    iters = slot_iterations(header.hash_spec, header.key_bytes, iter_time_ms, iterations,
                            calibration=calibration)
    salt = random_bytes(SALT_SIZE)
    secret, owned = as_secret(new_passphrase)
    try:
        with encrypted_material(header, slot, master_key, secret, iters, salt) as material:
            area.write_material(slot, material.writable_view())
        area.sync()
        new = header.copy()
        ks = new.slots[slot]
        ks.active, ks.iterations, ks.salt = True, iters, salt
        if ks.stripes == 0:
            ks.stripes = STRIPES
        area.write_header(new)
        area.sync()
        return slot
    finally:
        if owned:
            secret.wipe()


def kill_slot(area, slot, allow_last=False):
    """Destroy keyslot *slot*: its material first, then its header entry."""
    _check_slot_number(slot)
    header = area.header
    if not header.slots[slot].active:
        raise Error("keyslot %d of %s is not active" % (slot, area.path))
    if header.active_slots() == [slot] and not allow_last:
        raise Error("keyslot %d is the last active keyslot of %s; removing it makes the data "
                    "unrecoverable (use --force / batch mode to do it anyway)" % (slot, area.path))
    start, end = header.slots[slot].area(header.key_bytes)
    area.write_material(slot, random_bytes(end - start))
    area.sync()
    new = header.copy()
    ks = new.slots[slot]
    ks.active, ks.iterations, ks.salt = False, 0, bytes(SALT_SIZE)
    area.write_header(new)
    area.sync()


def remove_key(area, passphrase, allow_last=False):
    """Remove the keyslot *passphrase* opens; returns its number."""
    slot, mk = unlock(area, passphrase)
    mk.wipe()
    kill_slot(area, slot, allow_last=allow_last)
    return slot


def change_key(area, old_passphrase, new_passphrase, slot=None, new_slot=None,
               iter_time_ms=None, iterations=None):
    """Replace the passphrase of the slot *old_passphrase* opens.

    The new passphrase goes into a free slot first (synced), and only then
    is the old slot destroyed, so a crash never loses access.  Returns
    (old slot, new slot)."""
    old_slot, mk = unlock(area, old_passphrase, slot)
    with mk:
        return old_slot, replace_slot(area, old_slot, mk, new_passphrase, new_slot,
                                      iter_time_ms, iterations)


def replace_slot(area, old_slot, master_key, new_passphrase, new_slot=None, iter_time_ms=None,
                 iterations=None):
    """The second half of change_key, for a caller that has unlocked
    *old_slot* already: add in a free slot, then destroy the old one.
    Returns the new slot."""
    if new_slot is None:
        free = area.header.free_slots()
        if not free:
            raise NoFreeSlot("change-key needs a free keyslot to stay crash-safe, and all %d "
                             "keyslots of %s are in use; remove one first" % (NUM_SLOTS, area.path))
        new_slot = free[0]
    added = add_key(area, master_key, new_passphrase, new_slot, iter_time_ms, iterations)
    kill_slot(area, old_slot, allow_last=True)
    return added


def erase(area):
    """Make the volume unopenable forever: every keyslot area overwritten
    with random data and synced, then all slots disabled and the digest
    replaced, synced.  The payload is untouched (and now undecryptable)."""
    header = area.header
    for n, ks in enumerate(header.slots):
        if ks.km_offset:
            start, end = ks.area(header.key_bytes)
            area.write_material(n, random_bytes(end - start))
            area.sync()
    new = header.copy()
    for ks in new.slots:
        ks.active, ks.iterations, ks.salt = False, 0, bytes(SALT_SIZE)
    new.mk_digest = random_bytes(DIGEST_SIZE)
    new.mk_digest_salt = random_bytes(SALT_SIZE)
    area.write_header(new)
    area.sync()
