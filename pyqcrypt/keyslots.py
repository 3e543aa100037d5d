# SPDX-License-Identifier: LGPL-2.1-or-later
"""Passphrases and keyslots of encrypted images, from Python.

The functions here do what the ``pyqcrypt add-key``, ``remove-key``,
``change-key``, ``kill-slot``, ``test-passphrase``, ``erase``,
``header-backup`` and ``header-restore`` commands do (cryptsetup's
luksAddKey, luksRemoveKey, ...), on three kinds of image alike:

* a qcow2 image encrypted with LUKS (its LUKS header lives inside the
  qcow2 file, where QEMU keeps it);
* a LUKS1 volume (a file or block device), as cryptsetup makes it;
* a LUKS2 volume (the keyslot work is done by libcryptsetup).

A volume whose header was formatted into a separate file (cryptsetup
``--header``) is named by its data *path* plus ``header=`` the header file.

Passphrases are ``bytes`` or ``str`` (a ``str`` is encoded as UTF-8, as
QEMU reads its secrets).  Each is copied into locked memory that is wiped
when the call returns; the caller's own object is the caller's to drop.
Every option is keyword-only.  A function that writes locks the file
holding the header as QEMU does (a running QEMU or another pyqcrypt keeps
it out) and syncs each step, so a crash leaves the old or the new state.

Unlike the command line, nothing here asks for confirmation: removing or
killing the last keyslot, erasing and restoring a header are done when
called.  Errors are ``pyqcrypt.Error`` subclasses: ``WrongPassphrase``
when no keyslot opens with the passphrase given (nothing is changed then),
``StorageError`` for I/O, ``FormatError`` for a damaged header.
"""

import contextlib
import os
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

from .errors import Error, WrongPassphrase

if TYPE_CHECKING:
    from .crypto.keybuf import SecretBuffer
    from .luks.area import HeaderArea

#: A passphrase: bytes, or str (encoded as UTF-8).
Passphrase = Union[str, bytes]
#: A file name, as ``open()`` takes it.
StrPath = Union[str, "os.PathLike[str]"]

__all__ = ["Passphrase", "add_key", "change_key", "check_passphrase", "erase", "header_backup",
           "header_restore", "kill_slot", "remove_key"]


@contextlib.contextmanager
def _secret(value: "Passphrase") -> "Iterator[SecretBuffer]":
    """*value* copied into a SecretBuffer, wiped when the block ends."""
    from .crypto.keybuf import SecretBuffer
    if isinstance(value, str):
        data: "Union[bytes, bytearray, memoryview]" = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = value
    else:
        raise TypeError("a passphrase is bytes or str, not %s" % type(value).__name__)
    buf = SecretBuffer.from_bytes(data)
    try:
        yield buf
    finally:
        buf.wipe()


class _Volume:
    """Where one call's LUKS header is: its version and how to open it."""

    def __init__(self, path: "StrPath", header: "Optional[StrPath]") -> None:
        from .luks.magic import luks_version
        self.path = os.fspath(path)
        self.header = None if header is None else os.fspath(header)
        self.luks2 = luks_version(self.header or self.path) == 2

    def area(self, writable: bool, force_share: bool = False) -> "HeaderArea":
        """The LUKS1 header area (raw volume, detached header or qcow2-luks)."""
        from .image import open_luks_area
        return open_luks_area(self.path, writable=writable, header=self.header,
                              force_share=force_share)

    def check_qemu_can_use(self, new: "SecretBuffer") -> None:
        """A new passphrase for a qcow2-luks image must be one QEMU takes."""
        from .crypto.keybuf import qemu_can_use
        from .qcow2.open import is_qcow2
        if self.header is None and is_qcow2(self.path) and not qemu_can_use(new):
            raise Error("the new passphrase is not valid UTF-8 (or holds a NUL byte): QEMU could "
                        "never open %s with it; nothing was changed" % self.path)


def _checked_iter_time(iter_time: Optional[int]) -> Optional[int]:
    if iter_time is not None and (isinstance(iter_time, bool) or not isinstance(iter_time, int)
                                  or not 0 < iter_time < 1 << 32):
        raise Error("iter_time is a positive number of milliseconds, not %r" % (iter_time,))
    return iter_time


def _luks2_pbkdf(iter_time: Optional[int]):   # -> Pbkdf, untyped
    from .luks.luks2_format import Pbkdf
    return Pbkdf(None, "sha256", iter_time)


def add_key(path: "StrPath", passphrase: "Passphrase", new_passphrase: "Passphrase", *,
            header: "Optional[StrPath]" = None, slot: Optional[int] = None,
            iter_time: Optional[int] = None) -> int:
    """Add *new_passphrase* in a free keyslot, unlocking with *passphrase*.

    Parameters:
        path: the qcow2-luks image, or the LUKS1/LUKS2 volume.
        passphrase: any passphrase that opens the image now.
        new_passphrase: the passphrase to add.  For a qcow2 image it must be
            valid UTF-8 without NUL bytes, or QEMU could never use it.
        header: the detached LUKS header file, when there is one.
        slot: the keyslot to use (0-7 for LUKS1, 0-31 for LUKS2); default
            the first free one.
        iter_time: milliseconds the key derivation of the new keyslot should
            take (default 2000, as cryptsetup's).  LUKS1 keyslots use PBKDF2,
            LUKS2 ones argon2id.

    Returns the keyslot number the new passphrase was written to.

    Raises:
        WrongPassphrase: *passphrase* opens no keyslot (nothing changed).
        Error: *slot* is in use or out of range, every keyslot is in use,
            *iter_time* is not a positive int, or the new passphrase is one
            QEMU refuses.
        StorageError, FormatError: the file cannot be read or written, or
            holds no usable LUKS header.

    Example::

        slot = pyqcrypt.add_key("disk.qcow2", "old secret", "new secret")
    """
    _checked_iter_time(iter_time)
    volume = _Volume(path, header)
    with _secret(passphrase) as old, _secret(new_passphrase) as new:
        if volume.luks2:
            from .luks import luks2_keyslots
            added: int = luks2_keyslots.add_key(volume.path, old, new, _luks2_pbkdf(iter_time),
                                                volume.header, slot)
            return added
        from . import luks
        volume.check_qemu_can_use(new)
        with volume.area(writable=True) as area:
            _, master_key = luks.unlock(area, old)
            with master_key:
                added = luks.add_key(area, master_key, new, slot, iter_time_ms=iter_time)
                return added


def remove_key(path: "StrPath", passphrase: "Passphrase", *,
               header: "Optional[StrPath]" = None) -> int:
    """Remove the keyslot that *passphrase* opens (cryptsetup luksRemoveKey).

    Its key material is overwritten first, then the slot is disabled.  The
    last keyslot is removed too when asked: the data is then unreadable
    unless a header backup exists.

    Parameters:
        path: the qcow2-luks image, or the LUKS1/LUKS2 volume.
        passphrase: the passphrase to remove.
        header: the detached LUKS header file, when there is one.

    Returns the number of the keyslot removed.

    Raises:
        WrongPassphrase: *passphrase* opens no keyslot (nothing changed).
        StorageError, FormatError: the file cannot be read or written, or
            holds no usable LUKS header.

    Example::

        slot = pyqcrypt.remove_key("vol.luks", b"retired passphrase")
    """
    volume = _Volume(path, header)
    with _secret(passphrase) as secret:
        if volume.luks2:
            from .luks import luks2_keyslots
            removed, _ = luks2_keyslots.slots_for_removal(volume.path, secret, volume.header)
            luks2_keyslots.kill_slot(volume.path, removed, volume.header)
            return int(removed)
        from . import luks
        with volume.area(writable=True) as area:
            removed, master_key = luks.unlock(area, secret)
            master_key.wipe()
            luks.kill_slot(area, removed, allow_last=True)
            return int(removed)


def change_key(path: "StrPath", passphrase: "Passphrase", new_passphrase: "Passphrase", *,
               header: "Optional[StrPath]" = None, slot: Optional[int] = None,
               iter_time: Optional[int] = None) -> int:
    """Replace *passphrase* with *new_passphrase* (cryptsetup luksChangeKey).

    The new passphrase is written to a free keyslot and synced before the
    old keyslot is destroyed, so a crash leaves the old or the new
    passphrase working, never neither.  This needs one free keyslot.

    Parameters:
        path: the qcow2-luks image, or the LUKS1/LUKS2 volume.
        passphrase: the passphrase to change.
        new_passphrase: its replacement (for a qcow2 image: valid UTF-8
            without NUL bytes).
        header: the detached LUKS header file, when there is one.
        slot: only the keyslot *passphrase* must open (default: any).
        iter_time: milliseconds the new keyslot's key derivation should
            take (default 2000).

    Returns the keyslot number that now holds *new_passphrase*.

    Raises:
        WrongPassphrase: *passphrase* opens no keyslot, or not *slot*
            (nothing changed).
        Error: no keyslot is free, *iter_time* is not a positive int, or
            the new passphrase is one QEMU refuses.
        StorageError, FormatError: the file cannot be read or written, or
            holds no usable LUKS header.

    Example::

        slot = pyqcrypt.change_key("disk.qcow2", "old secret", "new secret")
    """
    _checked_iter_time(iter_time)
    volume = _Volume(path, header)
    with _secret(passphrase) as old, _secret(new_passphrase) as new:
        if volume.luks2:
            from .luks import luks2_keyslots
            _, new_slot = luks2_keyslots.change_key(volume.path, old, new, _luks2_pbkdf(iter_time),
                                                    volume.header, slot)
            return int(new_slot)
        from . import luks
        volume.check_qemu_can_use(new)
        with volume.area(writable=True) as area:
            old_slot, master_key = luks.unlock(area, old, slot)
            with master_key:
                return int(luks.replace_slot(area, old_slot, master_key, new,
                                             iter_time_ms=iter_time))


def kill_slot(path: "StrPath", slot: int, *, passphrase: "Optional[Passphrase]" = None,
              header: "Optional[StrPath]" = None) -> None:
    """Wipe keyslot *slot* (cryptsetup luksKillSlot).

    With *passphrase*, access is proven first, as cryptsetup asks for it:
    the passphrase must open another keyslot, one that stays valid.  Without
    it the slot is wiped unasked, as ``pyqcrypt kill-slot -q`` does.  When
    *slot* is the last active keyslot there is no other to prove access
    with; it is wiped, and the data is then unreadable unless a header
    backup exists.

    Parameters:
        path: the qcow2-luks image, or the LUKS1/LUKS2 volume.
        slot: the keyslot to wipe.
        passphrase: a passphrase of another keyslot, checked before.
        header: the detached LUKS header file, when there is one.

    Raises:
        WrongPassphrase: *passphrase* opens none of the other keyslots
            (nothing changed).
        Error: *slot* is out of range or not active.
        StorageError, FormatError: the file cannot be read or written, or
            holds no usable LUKS header.

    Example::

        pyqcrypt.kill_slot("vol.luks", 1, passphrase="the slot 0 passphrase")
    """
    volume = _Volume(path, header)
    if volume.luks2:
        _kill_luks2_slot(volume, slot, passphrase)
        return
    from . import luks
    with volume.area(writable=True) as area:
        if not isinstance(slot, int) or not 0 <= slot < len(area.header.slots):
            raise Error("keyslot number must be 0..%d, not %r" % (len(area.header.slots) - 1, slot))
        if not area.header.slots[slot].active:
            raise Error("keyslot %d of %s is not active" % (slot, area.path))
        others = [n for n in area.header.active_slots() if n != slot]
        if passphrase is not None and others:
            with _secret(passphrase) as secret:
                if not luks.slots_opened_by(area, secret, others, first_only=True):
                    raise WrongPassphrase()
        luks.kill_slot(area, slot, allow_last=True)


def _kill_luks2_slot(volume: _Volume, slot: int, passphrase: "Optional[Passphrase]") -> None:
    from .luks import luks2_keyslots
    active = luks2_keyslots.slot_states(volume.path, volume.header)
    if slot not in active:
        raise Error("keyslot %r of %s is not active" % (slot, volume.header or volume.path))
    others = [n for n in active if n != slot]
    if passphrase is not None and others:
        with _secret(passphrase) as secret:
            if not luks2_keyslots.proves_access(volume.path, secret, others, volume.header):
                raise WrongPassphrase()
    luks2_keyslots.kill_slot(volume.path, slot, volume.header)


def check_passphrase(path: "StrPath", passphrase: "Passphrase", *,
                     header: "Optional[StrPath]" = None, slot: Optional[int] = None,
                     force_share: bool = False) -> int:
    """The keyslot *passphrase* opens (cryptsetup open --test-passphrase).

    Nothing is written; the image is read under QEMU's shared lock.

    Parameters:
        path: the qcow2-luks image, or the LUKS1/LUKS2 volume.
        passphrase: the passphrase to check.
        header: the detached LUKS header file, when there is one.
        slot: try only this keyslot (default: each active one in turn).
        force_share: read without QEMU's locks (qemu-img -U), e.g. while a
            QEMU is using the image.

    Returns the keyslot number *passphrase* opens.

    Raises:
        WrongPassphrase: *passphrase* opens no keyslot (or not *slot*).
        Error: *slot* is out of range (or, LUKS1, not active).
        StorageError, FormatError: the file cannot be read, or holds no
            usable LUKS header.

    Example::

        try:
            slot = pyqcrypt.check_passphrase("disk.qcow2", "secret")
        except pyqcrypt.WrongPassphrase:
            print("no keyslot opens with it")
    """
    volume = _Volume(path, header)
    with _secret(passphrase) as secret:
        if volume.luks2:
            from .luks import luks2_keyslots
            return int(luks2_keyslots.test_passphrase(volume.path, secret, volume.header, slot,
                                                      force_share))
        from . import luks
        with volume.area(writable=False, force_share=force_share) as area:
            opened, master_key = luks.unlock(area, secret, slot)
            master_key.wipe()
            return int(opened)


def erase(path: "StrPath", *, header: "Optional[StrPath]" = None) -> None:
    """Destroy every keyslot for good (cryptsetup luksErase).

    No passphrase opens the image afterwards; without a header backup the
    data is lost.  The encrypted data itself is left in place.

    Parameters:
        path: the qcow2-luks image, or the LUKS1/LUKS2 volume.
        header: the detached LUKS header file, when there is one.

    Raises:
        StorageError, FormatError: the file cannot be written, or holds no
            usable LUKS header.

    Example::

        pyqcrypt.erase("old-disk.qcow2")
    """
    volume = _Volume(path, header)
    if volume.luks2:
        from .luks import luks2_keyslots
        luks2_keyslots.erase(volume.path, volume.header)
        return
    from . import luks
    with volume.area(writable=True) as area:
        luks.erase(area)


def header_backup(path: "StrPath", backup_file: "StrPath", *, header: "Optional[StrPath]" = None,
                  force_share: bool = False) -> None:
    """Save the LUKS header and its keyslots (cryptsetup luksHeaderBackup).

    The backup is a new file readable by its owner only, in cryptsetup's
    format (``cryptsetup luksHeaderRestore`` takes it, and so does
    :func:`header_restore`); an existing file is never replaced.  For a
    qcow2-luks image it holds the LUKS header stored inside the image.

    Parameters:
        path: the qcow2-luks image, or the LUKS1/LUKS2 volume.
        backup_file: the file to create.
        header: the detached LUKS header file, when there is one.
        force_share: read without QEMU's locks (qemu-img -U).

    Raises:
        Error: *backup_file* exists already.
        StorageError, FormatError: a file cannot be read or written, or
            *path* holds no usable LUKS header.

    Example::

        pyqcrypt.header_backup("vol.luks", "vol.luks.header")
    """
    volume = _Volume(path, header)
    target = os.fspath(backup_file)
    if volume.luks2:
        from .luks import luks2_keyslots
        luks2_keyslots.header_backup(volume.path, target, volume.header, force_share)
        return
    from . import luks
    with volume.area(writable=False, force_share=force_share) as area:
        luks.header_backup(area, target)


def header_restore(path: "StrPath", backup_file: "StrPath", *,
                   header: "Optional[StrPath]" = None) -> None:
    """Write a header backup back (cryptsetup luksHeaderRestore).

    The backup is checked first (a valid LUKS header, the same payload
    offset and key size as the header it replaces); the keyslots now on
    *path* are lost and those of the backup work again.

    Parameters:
        path: the qcow2-luks image, or the LUKS1/LUKS2 volume.
        backup_file: a backup made by :func:`header_backup` or cryptsetup.
        header: the detached LUKS header file, when there is one.

    Raises:
        Error, FormatError: the backup is not a LUKS header backup, or does
            not fit *path*.
        StorageError: a file cannot be read or written.

    Example::

        pyqcrypt.header_restore("vol.luks", "vol.luks.header")
    """
    restore_confirmed(os.fspath(path), os.fspath(backup_file),
                      None if header is None else os.fspath(header), lambda warning: None)


def restore_confirmed(device: str, backup: str, header: Optional[str],
                      confirm: Callable[[str], None]) -> None:
    """header_restore, calling *confirm* with a warning saying what will be
    destroyed once the backup and the target are checked, before anything
    is written (the command line asks there; *confirm* raises to stop)."""
    from . import luks
    from .luks.magic import luks_version
    target = header or device
    if luks_version(backup) == 2:
        from .luks import luks2_keyslots
        confirm("Device %s already contains LUKS2 header. Replacing header will destroy existing "
                "keyslots" % target)
        luks2_keyslots.header_restore(device, backup, header)
        return
    luks.read_backup(backup)                # a bad backup is refused before anything else
    st, region, fixed = _restore_target(device, header)
    with st:
        if region is None:
            current = _current_area(luks.device_region(st))
            region = luks.backup.restore_region(st, backup)
        else:
            current = _current_area(region)
        confirm("Device %s %s. Replacing header will destroy existing keyslots" % (
            target, "already contains LUKS header" if current else "does not contain LUKS header"))
        luks.header_restore(region, backup, current, force=True, fixed_region=fixed)


def _restore_target(device, header):
    """(locked Storage, region or None, whether the region is fixed): the
    FDE clusters of a qcow2-luks image (never byte 0 of the file), else the
    file holding the header, whose region follows from the backup."""
    from .locks import lock_image
    from .qcow2.open import fde_region, is_qcow2
    from .storage import Storage
    if header is None and is_qcow2(device):
        st, region = fde_region(device, writable=True)
        return st, region, True
    st = Storage(header or device, writable=True)
    try:
        lock_image(st, mode="exclusive")
    except BaseException:
        st.close()
        raise
    return st, None, False


def _current_area(region):
    """The HeaderArea now in *region*, or None when it holds no valid
    LUKS1 header."""
    from .luks.area import HeaderArea
    try:
        return HeaderArea.load(region)
    except Error:
        return None
