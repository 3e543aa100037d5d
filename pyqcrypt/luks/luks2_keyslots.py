# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 keyslot management through libcryptsetup: test, add, remove,
change, kill, erase, and header backup and restore (cryptsetup's luks*
verbs), on a volume or a detached header.

libcryptsetup writes LUKS2 metadata crash-safely (key material first, then
both metadata copies with a new sequence number) and changes a passphrase
by writing the new keyslot before it destroys the old one whenever a
keyslot is free.  pyqcrypt adds QEMU's image locks around it: the file
holding the header is locked exclusively while it changes (a running QEMU
or another pyqcrypt keeps it out), and for reading otherwise.
"""

import contextlib
import os

from ..crypto.keybuf import as_secret
from ..errors import Error, WrongPassphrase
from ..locks import lock_image
from ..storage import Staged, Storage, publish, unlink_quietly
from .luks2 import get_volume_key, luks2_device

_ACTIVE = ("CRYPT_SLOT_ACTIVE", "CRYPT_SLOT_ACTIVE_LAST", "CRYPT_SLOT_UNBOUND")


@contextlib.contextmanager
def locked_device(device, header=None, writable=False, force_share=False):
    """libcryptsetup's handle of a loaded LUKS2 volume, with QEMU's lock on
    the file holding the header ("exclusive" when *writable*, else
    "read") held until the block ends."""
    with Storage(header or device) as st:
        if writable:
            lock_image(st, mode="exclusive")
        else:
            lock_image(st, mode="read", force_share=force_share)
        with luks2_device(device, header, writable=writable) as (ffi, lib, cd):
            yield ffi, lib, cd


def active_slots(ffi, lib, cd):
    """The keyslot numbers libcryptsetup reports active (bound or not)."""
    states = {int(getattr(lib, name)) for name in _ACTIVE}
    return [n for n in range(lib.crypt_keyslot_max(b"LUKS2"))
            if int(lib.crypt_keyslot_status(cd, n)) in states]


def _check_slot(lib, slot):
    if slot is not None and not 0 <= slot < lib.crypt_keyslot_max(b"LUKS2"):
        raise Error("keyslot number must be 0..%d, not %d" % (lib.crypt_keyslot_max(b"LUKS2") - 1,
                                                            slot))


def _opened_slot(ffi, lib, cd, passphrase, slot, device):
    """The keyslot *passphrase* opens (libcryptsetup tries each, or only
    *slot*); WrongPassphrase when none."""
    _check_slot(lib, slot)
    secret, owned = as_secret(passphrase)
    try:
        rc = lib.crypt_activate_by_passphrase(cd, ffi.NULL,
                                              lib.CRYPT_ANY_SLOT if slot is None else slot,
                                              ffi.cast("char *", secret.cdata), len(secret), 0)
    finally:
        if owned:
            secret.wipe()
    if rc == -12:
        raise Error("%s: not enough memory to derive the keyslot's key (argon2)" % device)
    if rc < 0:
        raise WrongPassphrase()
    return rc


def test_passphrase(device, passphrase, header=None, slot=None, force_share=False):
    """The keyslot that *passphrase* opens (cryptsetup open
    --test-passphrase)."""
    with locked_device(device, header, force_share=force_share) as (ffi, lib, cd):
        return _opened_slot(ffi, lib, cd, passphrase, slot, device)


def add_key(device, passphrase, new_passphrase, pbkdf, header=None, new_slot=None):
    """A new keyslot for *new_passphrase*, proven by *passphrase*
    (cryptsetup luksAddKey); returns its number."""
    with locked_device(device, header, writable=True) as (ffi, lib, cd):
        _check_slot(lib, new_slot)
        if new_slot is not None and new_slot in active_slots(ffi, lib, cd):
            raise Error("keyslot %d of %s is in use; choose a free one" % (new_slot, header or device))
        pbkdf._apply(ffi, lib, cd)
        old, old_owned = as_secret(passphrase)
        new, new_owned = as_secret(new_passphrase)
        try:
            rc = lib.crypt_keyslot_add_by_passphrase(
                cd, lib.CRYPT_ANY_SLOT if new_slot is None else new_slot,
                ffi.cast("char *", old.cdata), len(old), ffi.cast("char *", new.cdata), len(new))
        finally:
            if old_owned:
                old.wipe()
            if new_owned:
                new.wipe()
        if rc == -1 or rc == -2:
            raise WrongPassphrase()
        if rc < 0:
            raise Error("libcryptsetup cannot add a keyslot to %s: %s"
                        % (header or device, os.strerror(-rc)))
        return rc


def change_key(device, passphrase, new_passphrase, pbkdf, header=None, slot=None):
    """Replace the passphrase of the keyslot *passphrase* opens (cryptsetup
    luksChangeKey) without a moment where neither works: the new passphrase
    gets a free keyslot first (a metadata commit of its own), and only then
    is the old keyslot destroyed.  Returns (old slot, new slot)."""
    with locked_device(device, header, writable=True) as (ffi, lib, cd):
        old_slot = _opened_slot(ffi, lib, cd, passphrase, slot, device)
        busy = active_slots(ffi, lib, cd)
        free = [n for n in range(lib.crypt_keyslot_max(b"LUKS2")) if n not in busy]
        if not free:
            raise Error("every keyslot of %s is in use: a passphrase is changed by adding the new "
                        "one first, so remove one keyslot before (pyqcrypt kill-slot)"
                        % (header or device))
        pbkdf._apply(ffi, lib, cd)
        old, old_owned = as_secret(passphrase)
        new, new_owned = as_secret(new_passphrase)
        try:
            rc = lib.crypt_keyslot_add_by_passphrase(
                cd, free[0], ffi.cast("char *", old.cdata), len(old),
                ffi.cast("char *", new.cdata), len(new))
        finally:
            if old_owned:
                old.wipe()
            if new_owned:
                new.wipe()
        if rc < 0:
            raise Error("libcryptsetup cannot add the new keyslot to %s: %s (the old passphrase "
                        "still works)" % (header or device, os.strerror(-rc)))
        new_slot = rc
        rc = lib.crypt_keyslot_destroy(cd, old_slot)
        if rc < 0:
            raise Error("%s: the new passphrase is in keyslot %d, but the old keyslot %d could not "
                        "be destroyed (%s); both passphrases work"
                        % (header or device, new_slot, old_slot, os.strerror(-rc)))
        return old_slot, new_slot


def slots_for_removal(device, passphrase, header=None):
    """(the slot *passphrase* opens, every active slot) for remove-key."""
    with locked_device(device, header) as (ffi, lib, cd):
        return _opened_slot(ffi, lib, cd, passphrase, None, device), active_slots(ffi, lib, cd)


def slot_states(device, header=None):
    """Every active keyslot number."""
    with locked_device(device, header) as (ffi, lib, cd):
        return active_slots(ffi, lib, cd)


def proves_access(device, passphrase, slots, header=None):
    """True when *passphrase* opens one of *slots*."""
    with locked_device(device, header) as (ffi, lib, cd):
        for s in slots:
            try:
                _opened_slot(ffi, lib, cd, passphrase, s, device)
                return True
            except WrongPassphrase:
                continue
    return False


def kill_slot(device, slot, header=None):
    """Destroy keyslot *slot* (its key material is wiped by libcryptsetup)."""
    with locked_device(device, header, writable=True) as (ffi, lib, cd):
        _check_slot(lib, slot)
        if slot not in active_slots(ffi, lib, cd):
            raise Error("keyslot %d of %s is not active" % (slot, header or device))
        rc = lib.crypt_keyslot_destroy(cd, slot)
        if rc < 0:
            raise Error("libcryptsetup cannot destroy keyslot %d of %s: %s"
                        % (slot, header or device, os.strerror(-rc)))


def erase(device, header=None):
    """Destroy every keyslot (cryptsetup luksErase)."""
    with locked_device(device, header, writable=True) as (ffi, lib, cd):
        for slot in active_slots(ffi, lib, cd):
            rc = lib.crypt_keyslot_destroy(cd, slot)
            if rc < 0:
                raise Error("libcryptsetup cannot destroy keyslot %d of %s: %s"
                            % (slot, header or device, os.strerror(-rc)))


def header_backup(device, backup_file, header=None, force_share=False):
    """The LUKS2 header and keyslot areas into the new file *backup_file*
    (never replacing one), built under a temporary name first."""
    if os.path.lexists(backup_file):
        raise Error("%s already exists; pyqcrypt never replaces a file" % backup_file)
    backup = Staged(backup_file)
    with locked_device(device, header, force_share=force_share) as (ffi, lib, cd):
        rc = lib.crypt_header_backup(cd, b"LUKS2", os.fsencode(backup.tmp))
        if rc < 0:
            unlink_quietly(backup.tmp)
            raise Error("libcryptsetup cannot back up the header of %s: %s"
                        % (header or device, os.strerror(-rc)))
    try:
        publish([backup], appeared="%s appeared while pyqcrypt was writing it; it was left alone")
    except BaseException:
        unlink_quietly(backup.tmp)      # once in place the backup stays (only fsync_dir failed)
        raise


def header_restore(device, backup_file, header=None):
    """Write a LUKS2 header backup back; libcryptsetup checks that it fits
    the device (data offset, metadata size)."""
    target = header or device
    with Storage(target) as st:
        lock_image(st, mode="exclusive")
        ffi, lib = luks2_ffi()
        cd = ffi.new("struct crypt_device **")
        rc = (lib.crypt_init_data_device(cd, os.fsencode(header), os.fsencode(device)) if header
              else lib.crypt_init(cd, os.fsencode(device)))
        if rc < 0:
            raise Error("libcryptsetup cannot open %s: %s" % (target, os.strerror(-rc)))
        try:
            lib.pyq_cs_quiet(cd[0])
            rc = lib.crypt_header_restore(cd[0], b"LUKS2", os.fsencode(backup_file))
            if rc < 0:
                raise Error("libcryptsetup refuses to restore %s onto %s: %s (is it a LUKS2 "
                            "header backup of this volume?)" % (backup_file, target, os.strerror(-rc)))
        finally:
            lib.crypt_free(cd[0])


def luks2_ffi():
    from .._native import cryptsetup
    return cryptsetup()


def dump_volume_key_text(device, passphrase, header=None, slot=None):
    """cryptsetup luksDump --dump-volume-key's text for a LUKS2 volume."""
    with locked_device(device, header) as (ffi, lib, cd):
        vk, _ = get_volume_key(ffi, lib, cd, passphrase, slot, header or device)
        with vk:
            key = vk.reveal()
        lines = ["LUKS header information for %s" % (header or device),
                 "Cipher name:   \t%s" % ffi.string(lib.crypt_get_cipher(cd)).decode(),
                 "Cipher mode:   \t%s" % ffi.string(lib.crypt_get_cipher_mode(cd)).decode(),
                 "Payload offset:\t%d" % lib.crypt_get_data_offset(cd),
                 "UUID:          \t%s" % ffi.string(lib.crypt_get_uuid(cd)).decode(),
                 "MK bits:       \t%d" % (len(key) * 8)]
    rows = [key[i:i + 16] for i in range(0, len(key), 16)]
    for n, row in enumerate(rows):
        lines.append(("MK dump:\t" if n == 0 else "\t\t") + "".join("%02x " % b for b in row))
    return "\n".join(lines) + "\n"
