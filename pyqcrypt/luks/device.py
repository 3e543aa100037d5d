# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS1 volumes on a file or block device, as cryptsetup makes them
(not inside a qcow2 image): create a new one, format an existing file or block
device, and open one (header attached or detached) for payload I/O.

A new volume is built under a temporary name beside its destination and
renamed into place only when complete, so a failed create leaves nothing.
Existing files and devices are used under QEMU's image locks
(``pyqcrypt.locks``), held while they are open: formatting takes them
exclusively, payload I/O takes "payload" (writing) or "read" locks on the
volume and "read" locks on a detached header.
"""

import os

from ..crypto import CipherSpec, policy
from ..crypto.keybuf import as_secret
from ..errors import Error
from ..locks import lock_image
from ..storage import Publication, Region, Storage
from ..units import SECTOR, round_up
from .area import HeaderArea, device_region
from .format import format_region, plan_layout
from .keyslots import unlock
from .volume import LuksPayload


def _spec(spec, key_bits=None):
    if isinstance(spec, CipherSpec):
        return spec
    return CipherSpec.parse(spec or "aes-xts-plain64", key_bits)


def create_volume(path, size, passphrase, spec="aes-xts-plain64", key_bits=None,
                  hash_name="sha256", iter_time_ms=None, iterations=None, header=None,
                  uuid=None, master_key=None, align_sectors=None, allow_insecure=False):
    """Create a new LUKS1 volume whose payload holds *size* bytes (rounded
    up to whole sectors).  With *header*, the header goes to that new file
    and *path* is all payload.  Returns the LuksHeader written."""
    spec = _spec(spec, key_bits).check()
    if not isinstance(size, int) or size < 0:
        raise Error("size must be a non-negative number of bytes")
    policy.enforce(spec, size, allow_insecure)
    payload = round_up(size, SECTOR)
    layout = plan_layout(spec.key_bytes, align_sectors=align_sectors, detached=header is not None)
    with Publication() as files:
        data = files.new(path)
        if header is not None:
            hdr_file = files.new(header, first=True)        # in place before its payload
            hdr_file.storage.truncate(layout.area_bytes)
            data.storage.truncate(payload)
            region = Region(hdr_file.storage, 0, layout.area_bytes)
        else:
            data.storage.truncate(layout.area_bytes + payload)
            region = Region(data.storage, 0, layout.area_bytes)
        # cryptsetup's layout, qemu-img create's keyslot cost
        hdr, mk = format_region(region, spec, passphrase, hash_name, layout, "cryptsetup",
                                iter_time_ms, iterations, uuid, master_key, calibration="qemu")
        mk.wipe()
        files.commit()
        return hdr


def format_device(path, passphrase, spec="aes-xts-plain64", key_bits=None, hash_name="sha256",
                  iter_time_ms=None, iterations=None, header=None, uuid=None, master_key=None,
                  align_sectors=None, allow_insecure=False):
    """Format an existing file or block device in place, keeping its size
    (cryptsetup luksFormat).  With *header*, the header is written to that
    file (created if missing) and the device itself is not touched."""
    spec = _spec(spec, key_bits).check()
    layout = plan_layout(spec.key_bytes, align_sectors=align_sectors, detached=header is not None)
    if not os.path.exists(path):
        raise Error("%s does not exist (format works on an existing file or device; use create "
                    "for a new one)" % path)
    with Storage(path) as probe:
        policy.enforce(spec, probe.size(), allow_insecure)
    if header is not None:
        with Storage(path) as data:
            if data.size() < SECTOR:
                raise Error("%s is too small to hold any payload" % path)
        with Storage(header, writable=True, create=True) as st:
            lock_image(st, mode="exclusive")
            if not st.is_block_device and st.size() < layout.area_bytes:
                st.truncate(layout.area_bytes)
            if st.size() < layout.area_bytes:
                raise Error("%s is too small for a LUKS header (%d bytes needed)"
                            % (header, layout.area_bytes))
            hdr, mk = format_region(Region(st, 0, layout.area_bytes), spec, passphrase, hash_name,
                                    layout, "cryptsetup", iter_time_ms, iterations, uuid, master_key)
            mk.wipe()
            return hdr
    with Storage(path, writable=True) as st:
        lock_image(st, mode="exclusive")
        size = st.size()
        if size <= layout.area_bytes:
            raise Error("%s (%d bytes) is too small: the LUKS header area alone needs %d bytes"
                        % (path, size, layout.area_bytes))
        hdr, mk = format_region(Region(st, 0, layout.area_bytes), spec, passphrase, hash_name,
                                layout, "cryptsetup", iter_time_ms, iterations, uuid, master_key)
        mk.wipe()
        return hdr


def open_volume(path, passphrase, header=None, writable=False, key_slot=None, force_share=False):
    """Unlock a LUKS1 volume on a file or device; returns a LuksPayload block device.

    The volume is opened once (its header is read through the same file
    descriptor) and locked for payload I/O ("payload" when *writable*, else
    "read"); a detached *header* is locked for reading.  The locks last
    until the payload is closed.  *force_share* (read-only) takes none."""
    data = Storage(path, writable=writable)
    owned = [data]
    try:
        lock_image(data, mode="payload" if writable else "read", force_share=force_share)
        if header is None:
            area = HeaderArea.load(device_region(data))
        else:
            hst = Storage(header)
            owned.append(hst)
            lock_image(hst, mode="read", force_share=force_share)
            area = HeaderArea.load(device_region(hst))
        secret, owned_secret = as_secret(passphrase)
        try:
            _, mk = unlock(area, secret, key_slot)
        finally:
            if owned_secret:
                secret.wipe()
        try:
            return LuksPayload.luks1(data, area.header, mk, writable=writable, owned_storages=owned)
        finally:
            mk.wipe()
    except BaseException:
        for st in owned:
            st.close()
        raise
