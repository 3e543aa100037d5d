# SPDX-License-Identifier: LGPL-2.1-or-later
"""Writing LUKS2 headers through libcryptsetup: a new volume, an existing
file or block device formatted in place, a detached header for data that
already exists (the keep-ciphertext path from qcow2-luks).

What the new header looks like travels as one request (``Luks2Request``):
the cipher, the volume key to reuse (or None for a random one), the
encryption sector size (0: libcryptsetup picks, as cryptsetup luksFormat
does), the keyslot's key derivation (``Pbkdf``: argon2id by default, like
cryptsetup), the UUID and label.  Passphrases are bytes or SecretBuffers and
go to libcryptsetup straight from their wiped buffers.
"""

import os
from typing import Optional

from .._native import cryptsetup
from ..crypto import CipherSpec
from ..crypto.keybuf import as_secret
from ..errors import Error
from ..locks import lock_image
from ..storage import Publication, Storage
from ..units import round_up

KDFS = ("argon2id", "argon2i", "pbkdf2")
DEFAULT_KDF = "argon2id"
DEFAULT_ITER_TIME_MS = 2000
# cryptsetup's default LUKS2 header area: two 16 KiB metadata copies and
# the keyslots area, the data segment starting at 16 MiB.
DEFAULT_HEADER_BYTES = 16 << 20


class Pbkdf:
    """How a new LUKS2 keyslot derives its key: *kind* (argon2id, argon2i,
    pbkdf2), *hash* (pbkdf2's, and the AF hash), *iter_time_ms*, or
    *iterations* forced (pbkdf2 iterations; argon2's time cost), argon2's
    *memory_kb* and *threads*."""

    def __init__(self, kind=None, hash_name="sha256", iter_time_ms=None, iterations=None,
                 memory_kb=None, threads=None):
        kind = (kind or DEFAULT_KDF).lower()
        if kind not in KDFS:
            raise Error("unknown key derivation %r (argon2id, argon2i or pbkdf2)" % (kind,))
        for name, value in (("iteration time", iter_time_ms), ("iterations", iterations),
                            ("memory", memory_kb), ("threads", threads)):
            if value is not None and (not isinstance(value, int) or not 0 < value < 1 << 32):
                raise Error("PBKDF %s %r is out of range" % (name, value))
        if kind == "pbkdf2" and iterations is not None and iterations < 1000:
            raise Error("pbkdf2 needs at least 1000 iterations, not %d" % iterations)
        if kind != "pbkdf2" and iterations is not None and iterations < 4:
            raise Error("argon2 needs a time cost of at least 4, not %d" % iterations)
        self.kind, self.hash = kind, hash_name
        self.iter_time_ms, self.iterations = iter_time_ms, iterations
        self.memory_kb, self.threads = memory_kb, threads

    def _apply(self, ffi, lib, cd):
        """Set this as the PBKDF of keyslots *cd* makes from now on."""
        keep = [ffi.new("char[]", self.kind.encode()), ffi.new("char[]", self.hash.encode())]
        p = ffi.new("struct crypt_pbkdf_type *")
        p.type, p.hash = keep
        p.time_ms = self.iter_time_ms or DEFAULT_ITER_TIME_MS
        if self.kind != "pbkdf2":
            p.max_memory_kb = self.memory_kb or 1048576
            p.parallel_threads = self.threads or min(4, os.cpu_count() or 1)
        if self.iterations is not None:
            p.iterations = self.iterations
            p.flags = lib.CRYPT_PBKDF_NO_BENCHMARK
        rc = lib.crypt_set_pbkdf_type(cd, p)
        if rc < 0:
            raise Error("libcryptsetup refuses the key derivation settings (%s %s): %s"
                        % (self.kind, self.hash, os.strerror(-rc)))


class Luks2Request:
    """Everything a new LUKS2 header needs but the passphrase."""

    def __init__(self, spec="aes-xts-plain64", key_bits=None, sector_size=0, pbkdf=None,
                 uuid=None, label=None, master_key=None, keyslot=None):
        if not isinstance(spec, CipherSpec):
            spec = CipherSpec.parse(spec or "aes-xts-plain64", key_bits)
        self.spec = spec.check()
        if sector_size not in (0, 512, 1024, 2048, 4096):
            raise Error("LUKS2 sector size must be 512, 1024, 2048 or 4096, not %r" % (sector_size,))
        self.sector_size = sector_size
        self.pbkdf = pbkdf or Pbkdf()
        self.uuid, self.label, self.master_key, self.keyslot = uuid, label, master_key, keyslot


def _init(ffi, lib, device):
    cd = ffi.new("struct crypt_device **")
    rc = lib.crypt_init(cd, os.fsencode(device))
    if rc < 0:
        raise Error("libcryptsetup cannot open %s: %s" % (device, os.strerror(-rc)))
    lib.pyq_cs_quiet(cd[0])
    return cd[0]


def format_header(device, passphrase, request, data_device=None):
    """Write a new LUKS2 header onto *device* (a file or block device; with
    *data_device*, a detached header whose data segment starts at offset 0
    of *data_device*) and add *passphrase* in a keyslot.  Returns
    (data offset in bytes, sector size, keyslot)."""
    ffi, lib = cryptsetup()
    spec = request.spec
    cd = _init(ffi, lib, device)
    keep = []
    try:
        request.pbkdf._apply(ffi, lib, cd)
        params = ffi.new("struct crypt_params_luks2 *")
        params.sector_size = request.sector_size
        if data_device is not None:
            keep.append(ffi.new("char[]", os.fsencode(data_device)))
            params.data_device = keep[-1]
        if request.label:
            keep.append(ffi.new("char[]", request.label.encode()))
            params.label = keep[-1]
        vk = request.master_key
        vk_buf, vk_owned = as_secret(vk) if vk is not None else (None, False)
        try:
            if vk_buf is not None and len(vk_buf) != spec.key_bytes:
                raise Error("the volume key is %d bits, %s needs %d"
                            % (len(vk_buf) * 8, spec, spec.key_bits))
            rc = lib.crypt_format(
                cd, b"LUKS2", spec.luks_name.encode(), spec.luks_mode.encode(),
                request.uuid.encode() if request.uuid else ffi.NULL,
                ffi.cast("char *", vk_buf.cdata) if vk_buf is not None else ffi.NULL,
                spec.key_bytes, params)
            if rc < 0:
                raise Error("libcryptsetup cannot format %s as LUKS2 (%s-%s, %d-byte sectors): %s"
                            % (device, spec.luks_name, spec.luks_mode, request.sector_size,
                               os.strerror(-rc)))
            slot = add_keyslot(ffi, lib, cd, vk_buf, passphrase, request.keyslot, device)
        finally:
            if vk_owned:
                vk_buf.wipe()
        return lib.crypt_get_data_offset(cd) * 512, lib.crypt_get_sector_size(cd), slot
    finally:
        lib.crypt_free(cd)


def add_keyslot(ffi, lib, cd, volume_key, passphrase, keyslot, device):
    """A keyslot holding *volume_key* (None: the one crypt_format made)
    under *passphrase*; returns its number."""
    secret, owned = as_secret(passphrase)
    try:
        vk = ffi.cast("char *", volume_key.cdata) if volume_key is not None else ffi.NULL
        rc = lib.crypt_keyslot_add_by_volume_key(
            cd, lib.CRYPT_ANY_SLOT if keyslot is None else keyslot, vk,
            len(volume_key) if volume_key is not None else 0,
            ffi.cast("char *", secret.cdata), len(secret))
        if rc < 0:
            raise Error("libcryptsetup cannot add a keyslot to %s: %s" % (device, os.strerror(-rc)))
        return rc
    finally:
        if owned:
            secret.wipe()


def format_existing(device, passphrase, request, header=None):
    """cryptsetup luksFormat --type luks2: an existing file or block device
    (or, with *header*, a detached header file for it, created if missing)
    keeps its size; under QEMU's exclusive lock."""
    if not os.path.exists(device):
        raise Error("%s does not exist (format works on an existing file or device; use create "
                    "for a new one)" % device)
    target = header or device
    made = header is not None and not os.path.exists(header)
    if made:
        open(header, "xb").close()
    try:
        with Storage(device) as data, Storage(target) as st:
            lock_image(st, mode="exclusive")
            if header is not None:
                lock_image(data, mode="exclusive")
                if not st.is_block_device and st.size() < DEFAULT_HEADER_BYTES:
                    with Storage(target, writable=True) as grow:
                        grow.truncate(DEFAULT_HEADER_BYTES)     # libcryptsetup writes inside
            offset, sector, slot = format_header(target, passphrase, request,
                                                 data_device=device if header else None)
            if data.size() <= offset:
                raise Error("%s (%d bytes) is too small: the LUKS2 header area alone takes %d "
                            "bytes" % (device, data.size(), offset))
            return offset, sector, slot
    except BaseException:
        if made:
            os.unlink(header)
        raise


def create_luks2(path, size, passphrase, request, header=None):
    """A new LUKS2 volume whose payload holds *size* bytes (rounded up to
    the sector size), built under a temporary name and renamed into place
    only when complete.  With *header*, a new detached header file and a
    payload-only *path*."""
    if not isinstance(size, int) or size < 0:
        raise Error("size must be a non-negative number of bytes")
    unit = request.sector_size or 512
    payload = round_up(size, unit)
    with Publication() as files:
        data = files.new(path)
        if header is not None:
            hdr = files.new(header, first=True)             # in place before its payload
            data.storage.truncate(payload)
            hdr.storage.truncate(DEFAULT_HEADER_BYTES)
            format_header(hdr.tmp, passphrase, request, data_device=data.tmp)
        else:
            # Room for cryptsetup's default header area first (libcryptsetup
            # writes only inside the device), then the exact size.
            data.storage.truncate(DEFAULT_HEADER_BYTES + payload)
            offset, sector, _ = format_header(data.tmp, passphrase, request)
            data.storage.truncate(offset + round_up(size, sector))
        files.commit()


def pbkdf_from(kind: Optional[str], iter_time_ms=None, iterations=None, memory_kb=None,
               threads=None, hash_name=None):
    """A Pbkdf from CLI-style settings (None: the defaults)."""
    return Pbkdf(kind, hash_name or "sha256", iter_time_ms, iterations, memory_kb, threads)
