# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 6: conversion pipelines.

Keeping the ciphertext (no passphrase, no decryption):

* LUKS1 volume (attached header, or detached) -> qcow2-luks whose data lives
  in a raw external data file.  The LUKS header area is stored verbatim as
  the image's FDE clusters, so every keyslot and the UUID survive, and the
  payload becomes the data file (copied sparse-aware with copy_file_range,
  or adopted in place with ``data_file_existing``).  This works because with
  a raw data file the host offset equals the guest offset, which is the
  payload-relative sector raw LUKS uses for its IVs.
* qcow2-luks with a raw external data file -> LUKS1: one file (header area
  + payload), or a detached header whose payload is the data file itself.
* A LUKS2 source needs its passphrase: libcryptsetup hands over the volume
  key, and a LUKS1 header is written around the same key and cipher.

Re-encrypting: any readable image (raw, LUKS1, qcow2 plain/LUKS/AES) to
raw, LUKS1 or qcow2 (plain or LUKS), in constant memory, skipping holes and
zero runs so sparse sources stay sparse.

Nothing is left half-made: new files are built under temporary names, and
a failed conversion removes what it created.
"""

import os
import struct

from . import image as images
from .crypto import CipherSpec, SecretBuffer
from .crypto.keybuf import as_secret
from .errors import Error, FormatError, WrongPassphrase
from .luks.area import is_luks, open_area
from .luks.format import format_region, plan_layout
from .luks.header import SECTOR
from .luks.luks2 import luks2_device, luks_version
from .qcow2.header import CRYPT_LUKS
from .qcow2.open import create_qcow2, data_file_path, is_qcow2, read_header
from .storage import NewFile, Region, Storage

CHUNK = 4 << 20


class MemoryStorage:
    """A Storage-like byte buffer (for building a header region in memory)."""

    path = "<memory>"
    is_block_device = False

    def __init__(self, size):
        self.buf = bytearray(size)

    def size(self):
        return len(self.buf)

    def pread(self, offset, length, what="data"):
        return bytes(self.buf[offset:offset + length])

    def preadinto(self, buf, offset, what="data"):
        view = memoryview(buf).cast("B")
        view[:] = self.buf[offset:offset + len(view)]

    def pwrite(self, offset, data):
        data = memoryview(data).cast("B")
        self.buf[offset:offset + len(data)] = data

    def sync(self):
        pass


# ---------------------------------------------------------------- sparse copy

def _data_segments(fd, start, length):
    """(offset, end) runs holding data in [start, start+length), relative to
    start; the whole range when the file system cannot say."""
    try:
        pos = 0
        while pos < length:
            try:
                data = os.lseek(fd, start + pos, os.SEEK_DATA) - start
            except OSError:
                return                      # ENXIO: only a hole remains
            if data >= length:
                return
            hole = min(os.lseek(fd, start + data, os.SEEK_HOLE) - start, length)
            yield data, hole
            pos = hole
    except OSError:
        yield 0, length


def copy_sparse(src, src_start, length, dst, dst_start=0, progress=None):
    """Copy *length* bytes between Storages, holes left as holes; uses
    copy_file_range (shared extents where the file system can)."""
    try:
        segments = list(_data_segments(src.fd, src_start, length))
    except OSError:
        segments = [(0, length)]
    done = 0
    for a, b in segments:
        pos = a
        while pos < b:
            got = dst.copy_range_from(src, src_start + pos, dst_start + pos, min(b - pos, 1 << 30))
            if got <= 0:
                raise Error("%s ends before the payload does" % src.path)
            pos += got
            done += got
            if progress:
                progress(min(pos, length), length)
    if progress:
        progress(length, length)


# ---------------------------------------------------------------- keep-ciphertext

def _luks_source(src, src_header, passphrase):
    """(region bytes, payload storage, payload start, payload length, owned
    storages) for a LUKS1 or LUKS2 source."""
    if src_header is None and luks_version(src) == 2 or \
            src_header is not None and luks_version(src_header) == 2:
        return _luks2_source(src, src_header, passphrase)
    area = open_area(src, header=src_header)
    owned = [area.region.storage]
    hdr = area.header
    try:
        if src_header is None:
            # Attached: the whole area up to the payload, byte for byte.
            region = area.region.read(0, hdr.payload_offset * SECTOR, "LUKS header area")
            data = area.region.storage
            start = hdr.payload_offset * SECTOR
        else:
            # Detached: QEMU refuses payload offset 0 inside qcow2, so the
            # copy's payload offset names the end of its own key material;
            # every keyslot, the UUID and the digest are unchanged.
            region = bytearray(area.region.read(0, hdr.key_material_end(), "LUKS header area"))
            struct.pack_into(">I", region, 104, len(region) // SECTOR)
            data = Storage(src)
            owned.append(data)
            start = hdr.payload_offset * SECTOR
        length = data.size() - start
        if length <= 0:
            raise FormatError("%s has no payload after its header" % src, path=src)
        return bytes(region), data, start, length - length % SECTOR, owned
    except BaseException:
        for s in owned:
            s.close()
        raise


def _luks2_source(src, src_header, passphrase):
    """Unlock a LUKS2 volume with libcryptsetup and wrap its volume key in a
    new LUKS1 header (QEMU layout), keeping the data segment untouched."""
    if passphrase is None:
        raise Error("%s is LUKS2: moving it to LUKS1/qcow2 without re-encrypting needs its "
                    "passphrase (to wrap the same volume key in a LUKS1 keyslot)" % src)
    with luks2_device(src, src_header) as (ffi, lib, cd):
        cipher = ffi.string(lib.crypt_get_cipher(cd)).decode()
        mode = ffi.string(lib.crypt_get_cipher_mode(cd)).decode()
        key_size = lib.crypt_get_volume_key_size(cd)
        sector = lib.crypt_get_sector_size(cd)
        if sector != SECTOR:
            raise Error("%s uses %d-byte encryption sectors; LUKS1 and QEMU know only 512" % (src, sector))
        if "aead" in mode or "authenc" in cipher or "integrity" in mode:
            raise Error("%s uses authenticated encryption (dm-integrity), which LUKS1 cannot express"
                        % src)
        try:
            spec = CipherSpec.from_luks(cipher, mode, key_size).check()
        except Error as exc:
            raise Error("%s: its cipher %s-%s cannot be written as LUKS1 here (%s)"
                        % (src, cipher, mode, exc)) from None
        secret, owned = as_secret(passphrase)
        vk = SecretBuffer(key_size)
        size = ffi.new("size_t *", key_size)
        try:
            rc = lib.crypt_volume_key_get(cd, lib.CRYPT_ANY_SLOT, ffi.cast("char *", vk.cdata),
                                          size, ffi.cast("char *", secret.cdata), len(secret))
            if rc < 0:
                vk.wipe()
                raise WrongPassphrase()
            layout = plan_layout(spec.key_bytes, style="qemu")
            mem = MemoryStorage(layout.area_bytes)
            hdr, mk = format_region(Region(mem, 0, layout.area_bytes), spec, secret, "sha256",
                                    layout, "qemu", master_key=vk)
            mk.wipe()
        finally:
            vk.wipe()
            if owned:
                secret.wipe()
        start = lib.crypt_get_data_offset(cd) * SECTOR
    data = Storage(src)
    length = data.size() - start
    return bytes(mem.buf), data, start, length - length % SECTOR, [data]


def luks_to_qcow2(src, dst, src_header=None, data_file=None, data_file_existing=False,
                  passphrase=None, cluster_size=65536, progress=None):
    """Keep-ciphertext: LUKS volume -> qcow2-luks with a raw data file."""
    region, data, start, length, owned = _luks_source(src, src_header, passphrase)
    made = []
    try:
        if data_file_existing:
            if not data_file:
                raise Error("data_file_existing needs data_file=PATH (the payload itself)")
            if start and os.path.realpath(data_file) == os.path.realpath(src):
                raise Error("%s holds the header before its payload; it cannot be the data file "
                            "itself (give the payload device, e.g. a partition or a loop device "
                            "with an offset)" % src)
            dpath = os.path.abspath(data_file)
            if progress:
                progress(length, length)
        else:
            dpath = os.path.abspath(data_file or dst + ".data")
            new = NewFile(dpath)
            try:
                copy_sparse(data, start, length, new.storage, 0, progress)
                new.storage.truncate(length)
                new.commit()
            except BaseException:
                new.abort()
                raise
            made.append(dpath)
        create_qcow2(dst, length, cluster_size=cluster_size, encrypt_format="luks",
                     fde_region=region, data_file=dpath, data_file_raw=True, data_file_existing=True)
    except BaseException:
        for p in made:
            os.unlink(p)
        raise
    finally:
        for s in owned:
            s.close()


def qcow2_to_luks(src, dst, detached_header=False, progress=None):
    """Keep-ciphertext: qcow2-luks with a raw data file -> LUKS1.  With
    *detached_header*, *dst* receives only the header, and the data file
    itself is the payload."""
    with Storage(src) as st:
        h = read_header(st)
        if h.crypt_method != CRYPT_LUKS:
            raise Error("%s is not encrypted with LUKS" % src)
        if not (h.has_data_file and h.data_file_raw):
            raise Error("%s keeps its encrypted data inside the qcow2 file, where QEMU derives IVs "
                        "from host offsets that no LUKS volume can reproduce; its ciphertext cannot "
                        "be reused. Convert with the passphrase instead (re-encrypting: pyqcrypt "
                        "convert --object secret,... without --keep-ciphertext)" % src)
        off, flen = h.fde
        region = bytearray(st.pread(off, flen, "FDE region"))
        size = h.size
        dpath = data_file_path(src, h)
    payload = struct.unpack_from(">I", region, 104)[0]
    out = NewFile(dst)
    try:
        if detached_header:
            struct.pack_into(">I", region, 104, 0)        # the whole data file is payload
            out.storage.pwrite(0, region)
            if progress:
                progress(size, size)
        else:
            if payload * SECTOR < len(region):
                payload = len(region) // SECTOR
                struct.pack_into(">I", region, 104, payload)
            out.storage.truncate(payload * SECTOR)
            out.storage.pwrite(0, region)
            with Storage(dpath) as data:
                copy_sparse(data, 0, min(size, data.size()), out.storage, payload * SECTOR, progress)
            out.storage.truncate(payload * SECTOR + size)
        out.commit()
    except BaseException:
        out.abort()
        raise
    return dpath


# ---------------------------------------------------------------- re-encrypting

def _allocated(img, offset, length):
    """False only when [offset, offset+length) is known to be a hole."""
    check = getattr(img, "is_allocated", None)
    return True if check is None else check(offset, length)


ZERO_GRAIN = 64 << 10


def _read(img, offset, view):
    """Read into *view* (reused between chunks) when the image can."""
    readinto = getattr(img, "readinto", None)
    if readinto is not None:
        readinto(offset, view)
        return view
    return memoryview(img.read(offset, len(view)))


def _chunks(src_img, size, sparse, out_q, free_q, stop):
    """Reader stage: fill free buffers with source chunks (reading and
    decrypting release the GIL, so this overlaps the writer)."""
    try:
        pos = 0
        while pos < size and not stop.is_set():
            n = min(CHUNK, size - pos)
            if sparse and not _allocated(src_img, pos, n):
                out_q.put((pos, n, None))
            else:
                buf = free_q.get()
                view = _read(src_img, pos, memoryview(buf)[:n])
                out_q.put((pos, n, (buf, view)))
            pos += n
        out_q.put(None)
    except BaseException as exc:            # hand the error to the writer
        out_q.put(exc)


def copy_image(src_img, dst_img, progress=None, sparse=True, buffers=3):
    """Copy every byte of *src_img* into *dst_img* in CHUNK pieces, a reader
    thread running one chunk ahead of the writer, in constant memory
    (*buffers* x CHUNK).  When *sparse*, holes are skipped and all-zero
    64 KiB grains are not written, so they stay unallocated."""
    import queue
    import threading
    size = src_img.size
    zero = bytes(ZERO_GRAIN)
    out_q, free_q, stop = queue.Queue(), queue.Queue(), threading.Event()
    for _ in range(buffers):
        free_q.put(bytearray(CHUNK))
    reader = threading.Thread(target=_chunks, args=(src_img, size, sparse, out_q, free_q, stop),
                              daemon=True)
    reader.start()
    try:
        while True:
            item = out_q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            pos, n, payload = item
            if payload is not None:
                buf, data = payload
                if not sparse:
                    dst_img.write(pos, data)
                else:
                    run_start = None
                    for g in range(0, n + ZERO_GRAIN, ZERO_GRAIN):
                        is_zero = g >= n or data[g:g + ZERO_GRAIN] == zero[:min(ZERO_GRAIN, n - g)]
                        if not is_zero and run_start is None:
                            run_start = g
                        elif is_zero and run_start is not None:
                            dst_img.write(pos + run_start, data[run_start:min(g, n)])
                            run_start = None
                free_q.put(buf)
            if progress:
                progress(pos + n, size)
    finally:
        stop.set()
        free_q.put(bytearray(0))            # unblock a reader waiting for a buffer
        reader.join()
    if progress and size == 0:
        progress(0, 0)


def convert(src, dst, *, dst_format="qcow2", keep_ciphertext=False, src_passphrase=None,
            src_header=None, src_format=None, dst_passphrase=None, dst_header=None,
            data_file=None, data_file_existing=False, cluster_size=65536, spec=None,
            iter_time_ms=None, iterations=None, qcow2_options=None, progress=None, key_slot=None,
            allow_insecure=False):
    """Convert *src* into the new image *dst*; see the module docstring."""
    if os.path.exists(dst) and not (keep_ciphertext and dst_format == "luks" and dst_header):
        raise Error("%s already exists" % dst)
    if keep_ciphertext:
        if dst_format == "qcow2" and (src_header is not None or is_luks(src)):
            return luks_to_qcow2(src, dst, src_header, data_file, data_file_existing,
                                 src_passphrase, cluster_size, progress)
        if dst_format == "luks" and is_qcow2(src):
            return qcow2_to_luks(src, dst_header or dst, detached_header=dst_header is not None,
                                 progress=progress)
        raise Error("--keep-ciphertext converts a LUKS volume to qcow2 (-O qcow2) or a qcow2-luks "
                    "image with a raw data file to LUKS (-O luks)")
    src_img = images.open(src, passphrase=src_passphrase, header=src_header, format=src_format,
                          key_slot=key_slot)
    made = []
    try:
        size = src_img.size
        if dst_format == "qcow2":
            opts = dict(qcow2_options or {})
            if dst_passphrase is not None:
                opts.setdefault("encrypt_format", "luks")
            create_qcow2(dst, size, cluster_size=cluster_size, passphrase=dst_passphrase, spec=spec,
                         iter_time_ms=iter_time_ms, iterations=iterations,
                         allow_insecure=allow_insecure, **opts)
            made.append(dst)
            if opts.get("data_file") and not opts.get("data_file_existing"):
                made.append(opts["data_file"])
            sparse = True
        elif dst_format == "luks":
            if dst_passphrase is None:
                raise Error("a LUKS destination needs a passphrase")
            images.create(dst, size, "luks", passphrase=dst_passphrase, spec=spec or "aes-xts-plain64",
                          iter_time_ms=iter_time_ms, iterations=iterations, header=dst_header,
                          allow_insecure=allow_insecure)
            made.append(dst)
            if dst_header:
                made.append(dst_header)
            sparse = False              # unwritten LUKS sectors would decrypt to noise
        elif dst_format == "raw":
            new = NewFile(dst)
            new.storage.truncate(size)
            new.commit()
            made.append(dst)
            sparse = True
        else:
            raise Error("unknown output format %r (qcow2, luks, raw)" % (dst_format,))
        with images.open(dst, passphrase=dst_passphrase, writable=True, header=dst_header,
                         format=dst_format) as dst_img:
            copy_image(src_img, dst_img, progress, sparse)
    except BaseException:
        for p in made:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        raise
    finally:
        src_img.close()
