# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 3: LUKS1 headers, keyslots, formatting, dump, backup and payload I/O.

A LUKS header lives in a region (``HeaderArea``): offset 0 of a LUKS device,
a detached header file, or the FDE clusters of a qcow2 image; every
operation here works on all three the same way.
"""

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from .area import HeaderArea, is_luks, open_area, device_region
    from .backup import header_backup, header_restore, read_backup
    from .dump import dump_text, dump_volume_key_text
    from .format import format_region, plan_layout
    from .header import LuksHeader, Keyslot
    from .keyslots import (add_key, change_key, erase, kill_slot, master_key_matches, remove_key,
                           replace_slot, slots_opened_by, try_slot, unlock)
    from .volume import LuksPayload

# Loaded on first use (PEP 562): importing one module of the package does
# not import all of them.
_LAZY = {"HeaderArea": ".area", "is_luks": ".magic", "open_area": ".area", "device_region": ".area",
         "header_backup": ".backup", "header_restore": ".backup", "read_backup": ".backup",
         "dump_text": ".dump", "dump_volume_key_text": ".dump", "format_region": ".format",
         "plan_layout": ".format", "LuksHeader": ".header", "Keyslot": ".header", "add_key":
         ".keyslots", "change_key": ".keyslots", "erase": ".keyslots", "kill_slot": ".keyslots",
         "master_key_matches": ".keyslots", "remove_key": ".keyslots", "replace_slot":
         ".keyslots", "slots_opened_by": ".keyslots", "try_slot": ".keyslots", "unlock":
         ".keyslots", "LuksPayload": ".volume"}


__getattr__ = exports(__name__, _LAZY)


__all__ = ["HeaderArea", "Keyslot", "LuksHeader", "LuksPayload", "add_key", "change_key",
           "dump_text", "dump_volume_key_text", "erase", "format_region", "header_backup",
           "header_restore", "is_luks", "kill_slot", "master_key_matches", "open_area",
           "plan_layout", "device_region", "read_backup", "remove_key", "replace_slot", "slots_opened_by",
           "try_slot", "unlock"]
