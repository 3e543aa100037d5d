# SPDX-License-Identifier: LGPL-2.1-or-later
"""The cryptsetup-style commands: format, dump, add-key, remove-key,
change-key, kill-slot, test-passphrase, erase, header-backup and
header-restore.  They work on raw LUKS1 volumes and detached headers
(``--header``) through one header-area code path."""

import sys

from .. import luks
from ..crypto import CipherSpec
from ..errors import Error, WrongPassphrase
from ..image import open_luks_area
from ..secrets import read_key_file
from ..storage import Storage
from . import common


def _area(args, writable):
    return open_luks_area(args.device, writable=writable, header=args.header)


def cmd_format(args):
    spec = CipherSpec.parse(args.cipher, args.key_size)
    master_key = None
    if args.master_key_file:
        master_key = read_key_file(args.master_key_file, limit=1 << 10)
    target = args.header or args.device
    common.confirm(args, "This will overwrite data on %s irrevocably" % target)
    with common.passphrase(args) as pw:
        try:
            hdr = luks.raw.format_device(
                args.device, pw, spec, hash_name=args.hash, header=args.header, uuid=args.uuid,
                master_key=master_key, align_sectors=args.align_payload,
                allow_insecure=args.allow_insecure, **common.iteration_args(args))
        finally:
            if master_key is not None:
                master_key.wipe()
    if args.verbose:
        print("Key slot 0 created.\nCommand successful.")
    return 0 if hdr else 1


def cmd_dump(args):
    from ..luks import luks2
    if luks2.luks_version(args.header or args.device) == 2:
        if args.dump_volume_key:
            raise Error("--dump-volume-key on LUKS2: use cryptsetup luksDump --dump-volume-key")
        luks2.dump(args.device, args.header)
        return 0
    with _area(args, False) as area:
        name = args.header or args.device
        if args.dump_volume_key:
            common.confirm(args, "The header dump with volume key is sensitive information that "
                                 "allows access to encrypted partition without a passphrase")
            with common.passphrase(args) as pw:
                _, mk = luks.unlock(area, pw, args.key_slot)
            with mk:
                sys.stdout.write(luks.dump_volume_key_text(area.header, name, mk.reveal()))
        else:
            sys.stdout.write(luks.dump_text(area.header, name))
    return 0


def cmd_add_key(args):
    with _area(args, True) as area:
        with common.passphrase(args, "Enter any existing passphrase: ") as pw:
            _, mk = luks.unlock(area, pw)
        with mk, common.new_passphrase(args, args.new_key_file_pos) as new:
            slot = luks.add_key(area, mk, new, args.key_slot, **common.iteration_args(args))
    if args.verbose:
        print("Key slot %d created.\nCommand successful." % slot)
    return 0


def cmd_remove_key(args):
    if args.key_file_pos and not args.key_file:
        args.key_file = args.key_file_pos
    with _area(args, True) as area:
        with common.passphrase(args, "Enter passphrase to be deleted: ") as pw:
            slot, mk = luks.unlock(area, pw)
            mk.wipe()
        last = area.header.active_slots() == [slot]
        if last:
            common.confirm(args, "This is the last keyslot. Device will become unusable after "
                                 "purging this key")
        luks.kill_slot(area, slot, allow_last=True)
    if args.verbose:
        print("Key slot %d removed.\nCommand successful." % slot)
    return 0


def cmd_change_key(args):
    with _area(args, True) as area:
        with common.passphrase(args, "Enter passphrase to be changed: ") as old:
            old_slot, mk = luks.unlock(area, old, args.key_slot)
        with mk, common.new_passphrase(args, args.new_key_file_pos) as new:
            new_slot = luks.replace_slot(area, old_slot, mk, new, **common.iteration_args(args))
    if args.verbose:
        print("Key slot %d changed (now in slot %d).\nCommand successful." % (old_slot, new_slot))
    return 0


def cmd_kill_slot(args):
    with _area(args, True) as area:
        slot = args.slot
        if not 0 <= slot < 8:
            raise Error("keyslot number must be 0..7, not %d" % slot)
        if not area.header.slots[slot].active:
            raise Error("keyslot %d of %s is not active" % (slot, area.path))
        others = [n for n in area.header.active_slots() if n != slot]
        if args.key_file or not args.batch_mode:
            # Prove access with a passphrase that stays valid, as cryptsetup asks.
            if others:
                with common.passphrase(args, "Enter any remaining passphrase: ") as pw:
                    opened = None
                    for n in others:
                        mk = luks.try_slot(area, n, pw)
                        if mk is not None:
                            mk.wipe()
                            opened = n
                            break
                    if opened is None:
                        raise WrongPassphrase()
        if not others:
            common.confirm(args, "This is the last keyslot. Device will become unusable after "
                                 "purging this key")
        luks.kill_slot(area, slot, allow_last=True)
    return 0


def cmd_test_passphrase(args):
    with _area(args, False) as area, common.passphrase(args) as pw:
        slot, mk = luks.unlock(area, pw, args.key_slot)
        mk.wipe()
    if args.verbose:
        print("Key slot %d unlocked.\nCommand successful." % slot)
    return 0


def cmd_erase(args):
    with _area(args, True) as area:
        common.confirm(args, "This operation will erase all keyslots on device %s.\nDevice will "
                             "become unusable after this operation" % (args.header or args.device))
        luks.erase(area)
    return 0


def cmd_header_backup(args):
    with _area(args, False) as area:
        luks.header_backup(area, args.header_backup_file)
    return 0


def cmd_header_restore(args):
    target = args.header or args.device
    try:
        current = open_luks_area(args.device, writable=False, header=args.header)
    except Error:
        current = None
    try:
        common.confirm(args, "Device %s %s. Replacing header will destroy existing keyslots" % (
            target, "already contains LUKS header" if current else "does not contain LUKS header"))
        with Storage(target, writable=True) as st:
            region = luks.backup.restore_region(st, args.header_backup_file)
            luks.header_restore(region, args.header_backup_file, current, force=True)
    finally:
        if current is not None:
            current.close()
    return 0


def register(sub):
    # -h is --hash here, as in cryptsetup; --help stays.
    p = sub.add_parser("format", help="format a file or block device as LUKS1 (luksFormat)",
                       add_help=False,
                       description="Format an existing file or block device as a LUKS1 volume, "
                                   "keeping its size (cryptsetup luksFormat semantics).")
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.add_argument("device")
    common.add_key_file_options(p, slot=False)
    p.add_argument("-c", "--cipher", default="aes-xts-plain64", help="cipher spec (default aes-xts-plain64)")
    p.add_argument("-s", "--key-size", type=int, metavar="BITS",
                   help="master key size in bits (default 512 for xts, else 256)")
    p.add_argument("-h", "--hash", default="sha256", help="PBKDF2 hash (default sha256)")
    common.add_pbkdf_options(p)
    p.add_argument("--uuid", help="UUID for the new header")
    p.add_argument("--master-key-file", "--volume-key-file", dest="master_key_file", metavar="FILE",
                   help="use the master key in FILE instead of a random one")
    p.add_argument("--allow-insecure", action="store_true",
                   help="allow weak choices (ECB, CBC with plain IVs, plain IVs over 2 TiB)")
    p.add_argument("--align-payload", type=int, metavar="SECTORS",
                   help="align the payload to SECTORS 512-byte sectors (default 2048)")
    common.add_batch_option(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_format)

    p = sub.add_parser("dump", help="print the LUKS1 header like cryptsetup luksDump")
    p.add_argument("device")
    common.add_key_file_options(p)
    p.add_argument("--dump-volume-key", "--dump-master-key", dest="dump_volume_key",
                   action="store_true", help="print the master key (needs the passphrase)")
    common.add_batch_option(p)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("add-key", help="add a passphrase in a free keyslot (luksAddKey)")
    p.add_argument("device")
    p.add_argument("new_key_file_pos", nargs="?", metavar="NEW_KEY_FILE")
    common.add_key_file_options(p, new=True)
    common.add_pbkdf_options(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_add_key)

    p = sub.add_parser("remove-key", help="remove the keyslot a passphrase opens (luksRemoveKey)")
    p.add_argument("device")
    p.add_argument("key_file_pos", nargs="?", metavar="KEY_FILE")
    common.add_key_file_options(p, slot=False)
    common.add_batch_option(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_remove_key)

    p = sub.add_parser("change-key", help="change a passphrase, crash-safely (luksChangeKey)")
    p.add_argument("device")
    p.add_argument("new_key_file_pos", nargs="?", metavar="NEW_KEY_FILE")
    common.add_key_file_options(p, new=True)
    common.add_pbkdf_options(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_change_key)

    p = sub.add_parser("kill-slot", help="wipe one keyslot (luksKillSlot)")
    p.add_argument("device")
    p.add_argument("slot", type=int)
    common.add_key_file_options(p, slot=False)
    common.add_batch_option(p)
    p.set_defaults(func=cmd_kill_slot)

    p = sub.add_parser("test-passphrase", help="check a passphrase (luksOpen --test-passphrase)")
    p.add_argument("device")
    common.add_key_file_options(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_test_passphrase)

    p = sub.add_parser("erase", help="destroy every keyslot for good (luksErase)")
    p.add_argument("device")
    p.add_argument("--header", metavar="HDR", help="detached LUKS header file")
    common.add_batch_option(p)
    p.set_defaults(func=cmd_erase)

    for name, func, hlp in (("header-backup", cmd_header_backup, "save the header and keyslots"),
                            ("header-restore", cmd_header_restore, "restore a saved header")):
        p = sub.add_parser(name, help=hlp + " (luksHeader%s)" % name.split("-")[1].capitalize())
        p.add_argument("device")
        p.add_argument("--header-backup-file", required=True, metavar="FILE")
        p.add_argument("--header", metavar="HDR", help="detached LUKS header file")
        common.add_batch_option(p)
        p.set_defaults(func=func)

