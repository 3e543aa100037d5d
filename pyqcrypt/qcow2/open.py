# SPDX-License-Identifier: LGPL-2.1-or-later
"""Opening and creating qcow2 images, encrypted or not.

LUKS (crypt_method 2): the FDE header extension names a cluster-aligned
region holding a LUKS1 header and key material in QEMU's layout; it is
unlocked and re-keyed through the same ``HeaderArea`` code as raw volumes.
Legacy AES (crypt_method 1): the passphrase, truncated or zero-padded to 16
bytes, is an AES-128 key; CBC with plain64 IVs from the guest sector.

``create_qcow2`` lays the image out as qemu-img does (header, refcount
table, refcount blocks, L1 table, then the FDE clusters), building it under
a temporary name and renaming it into place only when complete.
"""

import os
import struct

from .._native import qcow2 as qcow2_native
from ..crypto import CipherSpec, SecretBuffer, SectorCipher, policy
from ..crypto.keybuf import as_secret
from ..errors import Error, FormatError
from ..luks.area import HeaderArea
from ..luks.format import format_region, plan_layout
from ..luks.keyslots import unlock
from ..storage import NewFile, Region, Storage
from .header import (AUTOCLEAR_DATA_FILE_RAW, CRYPT_AES, CRYPT_LUKS, CRYPT_NONE,
                     EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FDE, INCOMPAT_CORRUPT,
                     INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTL2, MAX_CLUSTER_BITS,
                     MAX_L1_BYTES, MIN_CLUSTER_BITS, MIN_EXTL2_CLUSTER_BITS, Qcow2Header)
from .image import MAX_HEADER_READ, Qcow2Image, SectorCrypt
from .locks import lock_image

QCOW2_MAGIC = b"QFI\xfb"


def is_qcow2(path):
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == QCOW2_MAGIC
    except OSError:
        return False


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
    if header.crypt_method != CRYPT_LUKS:
        raise Error("%s is not encrypted with LUKS" % storage.path)
    off, length = header.fde
    return HeaderArea.load(Region(storage, off, length))


def open_qcow2(path, passphrase=None, writable=False, key_slot=None, force_share=False):
    """Open a qcow2 image (unlocking it when encrypted) as a Qcow2Image."""
    st = Storage(path, writable=writable)
    owned = [st]
    img = None
    try:
        locks = [lock_image(st, writable, force_share)]
        header = read_header(st)
        data = None
        if header.has_data_file:
            data = Storage(data_file_path(path, header), writable=writable)
            owned.append(data)
            locks.append(lock_image(data, writable, force_share))
        img = Qcow2Image(st, writable, data, owned=owned)
        img._locks = locks
        if header.crypt_method != CRYPT_NONE:
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
    if header.crypt_method == CRYPT_LUKS:
        area = fde_area(storage, header)
        _, mk = unlock(area, passphrase, key_slot)
        with mk:
            return SectorCrypt(SectorCipher(area.header.spec, mk), iv_from_host=True)
    with aes_key(passphrase) as key:
        return SectorCrypt(SectorCipher(CipherSpec.parse("aes-cbc-plain64", 128), key),
                           iv_from_host=False)


def aes_key(passphrase):
    """QEMU's legacy qcow2 key: the passphrase's first 16 bytes, zero-padded."""
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


def _ceil(a, b):
    return -(-a // b)


def create_qcow2(path, size, cluster_size=65536, refcount_bits=16, compat="1.1",
                 encrypt_format=None, passphrase=None, spec=None, hash_name="sha256",
                 iter_time_ms=None, iterations=None, data_file=None, data_file_raw=False,
                 uuid=None, allow_insecure=False, fde_region=None, data_file_existing=False,
                 backing_file=None, backing_format=None, extended_l2=False):
    """Create a new qcow2 image; returns its Qcow2Header.

    *fde_region* (bytes): a complete LUKS1 header area to store verbatim as
    the FDE clusters instead of formatting a new one (keep-ciphertext
    conversion).  *data_file_existing*: the data file already holds the
    payload; it is adopted, not created.  *backing_file* (stored as given:
    a relative name is found from the image's directory) and
    *backing_format* make an overlay.  *extended_l2*: 128-bit L2 entries
    with 32 subclusters per cluster (clusters of 16 KiB or more, compat=1.1),
    as qemu-img's ``extended_l2=on``."""
    if not isinstance(size, int) or size < 0:
        raise Error("size must be a non-negative number of bytes")
    if cluster_size & (cluster_size - 1) or not 1 << MIN_CLUSTER_BITS <= cluster_size <= 1 << MAX_CLUSTER_BITS:
        raise Error("cluster size must be a power of two between 512 and 2M, not %r" % cluster_size)
    if refcount_bits not in (1, 2, 4, 8, 16, 32, 64):
        raise Error("refcount_bits must be a power of two from 1 to 64, not %r" % refcount_bits)
    if compat not in ("0.10", "1.1", "v2", "v3"):
        raise Error("compat must be 0.10 or 1.1, not %r" % compat)
    version = 2 if compat in ("0.10", "v2") else 3
    if version == 2 and refcount_bits != 16:
        raise Error("compat=0.10 supports only refcount_bits=16")
    if version == 2 and data_file:
        raise Error("external data files need compat=1.1")
    if data_file_raw and not data_file:
        raise Error("data_file_raw requires data_file")
    if backing_file is not None:
        if data_file_raw:
            raise Error("a backing file and data_file_raw cannot be used at the same time")
        if not backing_format:
            raise Error("a backing file needs its format (-F / backing_fmt), as qemu-img requires")
        if len(backing_file.encode()) > 1023 or "\0" in backing_file or not backing_file:
            raise Error("backing file name must be 1 to 1023 bytes without NUL")
        if extended_l2:
            raise Error("extended L2 entries together with a backing file are not supported "
                        "yet (subcluster reads from the backing); create without extended_l2")
    if extended_l2:
        if version == 2:
            raise Error("extended L2 entries are only supported with compatibility level 1.1 "
                        "and above")
        if cluster_size < 1 << MIN_EXTL2_CLUSTER_BITS:
            raise Error("extended L2 entries are only supported with cluster sizes of at least "
                        "%d bytes" % (1 << MIN_EXTL2_CLUSTER_BITS))
        if data_file_raw:
            raise Error("extended L2 entries with data_file_raw are not supported")
    crypt = {None: CRYPT_NONE, "luks": CRYPT_LUKS, "aes": CRYPT_AES}.get(encrypt_format)
    if crypt is None:
        raise Error("encrypt.format must be luks or aes, not %r" % (encrypt_format,))
    if crypt != CRYPT_NONE and passphrase is None and fde_region is None:
        raise Error("an encrypted image needs a secret (encrypt.key-secret)")
    if crypt == CRYPT_LUKS and version == 2:
        raise Error("LUKS encryption needs compat=1.1")
    if crypt == CRYPT_AES and not allow_insecure:
        raise Error("legacy qcow2 AES encryption is insecure (guest-sector IVs allow "
                    "watermarking, no key stretching); it needs the explicit opt-in "
                    "--allow-insecure, and LUKS is recommended instead")
    cbits = cluster_size.bit_length() - 1
    cs = cluster_size
    l2_entries = cs // (16 if extended_l2 else 8)
    size = _ceil(size, 512) * 512               # qemu-img rounds up to whole sectors
    l1_size = _ceil(size, cs * l2_entries)
    if l1_size * 8 > MAX_L1_BYTES:
        raise Error("the image size is too large for file format 'qcow2' (at most %d bytes with "
                    "%d-byte clusters; try a larger cluster size)"
                    % (MAX_L1_BYTES // 8 * l2_entries * cs, cs))
    l1_clusters = max(1, _ceil(l1_size * 8, cs))
    if fde_region is not None:
        if crypt != CRYPT_LUKS:
            raise Error("an FDE region needs encrypt_format=luks")
        luks_layout, fde_len = None, len(fde_region)
        fde_clusters = _ceil(fde_len, cs)
    elif crypt == CRYPT_LUKS:
        spec = spec if isinstance(spec, CipherSpec) else CipherSpec.parse(spec or "aes-xts-plain64")
        spec.check()
        policy.enforce(spec, size, allow_insecure)
        luks_layout = plan_layout(spec.key_bytes, style="qemu")
        fde_len = luks_layout.area_bytes
        fde_clusters = _ceil(fde_len, cs)
    else:
        luks_layout, fde_len, fde_clusters = None, 0, 0
    # A raw external data file is mapped whole at creation, as QEMU does:
    # guest cluster n lives at offset n of the data file.
    l2_tables = l1_size if data_file_raw else 0
    per_block = cs * 8 // refcount_bits
    rt_blocks, rt_clusters = 1, 1
    while True:
        total = 1 + rt_clusters + rt_blocks + l1_clusters + l2_tables + fde_clusters
        b = _ceil(total, per_block)
        r = _ceil(b, cs // 8)
        if (b, r) == (rt_blocks, rt_clusters):
            break
        rt_blocks, rt_clusters = b, r
    rt_off = cs
    rb_off = rt_off + rt_clusters * cs
    l1_off = rb_off + rt_blocks * cs
    l2_off = l1_off + l1_clusters * cs
    fde_off = l2_off + l2_tables * cs
    header = Qcow2Header(version, cbits, size, crypt, l1_size, l1_off, rt_off, rt_clusters,
                         refcount_order=refcount_bits.bit_length() - 1,
                         header_length=112 if version == 3 else 72)
    if backing_file is not None:
        header.backing_file = backing_file
        header.set_extension(EXT_BACKING_FORMAT, backing_format.encode("ascii"))
    if extended_l2:
        header.incompatible_features |= INCOMPAT_EXTL2
    if data_file:
        header.incompatible_features |= INCOMPAT_DATA_FILE
        header.set_extension(EXT_DATA_FILE, os.fsencode(data_file))
        if data_file_raw:
            header.autoclear_features |= AUTOCLEAR_DATA_FILE_RAW
    if crypt == CRYPT_LUKS:
        header.set_extension(EXT_FDE, struct.pack(">QQ", fde_off, fde_len))
    files = []
    try:
        img = NewFile(path)
        files.append(img)
        st = img.storage
        # qemu-img ends a plain image right after its L1 entries.
        st.truncate(total * cs if (l2_tables or fde_clusters) else l1_off + max(8, l1_size * 8))
        st.pwrite(rt_off, struct.pack(">%dQ" % rt_blocks, *(rb_off + i * cs for i in range(rt_blocks))))
        blocks = bytearray(rt_blocks * cs)
        for c in range(total):
            _set_refcount(blocks, c, 1, refcount_bits)
        st.pwrite(rb_off, blocks)
        if l2_tables:
            _map_raw_data_file(st, size, cs, l1_off, l2_off, l2_tables)
        if data_file:
            dpath = data_file if os.path.isabs(data_file) else os.path.join(
                os.path.dirname(os.path.abspath(path)), data_file)
            if data_file_existing:
                with Storage(dpath) as existing:
                    if data_file_raw and existing.size() < size:
                        raise Error("data file %s (%d bytes) is smaller than the %d-byte image"
                                    % (dpath, existing.size(), size))
            else:
                df = NewFile(dpath)
                files.append(df)
                df.storage.truncate(size if data_file_raw else 0)
        if fde_region is not None:
            st.pwrite(fde_off, fde_region)
        elif crypt == CRYPT_LUKS:
            hdr, mk = format_region(Region(st, fde_off, fde_len), spec, passphrase, hash_name,
                                    luks_layout, "qemu", iter_time_ms, iterations, uuid)
            mk.wipe()
        st.pwrite(0, header.pack())
        for f in reversed(files):
            f.commit()
        return header
    except BaseException:
        for f in files:
            f.abort()
        raise


def _fill_identity(lib, buf, n, first, step):
    """n L1/L2 entries (first + i*step) | COPIED into the cffi buffer *buf*;
    the C side checks that they fit in it and that the offsets stay below
    qcow2's 2^56 limit."""
    if lib.pyq_fill_identity_l2(buf, len(buf), n, first, step) != 0:
        raise Error("cannot map %d clusters from offset %d: the entries do not fit "
                    "their buffer or pass qcow2's 2^56-byte offset limit" % (n, first))


def _map_raw_data_file(st, size, cs, l1_off, l2_off, l2_tables):
    """L1 and L2 entries mapping every guest cluster to the same offset
    in the data file (COPIED set, as refcount 1 is implied).  Entries are
    filled in C and written in large runs: a 1 TiB image maps in well under
    a second."""
    ffi, lib = qcow2_native()
    per = cs // 8
    nclusters = _ceil(size, cs)
    l1 = ffi.new("unsigned char[]", l2_tables * 8)
    _fill_identity(lib, l1, l2_tables, l2_off, cs)
    st.pwrite(l1_off, ffi.buffer(l1))
    batch = max(1, (16 << 20) // cs)                 # L2 tables per write
    for t0 in range(0, l2_tables, batch):
        tables = min(batch, l2_tables - t0)
        buf = ffi.new("unsigned char[]", tables * cs)
        n = min(tables * per, nclusters - t0 * per)
        _fill_identity(lib, buf, n, t0 * per * cs, cs)
        st.pwrite(l2_off + t0 * cs, ffi.buffer(buf))


def _set_refcount(buf, cluster, value, bits):
    if bits < 8:
        shift = cluster * bits % 8
        buf[cluster * bits // 8] |= value << shift
    else:
        n = bits // 8
        buf[cluster * n:(cluster + 1) * n] = value.to_bytes(n, "big")


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
    st, region = fde_region(path, writable, force_share)
    try:
        return HeaderArea.load(region)
    except BaseException:
        st.close()
        raise


__all__ = ["create_qcow2", "open_qcow2", "is_qcow2", "qcow2_luks_area", "aes_key", "FormatError"]
