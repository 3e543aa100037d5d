# SPDX-License-Identifier: LGPL-2.1-or-later
"""Moving a LUKS2 volume's key into a LUKS1 header without touching its
data: the keep-ciphertext path from LUKS2 to qcow2-luks.

Every passphrase the caller supplies is first tried against the LUKS2
volume (libcryptsetup), so each one is known to open it, and each keeps
its keyslot number where LUKS1 has it (slots 0-7).  The new header keeps
the volume's UUID, so ``UUID=`` lines in crypttab and fstab still match
after converting back.  ``missing`` lists the source keyslots no supplied
passphrase opened: they cannot be carried, and the caller says so.
"""

from ..crypto.keybuf import as_secret
from ..errors import Error, WrongPassphrase
from ..storage import MemoryStorage, Region
from .area import HeaderArea
from .format import format_region, plan_layout
from .header import NUM_SLOTS, SECTOR
from .keyslots import add_key
from .luks2 import checked_segment, get_volume_key, luks2_device, read_header_metadata

LUKS1_HASH = "sha256"


class Rewrapped:
    """A LUKS1 header region (bytes, QEMU's layout) around a LUKS2
    volume's key, and what it carried."""

    def __init__(self, region, segment, slots, missing, uuid):
        self.region, self.segment, self.slots, self.missing, self.uuid = (
            region, segment, slots, missing, uuid)


def _target_slot(source_slot, taken):
    if source_slot < NUM_SLOTS and source_slot not in taken:
        return source_slot
    free = [s for s in range(NUM_SLOTS) if s not in taken]
    if not free:
        raise Error("more than %d passphrases: LUKS1 has only %d keyslots" % (NUM_SLOTS, NUM_SLOTS))
    return free[0]


def luks2_to_luks1_region(data, header_st, passphrases, spec_check, iter_time_ms=None,
                          iterations=None, key_slot=None):
    """Rewrap the LUKS2 volume (Storage *data*, its header in *header_st*)
    for keep-ciphertext conversion.  *passphrases* (one or more) each must
    open the volume; *spec_check(segment, key_bytes)* returns the CipherSpec
    or refuses the segment.  Returns a Rewrapped."""
    if not passphrases:
        raise Error("%s is LUKS2: moving it to LUKS1/qcow2 without re-encrypting needs its "
                    "passphrase (to wrap the same volume key in a LUKS1 keyslot)" % data.path)
    meta = read_header_metadata(header_st)
    detached = header_st is not data
    keys, opened = [], []
    try:
        with luks2_device(data.path, header_st.path if detached else None) as (ffi, lib, cd):
            seg = checked_segment(meta, ffi, lib, cd)
            spec = spec_check(seg, lib.crypt_get_volume_key_size(cd))
            for n, p in enumerate(passphrases):
                try:
                    vk, slot = get_volume_key(ffi, lib, cd, p, key_slot if n == 0 else None,
                                              meta.path)
                except WrongPassphrase:
                    if n == 0:
                        raise
                    raise Error("passphrase %d of %d given to carry does not open %s"
                                % (n + 1, len(passphrases), meta.path)) from None
                keys.append(vk)
                if slot in opened:
                    raise Error("two of the passphrases given open the same keyslot %d of %s"
                                % (slot, meta.path))
                opened.append(slot)
        region, slots = _build_region(spec, keys[0], passphrases, opened, meta.uuid,
                                      iter_time_ms, iterations)
    finally:
        for k in keys:
            k.wipe()
    missing = [s for s in meta.active_keyslots() if s not in opened]
    return Rewrapped(region, seg, slots, missing, meta.uuid)


def _build_region(spec, volume_key, passphrases, source_slots, uuid, iter_time_ms, iterations):
    """The LUKS1 header area in memory: the first passphrase formats it,
    the others are added; returns (bytes, {source slot: LUKS1 slot})."""
    layout = plan_layout(spec.key_bytes, style="qemu")
    mem = MemoryStorage(layout.area_bytes)
    region = Region(mem, 0, layout.area_bytes)
    slots = {}
    first = _target_slot(source_slots[0], set())
    secret, owned = as_secret(passphrases[0])
    try:
        hdr, mk = format_region(region, spec, secret, LUKS1_HASH, layout, "qemu", iter_time_ms,
                                iterations, uuid=uuid, master_key=volume_key, slot=first)
    finally:
        if owned:
            secret.wipe()
    slots[source_slots[0]] = first
    try:
        area = HeaderArea(region, hdr)
        for p, src_slot in zip(passphrases[1:], source_slots[1:]):
            target = _target_slot(src_slot, set(slots.values()))
            add_key(area, mk, p, slot=target, iter_time_ms=iter_time_ms, iterations=iterations,
                    calibration="qemu")
            slots[src_slot] = target
    finally:
        mk.wipe()
    if len(mem.buf) % SECTOR:
        raise Error("internal: LUKS1 header area is not whole sectors")
    return bytes(mem.buf), slots
