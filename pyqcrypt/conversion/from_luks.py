# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keep-ciphertext from a LUKS volume to qcow2-luks: the LUKS1 header area
(or, for LUKS2, a LUKS1 header rewrapped around the same volume key) becomes
the image's FDE clusters and the payload becomes its raw data file, copied
or adopted in place.
"""

import os
import shlex
import warnings

from ..errors import Error, FormatError
from ..locks import lock_image
from ..luks.area import open_area
from ..luks.header import HEADER_SIZE, LuksHeader, SECTOR, check_names
from ..luks.keyslots import unlock
from ..luks.magic import luks_version
from ..luks.luks2 import segment_spec
from ..luks.luks2_meta import segment_length
from ..luks.rewrap import luks2_to_luks1_region
from ..qcow2.create import create_qcow2
from ..qcow2.open import data_file_path, read_header
from ..storage import MemoryStorage, NewFile, Region, Storage, unlink_quietly
from .compare import verify_bytes, verify_range
from .copying import copy_payload
from .targets import beside_image, same_file


def with_payload_offset(region, sectors):
    """*region* (bytes) with its LUKS header's payload offset set to
    *sectors*; every other byte unchanged."""
    region = bytearray(region)
    hdr = LuksHeader.parse(region[:HEADER_SIZE])
    hdr.payload_offset = sectors
    region[:HEADER_SIZE] = hdr.pack()
    return bytes(region)


class _LuksSource:
    """What keep-ciphertext conversion takes from a LUKS volume: the header
    area to store as FDE clusters, and where the payload's ciphertext is."""

    def __init__(self, region, data, start, length, owned, rewritten):
        self.region, self.data, self.start, self.length = region, data, start, length
        # rewritten: the header area is not the source's own (LUKS2 rewrapped,
        # or a keyslot added), so verification checks what was written
        self.owned, self.rewritten = owned, rewritten

    def close(self):
        for s in self.owned:
            s.close()


def _luks_source(src, src_header, passphrase, force_share=False, iter_time_ms=None,
                 key_slot=None, dst=None):
    """The _LuksSource of a LUKS1 or LUKS2 volume, read under QEMU's shared
    read lock unless *force_share*.  A LUKS2 volume needs *passphrase*: one
    secret, or a list of them (each carried into its own LUKS1 keyslot,
    with *iter_time_ms* of PBKDF2)."""
    if luks_version(src if src_header is None else src_header) == 2:
        if isinstance(passphrase, (list, tuple)):
            passphrases = list(passphrase)
        else:
            passphrases = [] if passphrase is None else [passphrase]
        return _luks2_source(src, src_header, passphrases, iter_time_ms, force_share, key_slot,
                             dst)
    area = open_area(src, header=src_header, force_share=force_share)
    owned = [area.region.storage]
    hdr = area.header
    try:
        # What open and info check, before a byte is copied: a header QEMU
        # or pyqcrypt could not use must not be sealed into a qcow2 image.
        try:
            check_names(hdr)
        except Error as exc:
            raise Error("%s: its LUKS header cannot be used (%s); nothing was written"
                        % (src_header or src, exc)) from None
        if src_header is None and hdr.payload_offset * SECTOR < hdr.key_material_end():
            raise FormatError("the payload offset (sector %d) lies inside the header's key "
                              "material (which ends at byte %d): QEMU refuses such a header, so "
                              "it cannot be kept; nothing was written"
                              % (hdr.payload_offset, hdr.key_material_end()),
                              field="payload-offset", offset=104, path=src)
        if src_header is None:
            # Attached: the whole area up to the payload, byte for byte.
            region = area.region.read(0, hdr.payload_offset * SECTOR, "LUKS header area")
            data = area.region.storage
        else:
            # Detached: QEMU refuses payload offset 0 inside qcow2, so the
            # copy's payload offset names the end of its own key material;
            # every keyslot, the UUID and the digest are unchanged.
            region = area.region.read(0, hdr.key_material_end(), "LUKS header area")
            region = with_payload_offset(region, len(region) // SECTOR)
            data = Storage(src)
            owned.append(data)
            lock_image(data, mode="read", force_share=force_share)
        start = hdr.payload_offset * SECTOR
        size = data.size()
        if size <= start:
            raise FormatError("%s is %d bytes long: its header puts the payload at byte %d, so "
                              "there is no payload" % (data.path, size, start), path=src)
        length = size - start
        return _LuksSource(region, data, start, length - length % SECTOR, owned, False)
    except BaseException:
        for s in owned:
            s.close()
        raise


def _luks2_source(src, src_header, passphrases, iter_time_ms=None, force_share=False,
                  key_slot=None, dst=None):
    """Unlock a LUKS2 volume with libcryptsetup and wrap its volume key in a
    new LUKS1 header (QEMU layout, same UUID, every supplied passphrase in
    its own keyslot), keeping the data segment untouched.  Refuses every
    segment LUKS1 cannot describe."""
    data = Storage(src)
    owned = [data]
    try:
        lock_image(data, mode="read", force_share=force_share)
        hst = data
        if src_header is not None:
            hst = Storage(src_header)
            owned.append(hst)
            lock_image(hst, mode="read", force_share=force_share)
        wrapped = luks2_to_luks1_region(data, hst, passphrases,
                                        _luks1_expressible(src, src_header, dst),
                                        iter_time_ms=iter_time_ms, key_slot=key_slot)
        seg = wrapped.segment
        length = segment_length(seg, data.size(), src)
        if wrapped.missing:
            warnings.warn("%s: keyslot%s %s %s not carried into the result: no passphrase given "
                          "opens %s (give each passphrase with --carry-secret ID)" % (
                              src, "s" if len(wrapped.missing) > 1 else "",
                              ", ".join(map(str, wrapped.missing)),
                              "are" if len(wrapped.missing) > 1 else "is",
                              "them" if len(wrapped.missing) > 1 else "it"), stacklevel=2)
        return _LuksSource(wrapped.region, data, seg.offset, length, owned, True)
    except BaseException:
        for s in owned:
            s.close()
        raise


def _luks1_expressible(src, src_header=None, dst=None):
    """The check that a LUKS2 data segment can be described by LUKS1 (and
    QEMU): 512-byte sectors, no IV tweak, a cipher LUKS1 can name.  A
    refusal spells out the re-encrypting command that does the job."""
    def reencrypt_instead(why):
        q = shlex.quote
        opts = "driver=luks,file.filename=%s%s,key-secret=s" % (
            src, ",header=%s" % src_header if src_header else "")
        return Error("%s, so its ciphertext cannot be kept. Convert it re-encrypting instead: "
                     "pyqcrypt convert --object secret,id=s,file=PASSFILE --image-opts %s -O qcow2 "
                     "-o encrypt.format=luks,encrypt.key-secret=s %s"
                     % (why, q(opts), q(dst or "DEST.qcow2")))

    def check(seg, key_bytes):
        if seg.sector_size != SECTOR:
            raise reencrypt_instead("%s uses %d-byte encryption sectors; LUKS1 and QEMU know only "
                                    "512" % (src, seg.sector_size))
        if seg.iv_tweak:
            raise reencrypt_instead("%s: its data segment has IV tweak %d, which LUKS1 cannot "
                                    "express" % (src, seg.iv_tweak))
        try:
            return segment_spec(seg, key_bytes, src)
        except Error as exc:
            raise Error("%s; it cannot be written as LUKS1" % exc) from None
    return check


def luks_to_qcow2(req):
    """Keep-ciphertext (ConvertRequest *req*): LUKS volume -> qcow2-luks
    with a raw data file.  A LUKS2 source needs its passphrase (or a list
    of them, see _luks_source).  The destination passphrase, if any, gets
    a keyslot of its own in the result, beside every keyslot kept; it needs
    the source's passphrase."""
    src, dst, src_header, data_file = req.src, req.dst, req.src_header, req.data_file
    passphrase, new_passphrase = req.src_passphrase, req.dst_passphrase
    iter_time_ms, key_slot, progress = req.iter_time_ms, req.key_slot, req.progress
    if new_passphrase is not None and passphrase is None:
        raise Error("a new secret (encrypt.key-secret) becomes a keyslot of the kept header, which "
                    "needs the source's secret too: --image-opts driver=luks,file.filename=%s,"
                    "key-secret=ID" % src)
    source = _luks_source(src, src_header, passphrase, req.force_share, iter_time_ms, key_slot, dst)
    made = []
    try:
        if new_passphrase is not None:
            source.region = _with_new_keyslot(source.region, req.first_src_passphrase,
                                              new_passphrase, iter_time_ms,
                                              key_slot if not source.rewritten else None)
            source.rewritten = True
        # QEMU finds a relative data file name from the image's directory:
        # the file goes there, and the name is stored as the user gave it.
        stored = data_file if data_file else os.path.abspath(dst + ".data")
        if req.data_file_existing:
            _adopt_data_file(req, source)
        else:
            dpath = beside_image(dst, stored)
            _copy_data_file(source, dpath, progress)
            made.append(dpath)
        create_qcow2(dst, source.length, cluster_size=req.cluster_size, encrypt_format="luks",
                     fde_region=source.region, data_file=stored, data_file_raw=True,
                     data_file_existing=True)
        made.append(dst)
        if req.verify:
            _verify_luks_to_qcow2(src, src_header, source, dst)
    except BaseException:
        for p in made:
            unlink_quietly(p)
        raise
    finally:
        source.close()


def _adopt_data_file(req, source):
    """data_file_existing: the named file or device is the payload itself
    (nothing copied); it must hold the whole payload and must not be the
    volume whose header precedes the payload."""
    if not req.data_file:
        raise Error("data_file_existing needs data_file=PATH (the payload itself)")
    dpath = beside_image(req.dst, req.data_file)
    if source.start and same_file(dpath, req.src):
        raise Error("%s holds the header before its payload; it cannot be the data file "
                    "itself (give the payload device, e.g. a partition or a loop device "
                    "with an offset)" % req.src)
    with Storage(dpath) as existing:
        have = existing.size()
    if have < source.length:
        raise Error("data file %s holds %d bytes, %d fewer than the %d-byte payload of %s"
                    % (dpath, have, source.length - have, source.length, req.src))
    if req.progress:
        req.progress(source.length, source.length)


def _copy_data_file(source, dpath, progress):
    """The payload's ciphertext into the new data file *dpath*, which
    appears only once complete."""
    new = NewFile(dpath)
    try:
        copy_payload(source.data, source.start, source.length, new.storage, 0, progress)
        new.commit()
    except BaseException:
        new.abort()
        raise


def _with_new_keyslot(region, passphrase, new_passphrase, iter_time_ms, key_slot=None):
    """*region* (a LUKS1 header area, bytes) with *new_passphrase* added in
    its first free keyslot, the master key found with *passphrase*."""
    from ..luks.area import HeaderArea
    from ..luks.keyslots import add_key
    mem = MemoryStorage(len(region))
    mem.buf[:] = region
    area = HeaderArea.load(Region(mem, 0, len(region)))
    _, mk = unlock(area, passphrase, key_slot)
    with mk:
        add_key(area, mk, new_passphrase, iter_time_ms=iter_time_ms, calibration="qemu")
    return bytes(mem.buf)


def _verify_luks_to_qcow2(src, src_header, source, dst):
    """Re-read both sides: the FDE region against the source's header area
    (read again from the source), the data file against the payload."""
    if source.rewritten:
        expected = source.region        # a new LUKS1 header: check what was written
    else:
        again = _luks_source(src, src_header, None, force_share=True)   # ours, already locked
        again.close()
        expected = again.region
    with Storage(dst) as st:
        h = read_header(st)
        off, length = h.fde
        if length != len(expected):
            raise Error("verification failed: %s's FDE region is %d bytes, the source's header "
                        "area %d" % (dst, length, len(expected)))
        verify_bytes(expected, st, off, "LUKS header area")
        with Storage(data_file_path(dst, h)) as data:
            verify_range(source.data, source.start, data, 0, source.length, "payload")

