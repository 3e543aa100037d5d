# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt dump`` in JSON: ``--dump-json-metadata`` prints a LUKS2
header's JSON metadata exactly as ``cryptsetup luksDump
--dump-json-metadata`` does (and, as cryptsetup, refuses LUKS1 with exit
1); ``--output json`` prints pyqcrypt's own JSON for every header dump
reads (LUKS1, LUKS2, detached headers, the LUKS header of a qcow2-luks
image), the fields listed in DUMP_JSON_HELP.  Neither ever prints a key."""

import sys

from ..errors import Error

DUMP_JSON_HELP = (
    "--output json prints one JSON object.  LUKS1 (and the header inside a qcow2-luks image): "
    "version, cipher_name, cipher_mode, hash_spec, payload_offset (sectors), mk_bits, mk_digest "
    "and mk_salt (hex), mk_iterations, uuid, and keyslots: 8 objects with slot, state "
    "(enabled/disabled) and, when enabled, iterations, salt (hex), key_material_offset "
    "(sectors) and stripes.  LUKS2: version, uuid, label, subsystem, epoch, metadata_area and "
    "keyslots_area (bytes), and metadata: the header's JSON metadata as "
    "--dump-json-metadata prints it.  No key is ever part of it.")


def wants_json(args):
    return args.dump_json_metadata or args.output == "json"


def cmd_dump_json(args, luks2):
    """Run a JSON dump; *luks2* says whether the header is LUKS2."""
    from .luks_cmds import _area
    if args.dump_volume_key:
        raise Error("--dump-volume-key prints the key in text only; drop --output json / "
                    "--dump-json-metadata")
    if args.dump_json_metadata:
        if not luks2:
            sys.stderr.write("Dump operation is not supported for this device type.\n")
            return 1
        from ..luks.luks2 import dump_json_text
        sys.stdout.write(dump_json_text(args.device, args.header))
        return 0
    if luks2:
        from ..luks.luks2 import dump_fields
        fields = dump_fields(args.device, args.header)
    else:
        from ..luks.dump import dump_fields as luks1_fields
        with _area(args, False) as area:
            fields = luks1_fields(area.header)
    import json
    sys.stdout.write(json.dumps(fields, indent=4) + "\n")
    return 0
