# SPDX-License-Identifier: LGPL-2.1-or-later
"""The cryptsetup-style verbs on LUKS2 volumes and detached LUKS2 headers
(libcryptsetup does the keyslot work, see pyqcrypt.luks.luks2_keyslots).
``luks_cmds`` sends a command here when the header it names is LUKS2, or
``format`` when ``--type luks2`` asks for one; the messages and exit codes
are those of the LUKS1 commands."""

import sys

from ..errors import Error, WrongPassphrase
from . import common


def is_luks2(args):
    """True when the command works on a LUKS2 header; a --type that
    contradicts the header is an error."""
    from ..luks import luks2
    where = args.header or args.device
    version = luks2.luks_version(where)
    wanted = getattr(args, "type", None)
    if version == 2:
        if wanted == "luks1":
            raise Error("%s holds a LUKS2 header, not LUKS1 (--type luks1)" % where)
        return True
    if wanted == "luks2":
        raise Error("%s does not hold a LUKS2 header (--type luks2)" % where)
    return False


def cmd_format(args):
    from ..crypto import CipherSpec
    from ..luks.luks2_format import Luks2Request, format_existing
    from ..secrets import read_key_file
    spec = CipherSpec.parse(args.cipher, args.key_size)
    master_key = None
    if args.master_key_file:
        master_key = read_key_file(args.master_key_file, limit=1 << 10)
    request = Luks2Request(spec, sector_size=args.sector_size or 0, pbkdf=common.luks2_pbkdf(args),
                           uuid=args.uuid, label=args.label, master_key=master_key)
    target = args.header or args.device
    common.confirm(args, "This will overwrite data on %s irrevocably" % target)
    try:
        with common.passphrase(args) as pw:
            _, _, slot = format_existing(args.device, pw, request, header=args.header)
    finally:
        if master_key is not None:
            master_key.wipe()
    if args.verbose:
        print("Key slot %d created.\nCommand successful." % slot)
    return 0


def cmd_dump(args):
    from ..luks import luks2, luks2_keyslots as ks
    if args.dump_volume_key:
        common.confirm(args, "The header dump with volume key is sensitive information that "
                             "allows access to encrypted partition without a passphrase")
        with common.passphrase(args) as pw:
            sys.stdout.write(ks.dump_volume_key_text(args.device, pw, args.header, args.key_slot))
        return 0
    luks2.dump(args.device, args.header)
    return 0


def cmd_add_key(args):
    from ..luks import luks2_keyslots as ks
    with common.passphrase(args, "Enter any existing passphrase: ") as pw, \
            common.new_passphrase(args, args.new_key_file_pos) as new:
        slot = ks.add_key(args.device, pw, new, common.luks2_pbkdf(args), args.header,
                          args.key_slot)
    if args.verbose:
        print("Key slot %d created.\nCommand successful." % slot)
    return 0


def cmd_remove_key(args):
    from ..luks import luks2_keyslots as ks
    with common.passphrase(args, "Enter passphrase to be deleted: ") as pw:
        slot, active = ks.slots_for_removal(args.device, pw, args.header)
    if active == [slot]:
        common.confirm(args, "This is the last keyslot. Device will become unusable after "
                             "purging this key")
    ks.kill_slot(args.device, slot, args.header)
    if args.verbose:
        print("Key slot %d removed.\nCommand successful." % slot)
    return 0


def cmd_change_key(args):
    from ..luks import luks2_keyslots as ks
    with common.passphrase(args, "Enter passphrase to be changed: ") as old, \
            common.new_passphrase(args, args.new_key_file_pos) as new:
        old_slot, new_slot = ks.change_key(args.device, old, new, common.luks2_pbkdf(args),
                                           args.header, args.key_slot)
    if args.verbose:
        print("Key slot %d changed (now in slot %d).\nCommand successful." % (old_slot, new_slot))
    return 0


def cmd_kill_slot(args):
    from ..luks import luks2_keyslots as ks
    active = ks.slot_states(args.device, args.header)
    if args.slot not in active:
        raise Error("keyslot %d of %s is not active" % (args.slot, args.header or args.device))
    others = [n for n in active if n != args.slot]
    if (args.key_file or not args.batch_mode) and others:
        with common.passphrase(args, "Enter any remaining passphrase: ") as pw:
            if not ks.proves_access(args.device, pw, others, args.header):
                raise WrongPassphrase()
    if not others:
        common.confirm(args, "This is the last keyslot. Device will become unusable after "
                             "purging this key")
    ks.kill_slot(args.device, args.slot, args.header)
    return 0


def cmd_test_passphrase(args):
    from ..luks import luks2_keyslots as ks
    with common.passphrase(args) as pw:
        slot = ks.test_passphrase(args.device, pw, args.header, args.key_slot,
                                  getattr(args, "force_share", False))
    if args.verbose:
        print("Key slot %d unlocked.\nCommand successful." % slot)
    return 0


def cmd_erase(args):
    from ..luks import luks2_keyslots as ks
    common.confirm(args, "This operation will erase all keyslots on device %s.\nDevice will "
                         "become unusable after this operation" % (args.header or args.device))
    ks.erase(args.device, args.header)
    return 0
