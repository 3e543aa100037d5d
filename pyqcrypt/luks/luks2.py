# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 volumes through libcryptsetup: load a header (attached, or
detached with *header*), unlock a keyslot into a wiped buffer, and open
the data segment as a block device with pyqcrypt's own sector loop.

libcryptsetup owns the keyslots (argon2i, argon2id, pbkdf2) and checks
the header; pyqcrypt reads the segment itself (``luks2_meta``) and cross-
checks what it read against what libcryptsetup reports, so a header that
changes between the two reads is refused, never half-trusted.
"""

import contextlib
import os

from .._native import cryptsetup
from ..crypto import CipherSpec, SecretBuffer
from ..crypto.keybuf import as_secret
from ..errors import Error, FormatError, WrongPassphrase
from ..locks import lock_image
from ..storage import Storage
from .magic import luks_version  # noqa: F401  (re-exported: callers import it from here)
from .luks2_meta import area_size, copies_in_sync, read_metadata, segment_length

# libcryptsetup's CRYPT_REQUIREMENT_* bits (libcryptsetup.h): named so the
# refusal says what is set.
_REQUIREMENT_NAMES = {1: "offline re-encryption", 2: "online re-encryption", 4: "OPAL"}


# A header area bigger than this is not snapshotted (cryptsetup's default
# is 16 MiB; its largest keyslots area is 128 MiB).
MAX_SNAPSHOT = 256 << 20


@contextlib.contextmanager
def luks2_device(path, header=None, quiet=True, writable=False):
    """Yield (ffi, lib, crypt_device) for a loaded LUKS2 volume.  *quiet*
    keeps libcryptsetup's own messages off stderr.

    Unless *writable*, the file holding the header is never written:
    libcryptsetup's load repairs a damaged or stale header copy in place
    whenever it can open the file for writing, so when the two copies do
    not agree it is handed a copy of the header area (in memory) instead,
    and the volume as the data device."""
    ffi, lib = cryptsetup()
    snapshot = None if writable else _header_snapshot(header or path)
    cd = ffi.new("struct crypt_device **")
    try:
        if snapshot is not None:
            rc = lib.crypt_init_data_device(cd, os.fsencode("/proc/self/fd/%d" % snapshot),
                                            os.fsencode(path))
        elif header:
            rc = lib.crypt_init_data_device(cd, os.fsencode(header), os.fsencode(path))
        else:
            rc = lib.crypt_init(cd, os.fsencode(path))
        if rc < 0:
            raise Error("libcryptsetup cannot open %s (%s)" % (header or path, os.strerror(-rc)))
        if quiet:
            lib.pyq_cs_quiet(cd[0])
        try:
            if lib.crypt_load(cd[0], b"LUKS2", ffi.NULL) < 0:
                raise FormatError("libcryptsetup cannot load the LUKS2 header", path=header or path)
            yield ffi, lib, cd[0]
        finally:
            lib.crypt_free(cd[0])
    finally:
        if snapshot is not None:
            os.close(snapshot)


def _header_snapshot(hpath):
    """None when the header copies of *hpath* agree (libcryptsetup will not
    write); else a memfd holding a copy of the header area."""
    with Storage(hpath) as st:
        size = st.size()

        def read(off, n):
            return st.pread(off, min(n, size - off), "LUKS2 header") if off < size else b""
        if copies_in_sync(read, hpath):
            return None
        try:
            want = area_size(read_metadata(read, hpath))
        except FormatError:
            want = 16 << 20             # neither copy valid: libcryptsetup will refuse it
        want = min(size, want, MAX_SNAPSHOT)
        fd = os.memfd_create("pyqcrypt-luks2-header", os.MFD_CLOEXEC)
        try:
            pos = 0
            while pos < want:
                chunk = st.pread(pos, min(4 << 20, want - pos), "LUKS2 header")
                os.pwrite(fd, chunk, pos)
                pos += len(chunk)
        except BaseException:
            os.close(fd)
            raise
        return fd


def dump(path, header=None):
    """Print cryptsetup's LUKS2 dump (libcryptsetup writes it to stdout)."""
    import sys
    with luks2_device(header or path, quiet=False) as (ffi, lib, cd):     # the header alone,
        sys.stdout.flush()                                              # as cryptsetup reads it
        if lib.crypt_dump(cd) < 0:
            raise Error("libcryptsetup could not dump %s" % (header or path))


def dump_json_text(path, header=None):
    """The LUKS2 JSON metadata as ``cryptsetup luksDump --dump-json-metadata``
    prints it (libcryptsetup's own serialisation, byte for byte); with
    *header*, from the detached header alone, as cryptsetup reads it."""
    with luks2_device(header or path) as (ffi, lib, cd):
        out = ffi.new("const char **")
        rc = lib.crypt_dump_json(cd, out, 0)
        if rc < 0 or out[0] == ffi.NULL:
            raise Error("libcryptsetup could not dump the JSON metadata of %s" % (header or path))
        return ffi.string(out[0]).decode("utf-8", "replace")


def dump_fields(path, header=None):
    """``pyqcrypt dump --output json`` for a LUKS2 header: the binary
    header's fields luksDump prints (UUID, label, subsystem, epoch, area
    sizes) and, under "metadata", the JSON metadata as libcryptsetup dumps
    it (keyslots, tokens, segments, digests, config: nothing secret)."""
    import json
    text = dump_json_text(path, header)
    with Storage(header or path) as st:
        meta = read_header_metadata(st)
    return {"version": 2, "uuid": meta.uuid, "label": meta.label, "subsystem": meta.subsystem,
            "epoch": meta.seqid, "metadata_area": meta.hdr_size,
            "keyslots_area": meta.keyslots_size, "metadata": json.loads(text)}


def _text(ffi, ptr):
    return ffi.string(ptr).decode("utf-8", "replace") if ptr != ffi.NULL else ""


def checked_segment(meta, ffi, lib, cd):
    """The data segment of *meta*, refused as ``data_segment`` refuses and
    cross-checked against libcryptsetup: its requirement flags, its
    integrity info, and the cipher, offset, sector size and UUID it
    reports must agree with the JSON pyqcrypt read (its crypt_get_iv_offset
    is 0 for every LUKS2 volume, so the IV tweak is pyqcrypt's reading
    alone)."""
    path = meta.path
    flags = ffi.new("uint32_t *")
    if lib.crypt_persistent_flags_get(cd, lib.CRYPT_FLAGS_REQUIREMENTS, flags) < 0:
        raise Error("%s: libcryptsetup cannot read the volume's requirement flags" % path)
    seg = meta.data_segment()
    if flags[0]:
        names = [n for bit, n in sorted(_REQUIREMENT_NAMES.items()) if flags[0] & bit]
        raise Error("%s has LUKS2 requirements pyqcrypt does not implement (%s); finish or "
                    "undo them with cryptsetup first" % (path, ", ".join(names) or hex(flags[0])))
    ip = ffi.new("struct crypt_params_integrity *")
    if lib.crypt_get_integrity_info(cd, ip) == 0 and ip.integrity != ffi.NULL:
        raise Error("%s uses authenticated encryption (%s): pyqcrypt cannot check or write "
                    "its integrity tags" % (path, _text(ffi, ip.integrity)))
    cipher = "%s-%s" % (_text(ffi, lib.crypt_get_cipher(cd)), _text(ffi, lib.crypt_get_cipher_mode(cd)))
    seen = {"cipher": (cipher, seg.encryption),
            "data offset": (lib.crypt_get_data_offset(cd) * 512, seg.offset),
            "sector size": (lib.crypt_get_sector_size(cd), seg.sector_size),
            "UUID": (_text(ffi, lib.crypt_get_uuid(cd)), meta.uuid)}
    for what, (theirs, ours) in seen.items():
        if theirs != ours:
            raise Error("%s: libcryptsetup reports %s %r where the header pyqcrypt read says %r "
                        "(did it change while being read?)" % (path, what, theirs, ours))
    return seg


def segment_spec(seg, key_bytes, path):
    """The CipherSpec of a segment's ``encryption`` string."""
    name, _, mode = seg.encryption.partition("-")
    try:
        return CipherSpec.from_luks(name, mode, key_bytes).check()
    except Error as exc:
        raise Error("%s: its data segment's cipher %s cannot be used here (%s)"
                    % (path, seg.encryption, exc)) from None


def get_volume_key(ffi, lib, cd, passphrase, key_slot, path):
    """(volume key as a SecretBuffer, keyslot number) that *passphrase*
    opens, verified against the data segment's digest (an unbound keyslot's
    key would not be the data's key)."""
    if key_slot is not None and not 0 <= key_slot < lib.crypt_keyslot_max(b"LUKS2"):
        raise Error("keyslot %r is out of range" % (key_slot,))
    size = lib.crypt_get_volume_key_size(cd)
    if not 0 < size <= 512:
        raise FormatError("volume key size %d is out of range" % size, path=path)
    secret, owned = as_secret(passphrase)
    vk = SecretBuffer(size)
    try:
        out = ffi.new("size_t *", size)
        slot = lib.CRYPT_ANY_SLOT if key_slot is None else key_slot
        rc = lib.crypt_volume_key_get(cd, slot, ffi.cast("char *", vk.cdata), out,
                                      ffi.cast("char *", secret.cdata), len(secret))
        if rc < 0:
            if rc == -12:
                raise Error("%s: not enough memory to derive the keyslot's key (argon2)" % path)
            raise WrongPassphrase()
        if out[0] != size or lib.crypt_volume_key_verify(cd, ffi.cast("char *", vk.cdata), size) < 0:
            raise Error("%s: keyslot %d opens with this passphrase but holds a key that does not "
                        "decrypt the data segment (an unbound keyslot)" % (path, rc))
        return vk, rc
    except BaseException:
        vk.wipe()
        raise
    finally:
        if owned:
            secret.wipe()


def read_header_metadata(storage):
    """The Luks2Metadata of the header in *storage* (a volume or a detached
    header file)."""
    return read_metadata(lambda off, n: storage.pread(off, n, "LUKS2 header")
                         if off < storage.size() else b"", storage.path)


class Unlocked:
    """What unlocking a LUKS2 volume yields: its metadata, the checked data
    segment, cipher spec, volume key (wiped by ``wipe()``) and keyslot."""

    def __init__(self, meta, seg, spec, key, slot):
        self.meta, self.segment, self.spec, self.key, self.slot = meta, seg, spec, key, slot

    def wipe(self):
        self.key.wipe()


def unlock_luks2(data, header_st, passphrase, key_slot=None):
    """Unlock the LUKS2 volume whose header is in Storage *header_st* (the
    volume itself, or its detached header) and whose data is Storage
    *data*."""
    meta = read_header_metadata(header_st)
    detached = header_st is not data
    with luks2_device(data.path, header_st.path if detached else None) as (ffi, lib, cd):
        seg = checked_segment(meta, ffi, lib, cd)
        spec = segment_spec(seg, lib.crypt_get_volume_key_size(cd), meta.path)
        key, slot = get_volume_key(ffi, lib, cd, passphrase, key_slot, meta.path)
    return Unlocked(meta, seg, spec, key, slot)


def open_luks2(path, passphrase, header=None, writable=False, key_slot=None, force_share=False):
    """Unlock a LUKS2 volume and return its data segment as a LuksPayload,
    with QEMU's locks on the volume ("payload" when *writable*, else
    "read") and a read lock on a detached header."""
    from .volume import Geometry, LuksPayload
    data = Storage(path, writable=writable)
    owned = [data]
    try:
        lock_image(data, mode="payload" if writable else "read", force_share=force_share)
        hst = data
        if header is not None:
            hst = Storage(header)
            owned.append(hst)
            lock_image(hst, mode="read", force_share=force_share)
        unlocked = unlock_luks2(data, hst, passphrase, key_slot)
        try:
            seg = unlocked.segment
            length = segment_length(seg, data.size(), path)
            geometry = Geometry(seg.offset, length, seg.sector_size, seg.iv_tweak)
            payload = LuksPayload(data, unlocked.spec, unlocked.key, geometry, writable, owned,
                                  "LUKS2")
            payload.luks2 = unlocked.meta
            payload.keyslot = unlocked.slot
            return payload
        finally:
            unlocked.wipe()
    except BaseException:
        for st in owned:
            st.close()
        raise
