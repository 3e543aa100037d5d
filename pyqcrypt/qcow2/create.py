# SPDX-License-Identifier: LGPL-2.1-or-later
"""Creating qcow2 images as qemu-img 7.2 lays them out.

Three steps, each its own function:

* ``check_create_options`` refuses what qemu-img refuses, in its words;
* ``plan_qcow2`` is a pure planner: from the sizes alone it places the
  header, refcount table, refcount blocks, L1 table, the L2 tables of a raw
  external data file and the FDE (LUKS) clusters, in qemu-img's order, and
  sizes the refcount structures so that they count themselves;
* ``create_qcow2`` builds the image from the plan under a temporary name
  (``storage.Publication``, with a new data file), writing the header last,
  and renames it into place only when every byte is written: an
  interrupted create leaves nothing under the final name.
"""

import os
import struct
from dataclasses import dataclass

from .._native import qcow2 as qcow2_native
from ..crypto import CipherSpec, policy
from ..errors import Error
from ..luks.format import format_region, plan_layout
from ..storage import Publication, Region, Storage
from ..units import SECTOR, ceil_div, round_up
from .header import (AUTOCLEAR_DATA_FILE_RAW, CRYPT_AES, CRYPT_LUKS, CRYPT_NONE,
                     EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FDE, INCOMPAT_DATA_FILE,
                     INCOMPAT_EXTL2, MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS,
                     MIN_EXTL2_CLUSTER_BITS, QEMU_V3_HEADER_LENGTH, V2_HEADER_LENGTH, Qcow2Header)
from .refcounts import set_refcount

CRYPT_FORMATS = {None: CRYPT_NONE, "luks": CRYPT_LUKS, "aes": CRYPT_AES}


@dataclass
class Qcow2Plan:
    """Where everything of a new image goes (byte offsets; counts in clusters)."""
    version: int
    cluster_size: int
    size: int                   # virtual size, rounded up to whole sectors
    l2_entries: int
    l1_size: int                # L1 entries
    rt_off: int
    rt_clusters: int
    rb_off: int
    rt_blocks: int              # refcount blocks
    l1_off: int
    l1_clusters: int
    l2_off: int
    l2_tables: int              # pre-mapped L2 tables (raw external data file)
    fde_off: int
    fde_len: int
    total: int                  # clusters in use, all with refcount 1

    @property
    def file_length(self):
        """qemu-img's file length: a plain image ends right after its L1
        entries, one with L2 tables or FDE clusters after its last cluster."""
        if self.l2_tables or self.fde_len:
            return self.total * self.cluster_size
        if not self.l1_size:
            return self.total * self.cluster_size
        return self.l1_off + self.l1_size * 8


def check_create_options(cluster_size, refcount_bits, compat, data_file, data_file_raw,
                         backing_file, backing_format, extended_l2, crypt, have_secret,
                         allow_insecure):
    """The qcow2 version (2 or 3) of a valid set of create options; an
    Error naming the option otherwise."""
    if cluster_size & (cluster_size - 1) or \
            not 1 << MIN_CLUSTER_BITS <= cluster_size <= 1 << MAX_CLUSTER_BITS:
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
        if version == 2:
            raise Error("extended L2 entries are only supported with compatibility level 1.1 "
                        "and above")
        if cluster_size < 1 << MIN_EXTL2_CLUSTER_BITS:
            raise Error("extended L2 entries are only supported with cluster sizes of at least "
                        "%d bytes" % (1 << MIN_EXTL2_CLUSTER_BITS))
        if data_file_raw:
            raise Error("creating an image with both extended L2 entries and a raw external data "
                        "file (data_file_raw) is not supported: drop extended_l2=on or "
                        "data_file_raw=on (such images made by qemu-img are read and written)")
    if crypt != CRYPT_NONE and not have_secret:
        raise Error("an encrypted image needs a secret (encrypt.key-secret)")
    if crypt == CRYPT_LUKS and version == 2:
        raise Error("LUKS encryption needs compat=1.1")
    if crypt == CRYPT_AES and not allow_insecure:
        raise Error("legacy qcow2 AES encryption is insecure (guest-sector IVs allow "
                    "watermarking, no key stretching); it needs the explicit opt-in "
                    "--allow-insecure, and LUKS is recommended instead")
    return version


def plan_qcow2(size, cluster_size, refcount_bits=16, version=3, extended_l2=False,
               map_data_file=False, fde_len=0):
    """The layout qemu-img gives a new image (pure: no I/O).  *map_data_file*:
    every guest cluster is mapped at creation (raw external data file);
    *fde_len*: bytes of LUKS header area to place after everything else."""
    cs = cluster_size
    l2_entries = cs // (16 if extended_l2 else 8)
    size = round_up(size, SECTOR)               # qemu-img rounds up to whole sectors
    l1_size = ceil_div(size, cs * l2_entries)
    if l1_size * 8 > MAX_L1_BYTES:
        raise Error("the image size is too large for file format 'qcow2' (at most %d bytes with "
                    "%d-byte clusters; try a larger cluster size)"
                    % (MAX_L1_BYTES // 8 * l2_entries * cs, cs))
    l1_clusters = ceil_div(l1_size * 8, cs)     # none for an empty image, as qemu-img
    l2_tables = l1_size if map_data_file else 0
    fde_clusters = ceil_div(fde_len, cs)
    per_block = cs * 8 // refcount_bits
    # The refcount blocks count every cluster, themselves and the table included.
    rt_blocks, rt_clusters = 1, 1
    while True:
        total = 1 + rt_clusters + rt_blocks + l1_clusters + l2_tables + fde_clusters
        blocks = ceil_div(total, per_block)
        table = ceil_div(blocks, cs // 8)
        if (blocks, table) == (rt_blocks, rt_clusters):
            break
        rt_blocks, rt_clusters = blocks, table
    rt_off = cs
    rb_off = rt_off + rt_clusters * cs
    l2_off = rb_off + (rt_blocks + l1_clusters) * cs
    l1_off = rb_off + rt_blocks * cs if l1_clusters else 0
    return Qcow2Plan(version=version, cluster_size=cs, size=size, l2_entries=l2_entries,
                     l1_size=l1_size, rt_off=rt_off, rt_clusters=rt_clusters, rb_off=rb_off,
                     rt_blocks=rt_blocks, l1_off=l1_off, l1_clusters=l1_clusters, l2_off=l2_off,
                     l2_tables=l2_tables, fde_off=l2_off + l2_tables * cs, fde_len=fde_len,
                     total=total)


def _header_for(plan, refcount_bits, crypt, backing_file, backing_format, extended_l2,
                data_file, data_file_raw):
    """The Qcow2Header of a planned image, with its extensions."""
    header = Qcow2Header(plan.version, plan.cluster_size.bit_length() - 1, plan.size, crypt,
                         plan.l1_size, plan.l1_off, plan.rt_off, plan.rt_clusters,
                         refcount_order=refcount_bits.bit_length() - 1,
                         header_length=QEMU_V3_HEADER_LENGTH if plan.version == 3 else V2_HEADER_LENGTH)
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
        header.set_extension(EXT_FDE, struct.pack(">QQ", plan.fde_off, plan.fde_len))
    return header


def create_qcow2(path, size, cluster_size=65536, refcount_bits=16, compat="1.1",
                 encrypt_format=None, passphrase=None, spec=None, hash_name="sha256",
                 iter_time_ms=None, iterations=None, data_file=None, data_file_raw=False,
                 uuid=None, allow_insecure=False, fde_region=None, data_file_existing=False,
                 backing_file=None, backing_format=None, extended_l2=False,
                 qemu_secret_ok=False):
    """Create a new qcow2 image; returns its Qcow2Header.

    A passphrase QEMU cannot take (not UTF-8, or holding a NUL byte) is
    refused: QEMU could never open the image.  *qemu_secret_ok* skips that
    check, for images meant for pyqcrypt alone.

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
    if passphrase is not None and fde_region is None and not qemu_secret_ok:
        _check_qemu_secret(passphrase)
    crypt = CRYPT_FORMATS.get(encrypt_format)
    if crypt is None:
        raise Error("encrypt.format must be luks or aes, not %r" % (encrypt_format,))
    version = check_create_options(cluster_size, refcount_bits, compat, data_file, data_file_raw,
                                   backing_file, backing_format, extended_l2, crypt,
                                   passphrase is not None or fde_region is not None,
                                   allow_insecure)
    spec, luks_layout, fde_len = _plan_fde(size, crypt, spec, fde_region, allow_insecure)
    # A raw external data file is mapped whole at creation, as QEMU does:
    # guest cluster n lives at offset n of the data file.
    plan = plan_qcow2(size, cluster_size, refcount_bits, version, extended_l2,
                      map_data_file=data_file_raw, fde_len=fde_len)
    header = _header_for(plan, refcount_bits, crypt, backing_file, backing_format, extended_l2,
                         data_file, data_file_raw)
    with Publication() as files:
        st = files.new(path).storage
        _write_metadata(st, plan, refcount_bits)
        if data_file:
            _data_file(files, path, data_file, data_file_raw, data_file_existing, plan.size)
        if fde_region is not None:
            st.pwrite(plan.fde_off, fde_region)
        elif crypt == CRYPT_LUKS:
            _, mk = format_region(Region(st, plan.fde_off, plan.fde_len), spec, passphrase,
                                  hash_name, luks_layout, "qemu", iter_time_ms, iterations, uuid)
            mk.wipe()
        st.pwrite(0, header.pack())
        files.commit()
    return header


def _plan_fde(size, crypt, spec, fde_region, allow_insecure):
    """(spec, LUKS layout, FDE area bytes) of a new image: the layout of a
    LUKS header to format under *spec* (checked against the cipher policy),
    or none for an *fde_region* stored verbatim or an unencrypted image."""
    if fde_region is not None:
        if crypt != CRYPT_LUKS:
            raise Error("an FDE region needs encrypt_format=luks")
        return spec, None, len(fde_region)
    if crypt != CRYPT_LUKS:
        return spec, None, 0
    spec = spec if isinstance(spec, CipherSpec) else CipherSpec.parse(spec or "aes-xts-plain64")
    spec.check()
    policy.enforce(spec, round_up(size, SECTOR), allow_insecure)
    luks_layout = plan_layout(spec.key_bytes, style="qemu")
    return spec, luks_layout, luks_layout.area_bytes


def _check_qemu_secret(passphrase):
    from ..crypto.keybuf import qemu_can_use
    if not qemu_can_use(passphrase):
        raise Error("the passphrase is not valid UTF-8 (or holds a NUL byte): QEMU takes only "
                    "such secrets, so it could never open this qcow2-luks image. Use a text "
                    "passphrase (binary key files suit raw LUKS volumes, which cryptsetup opens)")


def _write_metadata(st, plan, refcount_bits):
    """Refcount table and blocks (every planned cluster counted once) and,
    for a raw data file, the identity-mapped L1 and L2 tables."""
    cs = plan.cluster_size
    st.truncate(plan.file_length)
    st.pwrite(plan.rt_off, struct.pack(">%dQ" % plan.rt_blocks,
                                       *(plan.rb_off + i * cs for i in range(plan.rt_blocks))))
    blocks = bytearray(plan.rt_blocks * cs)
    for c in range(plan.total):
        set_refcount(blocks, c, 1, refcount_bits)
    st.pwrite(plan.rb_off, blocks)
    if plan.l2_tables:
        _map_raw_data_file(st, plan)


def _data_file(files, path, data_file, data_file_raw, existing, size):
    """Adopt the existing data file (checking its size when it is mapped
    raw) or start a new one in Publication *files*, published before the
    image that names it."""
    dpath = data_file if os.path.isabs(data_file) else os.path.join(
        os.path.dirname(os.path.abspath(path)), data_file)
    if existing:
        with Storage(dpath) as st:
            if data_file_raw and st.size() < size:
                raise Error("data file %s (%d bytes) is smaller than the %d-byte image"
                            % (dpath, st.size(), size))
        return
    files.new(dpath, first=True).storage.truncate(size if data_file_raw else 0)


def _fill_identity(lib, buf, n, first, step):
    """n L1/L2 entries (first + i*step) | COPIED into the cffi buffer *buf*;
    the C side checks that they fit in it and that the offsets stay below
    qcow2's 2^56 limit."""
    if lib.pyq_fill_identity_l2(buf, len(buf), n, first, step) != 0:
        raise Error("cannot map %d clusters from offset %d: the entries do not fit "
                    "their buffer or pass qcow2's 2^56-byte offset limit" % (n, first))


def _map_raw_data_file(st, plan):
    """L1 and L2 entries mapping every guest cluster to the same offset
    in the data file (COPIED set, as refcount 1 is implied).  Entries are
    filled in C and written in large runs: a 1 TiB image maps in well under
    a second."""
    ffi, lib = qcow2_native()
    cs, tables_total = plan.cluster_size, plan.l2_tables
    per = cs // 8
    nclusters = ceil_div(plan.size, cs)
    l1 = ffi.new("unsigned char[]", tables_total * 8)
    _fill_identity(lib, l1, tables_total, plan.l2_off, cs)
    st.pwrite(plan.l1_off, ffi.buffer(l1))
    batch = max(1, (16 << 20) // cs)                 # L2 tables per write
    for t0 in range(0, tables_total, batch):
        tables = min(batch, tables_total - t0)
        buf = ffi.new("unsigned char[]", tables * cs)
        n = min(tables * per, nclusters - t0 * per)
        _fill_identity(lib, buf, n, t0 * per * cs, cs)
        st.pwrite(plan.l2_off + t0 * cs, ffi.buffer(buf))


__all__ = ["Qcow2Plan", "check_create_options", "create_qcow2", "plan_qcow2"]
