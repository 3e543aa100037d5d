# SPDX-License-Identifier: LGPL-2.1-or-later
"""The cryptsetup-style commands: format, dump, add-key, remove-key,
change-key, kill-slot, test-passphrase, erase, header-backup and
header-restore.  They work on raw LUKS1 volumes, detached headers
(``--header``) and the FDE region of qcow2-luks images through one
header-area code path (LUKS2 headers go to ``luks2_cmds``, through
libcryptsetup), under QEMU's image locks: writers lock the file holding
the header exclusively (qcow2: as qemu-img amend does), readers
take the consistent-read lock unless ``-U/--force-share``."""

import sys

from ..errors import Error, WrongPassphrase
from . import common, cs_exits, luks2_cmds, luks_dump_json


def _area(args, writable):
    from ..image import open_luks_area
    return open_luks_area(args.device, writable=writable, header=args.header,
                          force_share=getattr(args, "force_share", False))


def _qemu_usable(args, new):
    """A new passphrase for a qcow2-luks image must be one QEMU takes."""
    from ..qcow2.open import is_qcow2
    from ..crypto.keybuf import qemu_can_use
    if args.header is None and is_qcow2(args.device) and not qemu_can_use(new):
        raise Error("the new passphrase is not valid UTF-8 (or holds a NUL byte): QEMU could "
                    "never open %s with it; nothing was changed" % args.device)


@cs_exits.cryptsetup_exits_format
def cmd_format(args):
    from .. import luks
    from ..crypto import CipherSpec
    from ..device_names import warn_unstable
    from ..secrets import read_key_file
    warn_unstable(args.header, "detached LUKS header")
    if args.type == "luks2":
        return luks2_cmds.cmd_format(args)
    for opt in ("sector_size", "label"):
        if getattr(args, opt, None):
            raise Error("--%s needs LUKS2 (--type luks2)" % opt.replace("_", "-"))
    spec = CipherSpec.parse(args.cipher, args.key_size)
    master_key = None
    if args.master_key_file:
        master_key = read_key_file(args.master_key_file, limit=1 << 10)
    target = args.header or args.device
    common.confirm(args, "This will overwrite data on %s irrevocably" % target)
    with common.passphrase(args) as pw:
        try:
            luks.device.format_device(
                args.device, pw, spec, hash_name=args.hash, header=args.header, uuid=args.uuid,
                master_key=master_key, align_sectors=args.align_payload,
                allow_insecure=args.allow_insecure, **common.iteration_args(args))
        finally:
            if master_key is not None:
                master_key.wipe()
    if args.verbose:
        print("Key slot 0 created.\nCommand successful.")
    return 0


@cs_exits.cryptsetup_exits
def cmd_dump(args):
    from .. import luks
    if luks_dump_json.wants_json(args):
        return luks_dump_json.cmd_dump_json(args, luks2_cmds.is_luks2(args))
    if luks2_cmds.is_luks2(args):
        return luks2_cmds.cmd_dump(args)
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


@cs_exits.cryptsetup_exits
def cmd_add_key(args):
    from .. import luks
    if luks2_cmds.is_luks2(args):
        return luks2_cmds.cmd_add_key(args)
    with _area(args, True) as area:
        with common.passphrase(args, "Enter any existing passphrase: ") as pw:
            _, mk = luks.unlock(area, pw)
        with mk, common.new_passphrase(args, args.new_key_file_pos) as new:
            _qemu_usable(args, new)
            slot = luks.add_key(area, mk, new, args.key_slot, **common.iteration_args(args))
    if args.verbose:
        print("Key slot %d created.\nCommand successful." % slot)
    return 0


@cs_exits.cryptsetup_exits
def cmd_remove_key(args):
    from .. import luks
    if args.key_file_pos and not args.key_file:
        args.key_file = args.key_file_pos
    if luks2_cmds.is_luks2(args):
        return luks2_cmds.cmd_remove_key(args)
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


@cs_exits.cryptsetup_exits
def cmd_change_key(args):
    from .. import luks
    if luks2_cmds.is_luks2(args):
        return luks2_cmds.cmd_change_key(args)
    with _area(args, True) as area:
        with common.passphrase(args, "Enter passphrase to be changed: ") as old:
            old_slot, mk = luks.unlock(area, old, args.key_slot)
        with mk, common.new_passphrase(args, args.new_key_file_pos) as new:
            _qemu_usable(args, new)
            new_slot = luks.replace_slot(area, old_slot, mk, new, **common.iteration_args(args))
    if args.verbose:
        print("Key slot %d changed (now in slot %d).\nCommand successful." % (old_slot, new_slot))
    return 0


@cs_exits.cryptsetup_exits
def cmd_kill_slot(args):
    from .. import luks
    if luks2_cmds.is_luks2(args):
        return luks2_cmds.cmd_kill_slot(args)
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
                    if not luks.slots_opened_by(area, pw, others, first_only=True):
                        raise WrongPassphrase()
        if not others:
            common.confirm(args, "This is the last keyslot. Device will become unusable after "
                                 "purging this key")
        luks.kill_slot(area, slot, allow_last=True)
    return 0


@cs_exits.cryptsetup_exits
def cmd_test_passphrase(args):
    from .. import luks
    if luks2_cmds.is_luks2(args):
        return luks2_cmds.cmd_test_passphrase(args)
    with _area(args, False) as area, common.passphrase(args) as pw:
        slot, mk = luks.unlock(area, pw, args.key_slot)
        mk.wipe()
    if args.verbose:
        print("Key slot %d unlocked.\nCommand successful." % slot)
    return 0


@cs_exits.cryptsetup_exits
def cmd_erase(args):
    from .. import luks
    if luks2_cmds.is_luks2(args):
        return luks2_cmds.cmd_erase(args)
    with _area(args, True) as area:
        common.confirm(args, "This operation will erase all keyslots on device %s.\nDevice will "
                             "become unusable after this operation" % (args.header or args.device))
        luks.erase(area)
    return 0


@cs_exits.cryptsetup_exits
def cmd_header_backup(args):
    from ..keyslots import header_backup
    luks2_cmds.is_luks2(args)               # refuses a --type the header contradicts
    header_backup(args.device, args.header_backup_file, header=args.header,
                  force_share=getattr(args, "force_share", False))
    return 0


@cs_exits.cryptsetup_exits
def cmd_header_restore(args):
    from ..keyslots import restore_confirmed
    restore_confirmed(args.device, args.header_backup_file, args.header,
                      lambda warning: common.confirm(args, warning))
    return 0


def _add_force_share(p):
    p.add_argument("-U", "--force-share", action="store_true",
                   help="read without taking QEMU's image locks (qemu-img -U), e.g. while a "
                        "QEMU is using the image")


def _add_device(p, what="the LUKS1 volume, or a qcow2-luks image (its encryption header)"):
    p.add_argument("device", help=what)


def _add_verbose(p):
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say what was done, as cryptsetup -v does")


def register(sub):
    """Add this module's subcommands to the parser *sub*."""
    _register_format(sub)
    _register_dump(sub)
    _register_add_key(sub)
    _register_remove_key(sub)
    _register_change_key(sub)
    _register_kill_slot(sub)
    _register_test_passphrase(sub)
    _register_erase(sub)
    _register_header_backup_restore(sub)


def _register_format(sub):
    # -h is --hash here, as in cryptsetup; --help stays.
    p = common.add_command(
        sub, "format", "format a file or block device as LUKS1 or LUKS2 (luksFormat)",
        "Format an existing file or block device as a LUKS1 volume (or LUKS2 with --type luks2, "
        "through libcryptsetup: argon2id keyslots by default, --sector-size), keeping its size "
        "(cryptsetup luksFormat semantics): everything on it is lost.  Asks for YES unless -q.",
        ["pyqcrypt format -q --key-file pass.txt /dev/sdb1",
         "pyqcrypt format -c aes-cbc-essiv:sha256 -s 256 --key-file pass.txt vol.img",
         "pyqcrypt format --header vol.hdr --key-file pass.txt vol.img   # detached header",
         "pyqcrypt format --type luks2 --sector-size 4096 --key-file pass.txt vol.img"],
        add_help=False)
    p.add_argument("--help", action="help", help="show this help message and exit")
    _add_device(p, "the file or block device to format")
    common.add_type_option(p)
    common.add_key_file_options(p, slot=False)
    p.add_argument("-c", "--cipher", default="aes-xts-plain64", help="cipher spec (default aes-xts-plain64)")
    p.add_argument("-s", "--key-size", type=int, metavar="BITS",
                   help="master key size in bits (default 512 for xts, else 256)")
    p.add_argument("-h", "--hash", default="sha256",
                   help="PBKDF2 hash, and the LUKS2 anti-forensic hash (default sha256)")
    common.add_pbkdf_options(p)
    p.add_argument("--uuid", help="UUID for the new header (default: a random one)")
    p.add_argument("--master-key-file", "--volume-key-file", dest="master_key_file", metavar="FILE",
                   help="use the master key in FILE instead of a random one")
    p.add_argument("--allow-insecure", action="store_true",
                   help="allow weak choices (ECB, CBC with plain IVs, plain IVs over 2 TiB)")
    p.add_argument("--align-payload", type=int, metavar="SECTORS",
                   help="align the payload to SECTORS 512-byte sectors (default 2048)")
    p.add_argument("--sector-size", type=int, metavar="BYTES",
                   help="LUKS2 encryption sector size: 512, 1024, 2048 or 4096 (default: "
                        "libcryptsetup's choice, as cryptsetup luksFormat)")
    p.add_argument("--label", help="LUKS2 header label")
    common.add_batch_option(p)
    _add_verbose(p)
    p.set_defaults(func=cmd_format)


def _register_dump(sub):
    p = common.add_command(
        sub, "dump", "print the LUKS header like cryptsetup luksDump",
        "Print a LUKS header (cipher, keyslots, iterations, UUID) in cryptsetup luksDump's "
        "words; LUKS2 headers through libcryptsetup.  --dump-volume-key prints the master key "
        "too, after the passphrase and a confirmation.  --dump-json-metadata prints a LUKS2 "
        "header's JSON metadata as cryptsetup does (LUKS1 has none: exit 1).  "
        + luks_dump_json.DUMP_JSON_HELP,
        ["pyqcrypt dump vol.luks",
         "pyqcrypt dump disk.qcow2              # the LUKS header inside a qcow2-luks image",
         "pyqcrypt dump --dump-volume-key --key-file pass.txt vol.luks",
         "pyqcrypt dump --dump-json-metadata vol2.luks",
         "pyqcrypt dump --output json vol.luks"])
    _add_device(p)
    common.add_type_option(p, allow_luks2=True)
    common.add_key_file_options(p)
    p.add_argument("--dump-volume-key", "--dump-master-key", dest="dump_volume_key",
                   action="store_true", help="print the master key (needs the passphrase)")
    p.add_argument("--dump-json-metadata", action="store_true",
                   help="print a LUKS2 header's JSON metadata, as cryptsetup luksDump does")
    p.add_argument("--output", choices=("human", "json"), default="human",
                   help="human: luksDump's text (default); json: the fields described above")
    common.add_batch_option(p)
    _add_force_share(p)
    p.set_defaults(func=cmd_dump)


def _register_add_key(sub):
    _register_new_key(
        sub, "add-key", "add a passphrase in a free keyslot (luksAddKey)",
        "Add a passphrase in a free keyslot, after unlocking with an existing one (cryptsetup "
        "luksAddKey).  The new key material is written and synced before the header entry "
        "that enables it.",
        ["pyqcrypt add-key --key-file old.txt vol.luks new.txt",
         "pyqcrypt add-key --key-file old.txt --new-key-file new.txt -S 3 disk.qcow2"],
        cmd_add_key)


def _register_new_key(sub, name, summary, text, examples, func):
    """A command that unlocks with one passphrase and sets a new one."""
    p = common.add_command(sub, name, summary, text, examples)
    _add_device(p)
    p.add_argument("new_key_file_pos", nargs="?", metavar="NEW_KEY_FILE",
                   help="file holding the new passphrase (as --new-key-file)")
    common.add_type_option(p)
    common.add_key_file_options(p, new=True)
    common.add_pbkdf_options(p)
    _add_verbose(p)
    p.set_defaults(func=func)


def _register_remove_key(sub):
    p = common.add_command(
        sub, "remove-key", "remove the keyslot a passphrase opens (luksRemoveKey)",
        "Remove the keyslot that the given passphrase opens (cryptsetup luksRemoveKey): its "
        "key material is overwritten, then the slot disabled.  Removing the last keyslot asks "
        "for YES unless -q.",
        ["pyqcrypt remove-key vol.luks old.txt",
         "pyqcrypt remove-key --key-file old.txt disk.qcow2"])
    _add_device(p)
    p.add_argument("key_file_pos", nargs="?", metavar="KEY_FILE",
                   help="file holding the passphrase to remove (as --key-file)")
    common.add_type_option(p)
    common.add_key_file_options(p, slot=False)
    common.add_batch_option(p)
    _add_verbose(p)
    p.set_defaults(func=cmd_remove_key)


def _register_change_key(sub):
    _register_new_key(
        sub, "change-key", "change a passphrase, crash-safely (luksChangeKey)",
        "Replace a passphrase (cryptsetup luksChangeKey): the new one goes into a free keyslot "
        "first, then the old slot is removed, so a crash leaves the old or the new passphrase "
        "working, never neither.",
        ["pyqcrypt change-key --key-file old.txt vol.luks new.txt",
         "pyqcrypt change-key --key-file old.txt --new-key-file new.txt disk.qcow2"],
        cmd_change_key)


def _register_kill_slot(sub):
    p = common.add_command(
        sub, "kill-slot", "wipe one keyslot (luksKillSlot)",
        "Wipe keyslot SLOT (cryptsetup luksKillSlot), proving access with a passphrase of "
        "another slot.  Wiping the last keyslot asks for YES unless -q.",
        ["pyqcrypt kill-slot --key-file other.txt vol.luks 1",
         "pyqcrypt kill-slot -q disk.qcow2 3"])
    _add_device(p)
    p.add_argument("slot", type=int, help="the keyslot to wipe (0-7)")
    common.add_type_option(p)
    common.add_key_file_options(p, slot=False)
    common.add_batch_option(p)
    p.set_defaults(func=cmd_kill_slot)


def _register_test_passphrase(sub):
    p = common.add_command(
        sub, "test-passphrase", "check a passphrase (luksOpen --test-passphrase)",
        "Check that a passphrase opens a keyslot, without opening the volume (cryptsetup open "
        "--test-passphrase).  Exit status 0 when it does, 2 when no keyslot opens.",
        ["pyqcrypt test-passphrase --key-file pass.txt vol.luks",
         "pyqcrypt test-passphrase -v -S 0 disk.qcow2     # asks for the passphrase"])
    _add_device(p)
    common.add_type_option(p)
    common.add_key_file_options(p)
    _add_verbose(p)
    _add_force_share(p)
    p.set_defaults(func=cmd_test_passphrase)


def _register_erase(sub):
    p = common.add_command(
        sub, "erase", "destroy every keyslot for good (luksErase)",
        "Destroy every keyslot (cryptsetup luksErase): no passphrase opens the volume "
        "afterwards, and without a header backup the data is lost.  Asks for YES unless -q.",
        ["pyqcrypt erase vol.luks",
         "pyqcrypt erase -q --header vol.hdr vol.img"])
    _add_device(p)
    common.add_type_option(p)
    p.add_argument("--header", metavar="HDR", help="detached LUKS header file")
    common.add_batch_option(p)
    p.set_defaults(func=cmd_erase)


def _register_header_backup_restore(sub):
    for name, func, hlp, desc, example in (
            ("header-backup", cmd_header_backup, "save the header and keyslots",
             "Save the LUKS header and every keyslot area into a new file readable only by its "
             "owner (cryptsetup luksHeaderBackup); an existing file is never overwritten.",
             "pyqcrypt header-backup --header-backup-file vol.hdr.bak vol.luks"),
            ("header-restore", cmd_header_restore, "restore a saved header",
             "Write a header backup back (cryptsetup luksHeaderRestore), after checking that it "
             "matches the volume (payload offset, key size).  The current keyslots are lost; "
             "asks for YES unless -q.",
             "pyqcrypt header-restore --header-backup-file vol.hdr.bak vol.luks")):
        p = common.add_command(sub, name, hlp + " (luksHeader%s)" % name.split("-")[1].capitalize(),
                               desc, [example])
        _add_device(p)
        common.add_type_option(p)
        p.add_argument("--header-backup-file", required=True, metavar="FILE",
                       help="the backup file (written new by header-backup, read by header-restore)")
        p.add_argument("--header", metavar="HDR", help="detached LUKS header file")
        common.add_batch_option(p)
        if func is cmd_header_backup:
            _add_force_share(p)
        p.set_defaults(func=func)
