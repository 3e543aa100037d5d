# SPDX-License-Identifier: LGPL-2.1-or-later
"""Opening qcow2 images, encrypted or not, and finding their parts.

LUKS (crypt_method 2): the FDE header extension names a cluster-aligned
region holding a LUKS1 header and key material in QEMU's layout; it is
unlocked and re-keyed through the same ``HeaderArea`` code as raw volumes.
Legacy AES (crypt_method 1): the passphrase, truncated or zero-padded to 16
bytes, is an AES-128 key; CBC with plain64 IVs from the guest sector.

Creating images is ``create.py``'s job.
"""

import os
from ..errors import Error, FormatError
from ..storage import Region, Storage, read_head
from .header import (CRYPT_LUKS, CRYPT_NONE, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, MAGIC,
                     Qcow2Header)
from .header import MAX_HEADER_READ
from .locks import lock_image


def is_qcow2(path):
    """True when *path* starts with the qcow2 magic; a file that cannot be
    read is an error (storage.read_head), not "not qcow2"."""
    return read_head(path, len(MAGIC)) == MAGIC


def qcow2_encrypted(path):
    """True when the qcow2 image at *path* is encrypted (LUKS or AES)."""
    with Storage(path) as st:
        return read_header(st).crypt_method != CRYPT_NONE


def read_header(storage):
    size = storage.size()
    return Qcow2Header.parse(storage.pread(0, min(size, MAX_HEADER_READ), "qcow2 header"), size,
                             path=storage.path)


def data_file_path(image_path, header):
    """The external data file's path.  A relative name is looked up beside
    the image first and then, as qemu-img 7.2 does, in the current
    directory."""
    name = header.data_file
    if name is None:
        return None
    if os.path.isabs(name):
        return name
    beside = os.path.join(os.path.dirname(os.path.abspath(image_path)), name)
    if not os.path.exists(beside) and os.path.exists(name):
        return name
    return beside


def fde_area(storage, header):
    """The HeaderArea of a qcow2-luks image's FDE region."""
    from ..luks.area import HeaderArea
    if header.crypt_method != CRYPT_LUKS:
        raise Error("%s is not encrypted with LUKS" % storage.path)
    off, length = header.fde
    return HeaderArea.load(Region(storage, off, length))


def open_qcow2(path, passphrase=None, writable=False, key_slot=None, force_share=False,
               keyless=False):
    """Open a qcow2 image (unlocking it when encrypted) as a Qcow2Image.
    With *keyless*, an encrypted image opens without a passphrase for work
    on its metadata alone: any data it would read or write is refused."""
    from .image import Qcow2Image
    st = Storage(path, writable=writable)
    owned = [st]
    img = None
    try:
        lock_image(st, writable, force_share)
        header = read_header(st)
        data = None
        if header.has_data_file:
            data = Storage(data_file_path(path, header), writable=writable)
            owned.append(data)
            lock_image(data, writable, force_share)
        img = Qcow2Image(st, writable, data, owned=owned)
        if header.crypt_method != CRYPT_NONE:
            if passphrase is None and keyless:
                from .crypt_io import KeylessCrypt
                img.crypt = KeylessCrypt(path)
                return img
            if passphrase is None:
                raise Error("%s is encrypted; a passphrase is needed" % path)
            img.crypt = _crypt_for(st, header, passphrase, key_slot)
        return img
    except BaseException:
        if img is not None:
            img._abandon()          # no flush, no "unclosed image" warning
        for s in owned:
            s.close()
        raise


def _crypt_for(storage, header, passphrase, key_slot):
    from ..crypto import CipherSpec, SectorCipher
    from ..luks.keyslots import unlock
    from .crypt_io import HostSectorCrypt
    if header.crypt_method == CRYPT_LUKS:
        area = fde_area(storage, header)
        _, mk = unlock(area, passphrase, key_slot)
        with mk:
            return HostSectorCrypt(SectorCipher(area.header.spec, mk), iv_from_host=True)
    with aes_key(passphrase) as key:
        return HostSectorCrypt(SectorCipher(CipherSpec.parse("aes-cbc-plain64", 128), key),
                               iv_from_host=False)


def aes_key(passphrase):
    """QEMU's legacy qcow2 key: the passphrase's first 16 bytes, zero-padded."""
    from ..crypto import SecretBuffer
    from ..crypto.keybuf import as_secret
    secret, owned = as_secret(passphrase)
    try:
        key = SecretBuffer(16)
        n = min(16, len(secret))
        if n:
            key.writable_view()[:n] = secret.writable_view()[:n]
        return key
    finally:
        if owned:
            secret.wipe()


def fde_region(path, writable=False, force_share=False):
    """(locked Storage, FDE Region) of a qcow2-luks image, found from the
    qcow2 header alone, so the region need not hold a valid LUKS header
    (header-restore).  Writable only when the image is neither marked
    corrupt nor dirty, as QEMU opens such images read-only."""
    st = Storage(path, writable=writable)
    try:
        lock_image(st, writable, force_share=force_share)
        header = read_header(st)
        if writable and header.incompatible_features & (INCOMPAT_CORRUPT | INCOMPAT_DIRTY):
            raise FormatError("image is marked %s; its keyslots are not changed until it is "
                              "repaired (qemu-img check -r all)" % (
                                  "corrupt" if header.incompatible_features & INCOMPAT_CORRUPT
                                  else "dirty"), field="incompatible_features", path=path)
        if header.crypt_method != CRYPT_LUKS:
            raise Error("%s is a qcow2 image without LUKS encryption: it has no LUKS header" % path)
        off, length = header.fde
        return st, Region(st, off, length)
    except BaseException:
        st.close()
        raise


def qcow2_luks_area(path, writable=False, force_share=False):
    """The LUKS HeaderArea inside a qcow2 image (for the keyslot verbs)."""
    from ..luks.area import HeaderArea
    st, region = fde_region(path, writable, force_share)
    try:
        return HeaderArea.load(region)
    except BaseException:
        st.close()
        raise


__all__ = ["open_qcow2", "is_qcow2", "qcow2_luks_area", "aes_key", "FormatError"]


def backing_path(path, name):
    """QEMU's full name of a backing file: *name* joined to the overlay's
    directory as given (not normalised), or *name* when absolute."""
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(path), name)
