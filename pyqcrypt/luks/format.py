# SPDX-License-Identifier: LGPL-2.1-or-later
"""Formatting new LUKS1 headers, in cryptsetup's layout or QEMU's.

Both layouts put keyslot i at sector 8 + i * round_up(material sectors, 8).
cryptsetup then aligns the payload to 2048 sectors (1 MiB) and fills the
unused keyslot areas with random bytes; QEMU puts the payload right after
the eighth slot and leaves unused areas zero.  Raw volumes follow
cryptsetup; qcow2 FDE regions follow QEMU.  A detached header has payload
offset 0 and is exactly as long as its key material.
"""

import uuid as uuidlib
from dataclasses import dataclass

from ..crypto import CipherSpec, SecretBuffer, pbkdf2, random_bytes
from ..crypto.cipherspec import check_hash
from ..crypto.keybuf import as_secret
from ..errors import Error
from ..units import round_up
from .header import (DIGEST_SIZE, HEADER_SIZE, NUM_SLOTS, SALT_SIZE, SECTOR, STRIPES,
                     Keyslot, LuksHeader, material_sectors)
from ..crypto.kdf import benchmark_for
from .keyslots import (CALIBRATIONS, DEFAULT_ITER_TIME_MS, digest_iterations, encrypted_material,
                       slot_iterations)

KEYSLOT_ALIGN_SECTORS = 8          # 4096 bytes
DEFAULT_ALIGN_SECTORS = 2048       # cryptsetup's 1 MiB payload alignment


@dataclass
class Layout:
    km_offsets: list          # sectors, per slot
    stripes: int
    payload_offset: int       # sectors (0 when detached)
    area_bytes: int           # bytes of header + key material to reserve


def plan_layout(key_bytes, stripes=STRIPES, style="cryptsetup", align_sectors=None,
                detached=False):
    """Keyslot offsets and payload offset for a new header."""
    if style not in ("cryptsetup", "qemu"):
        raise Error("unknown layout %r" % style)
    if not isinstance(stripes, int) or not 1 <= stripes <= 1 << 16:
        raise Error("stripe count %r is out of range" % (stripes,))
    first = round_up(HEADER_SIZE, KEYSLOT_ALIGN_SECTORS * SECTOR) // SECTOR
    per_slot = round_up(material_sectors(key_bytes, stripes), KEYSLOT_ALIGN_SECTORS)
    offsets = [first + i * per_slot for i in range(NUM_SLOTS)]
    end = first + NUM_SLOTS * per_slot
    if detached:
        payload = 0
    elif style == "qemu":
        payload = end
    else:
        align = DEFAULT_ALIGN_SECTORS if align_sectors is None else align_sectors
        if not isinstance(align, int) or align < 1:
            raise Error("payload alignment must be a positive number of sectors")
        payload = round_up(end, align)
    return Layout(offsets, stripes, payload, (payload or end) * SECTOR)


def new_header(spec, hash_name, layout, master_key, uuid=None, iter_time_ms=None,
               iterations=None, ips=None, calibration="cryptsetup"):
    """A header with no active slot, its digest computed from *master_key*."""
    if uuid is None:
        uuid = str(uuidlib.uuid4())
    else:
        try:
            uuid = str(uuidlib.UUID(str(uuid)))
        except ValueError:
            raise Error("%r is not a UUID" % (uuid,)) from None
    salt = random_bytes(SALT_SIZE)
    header = LuksHeader(spec.luks_name, spec.luks_mode, hash_name, layout.payload_offset,
                        spec.key_bytes, bytes(DIGEST_SIZE), salt, 1, uuid,
                        [Keyslot(False, 0, bytes(SALT_SIZE), off, layout.stripes)
                         for off in layout.km_offsets])
    header.mk_digest_iter = digest_iterations(hash_name, spec.key_bytes, iter_time_ms, iterations,
                                              ips, calibration)
    with pbkdf2(hash_name, master_key, salt, header.mk_digest_iter, DIGEST_SIZE) as digest:
        header.mk_digest = digest.reveal()      # a digest, stored in clear on disk
    return header


def _master_key_copy(spec, master_key):
    """The master key for a new header as a SecretBuffer the caller owns:
    a random one when *master_key* is None, else a copy of it (an Error
    when it is not *spec*'s key length)."""
    if master_key is None:
        return SecretBuffer.random(spec.key_bytes)
    mk, owned = as_secret(master_key)
    if len(mk) != spec.key_bytes:
        if owned:
            mk.wipe()               # the copy as_secret made of plain bytes
        raise Error("the master key is %d bits, %s needs %d" % (len(mk) * 8, spec, spec.key_bits))
    if not owned:
        mk = SecretBuffer.from_bytes(mk.writable_view())
    return mk


def _fill_area(region, header, layout, key_bytes, style):
    """Fill the whole header area before anything is written into it:
    zeros up to the first keyslot, each keyslot's area random (cryptsetup)
    or zero (QEMU), zeros from the end of the key material to the payload."""
    first = layout.km_offsets[0] * SECTOR
    region.write(0, bytes(first), "LUKS header area")
    for n, ks in enumerate(header.slots):
        start, end = ks.extent(key_bytes)
        fill = random_bytes(end - start) if style == "cryptsetup" else bytes(end - start)
        region.write(start, fill, "keyslot %d area" % n)
    km_end = header.key_material_end()
    if layout.area_bytes > km_end:
        region.write(km_end, bytes(layout.area_bytes - km_end), "padding before the payload")


def format_region(region, spec, passphrase, hash_name="sha256", layout=None, style="cryptsetup",
                  iter_time_ms=None, iterations=None, uuid=None, master_key=None, slot=0,
                  calibration=None):
    """Write a new LUKS1 header with *passphrase* in *slot* into *region*.
    *calibration* ("cryptsetup" or "qemu", see keyslots.CALIBRATIONS)
    follows *style* unless given.

    Order: the whole area is first filled (zeros before the first keyslot,
    random or zero keyslot areas by *style*), then the new slot's key
    material, then the header itself, then one sync.  Returns
    (header, master key SecretBuffer)."""
    if isinstance(spec, str):
        spec = CipherSpec.parse(spec)
    spec.check()
    hash_name = check_hash(hash_name)
    if layout is None:
        layout = plan_layout(spec.key_bytes, style=style)
    if region.length < layout.area_bytes:
        raise Error("%s is too small for a LUKS header: %d bytes needed, %d available"
                    % (region.path, layout.area_bytes, region.length))
    if not 0 <= slot < NUM_SLOTS:
        raise Error("keyslot number must be 0..%d" % (NUM_SLOTS - 1))
    mk, owned = _master_key_copy(spec, master_key), True
    try:
        calibration = calibration or style
        backend = CALIBRATIONS[calibration][0]
        # One benchmark serves the keyslot (and the digest where it is timed alike).
        ips = None if iterations is not None else benchmark_for(
            hash_name, iter_time_ms or DEFAULT_ITER_TIME_MS, spec.key_bytes, backend)
        header = new_header(spec, hash_name, layout, mk, uuid, iter_time_ms, iterations, ips,
                            calibration)
        _fill_area(region, header, layout, spec.key_bytes, style)
        iters = slot_iterations(hash_name, spec.key_bytes, iter_time_ms, iterations, ips,
                                calibration)
        ks = header.slots[slot]
        salt = random_bytes(SALT_SIZE)
        with encrypted_material(header, slot, mk, passphrase, iters, salt) as material:
            region.write(ks.km_offset * SECTOR, material.writable_view(), "key material")
        ks.active, ks.iterations, ks.salt = True, iters, salt
        region.write(0, header.pack(), "LUKS header")
        region.sync()
        result = mk
        owned = False
        return header, result
    finally:
        if owned:
            mk.wipe()
