# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keep-ciphertext from qcow2-luks with a raw data file to a LUKS volume:
LUKS1 (the FDE region as header, one file or a detached header over the
data file, new or written into an existing target) or LUKS2 (a new header
around the same volume key).  Ranges the image reads as zeros while its data
file holds plain bytes are written as encrypted zeros, or refused.
"""

import copy

from ..crypto import SectorCipher
from ..errors import Error
from ..locks import lock_image
from ..luks.header import HEADER_SIZE, LuksHeader, SECTOR
from ..luks.keyslots import unlock
from ..luks.luks2 import get_volume_key, luks2_device
from ..luks.luks2_format import DEFAULT_HEADER_BYTES as LUKS2_HEADER_BYTES, Luks2Request, format_header
from ..pipeline import CHUNK
from ..qcow2.header import CRYPT_LUKS
from ..qcow2.image import Qcow2Image
from ..qcow2.open import data_file_path, fde_area, read_header
from ..storage import NewFile, Storage, unlink_quietly, zero_fill
from ..units import round_up
from .compare import verify_bytes, verify_range
from .copying import copy_payload
from .from_luks import with_payload_offset
from .targets import too_small


def _qcow2_luks_source(src, force_share=False):
    """(FDE region bytes, virtual size, data file path) of a qcow2-luks
    image whose ciphertext can be reused."""
    with Storage(src) as st:
        lock_image(st, mode="read", force_share=force_share)
        h = read_header(st)
        if h.crypt_method != CRYPT_LUKS:
            raise Error("%s is not encrypted with LUKS" % src)
        if h.backing_file:
            raise Error("%s has a backing file (%s): its ciphertext is only part of the disk. "
                        "Flatten it first (re-encrypting convert, which reads the whole chain)"
                        % (src, h.backing_file))
        if not (h.has_data_file and h.data_file_raw):
            raise Error("%s keeps its encrypted data inside the qcow2 file, where QEMU derives IVs "
                        "from host offsets that no LUKS volume can reproduce; its ciphertext cannot "
                        "be reused. Convert with the passphrase instead (re-encrypting: pyqcrypt "
                        "convert --object secret,... without --keep-ciphertext)" % src)
        off, flen = h.fde
        return st.pread(off, flen, "FDE region"), h.size, data_file_path(src, h)


class _ZeroRuns:
    """The guest ranges of a qcow2-luks image that read as zeros through its
    metadata (zero or unallocated clusters) while its raw data file holds
    plain bytes there (QEMU writes plain zeros, or discards).  A LUKS volume
    made from the data file must hold *encrypted* zeros there instead."""

    def __init__(self, src, dpath):
        self.src, self.dpath = src, dpath
        self.count, self.bytes, self.examples = 0, 0, []
        for a, b in self:
            self.count += 1
            self.bytes += b - a
            if len(self.examples) < 3:
                self.examples.append((a, b))

    def __iter__(self):
        with Storage(self.src) as st, Storage(self.dpath) as data:
            img = Qcow2Image(st, data_storage=data)
            for a, b in img.zero_runs():
                yield a, b

    def describe(self):
        shown = ", ".join("%d-%d" % (a, b - 1) for a, b in self.examples)
        return "%d range(s), %d bytes in all (bytes %s%s)" % (
            self.count, self.bytes, shown, ", ..." if self.count > len(self.examples) else "")


def _fde_cipher(src, passphrase, key_slot=None):
    """Unlock a qcow2-luks image's FDE header: a SectorCipher for its data."""
    with Storage(src) as st:
        area = fde_area(st, read_header(st))
        _, mk = unlock(area, passphrase, key_slot)
        with mk:
            return SectorCipher(area.header.spec, mk)


def _encrypt_zero_runs(out, start, runs, cipher, size):
    """Write encrypted zeros over *runs* of the payload at *start* of *out*;
    IVs count sectors from the payload start, as raw LUKS does."""
    buf = bytearray(CHUNK)
    for a, b in runs:
        b = min(b + (-b % SECTOR), (size + SECTOR - 1) // SECTOR * SECTOR)
        pos = a
        while pos < b:
            n = min(CHUNK, b - pos)
            view = memoryview(buf)[:n]
            view[:] = bytes(n) if n < CHUNK else _ZERO_CHUNK
            cipher.encrypt(view, pos // SECTOR)
            out.pwrite(start + pos, view)
            pos += n


_ZERO_CHUNK = bytes(CHUNK)


def _complement(runs, length):
    """The (start, end) pieces of [0, length) outside *runs*."""
    pos = 0
    for a, b in runs:
        if a > pos:
            yield pos, min(a, length)
        pos = max(pos, b)
    if pos < length:
        yield pos, length


def qcow2_to_luks(req):
    """Keep-ciphertext (ConvertRequest *req*): qcow2-luks with a raw data
    file -> LUKS1.  With a detached header, only the header is written and
    the data file itself is the payload.  With *existing_target*, the
    destination is an existing file or block device written in place
    (header last); otherwise a new file.

    Zero and unallocated clusters read as zeros in the image but hold plain
    bytes in its data file: with the source passphrase they are written as
    encrypted zeros (only those ranges are encrypted); without it, refused,
    naming the ranges."""
    src, dst, detached_header, progress = req.src, req.header_target, req.detached, req.progress
    force_share, existing = req.force_share, req.existing_target
    region, size, dpath = _qcow2_luks_source(src, force_share)
    runs = _ZeroRuns(src, dpath)
    cipher = _zero_runs_cipher(src, runs, detached_header, req.src_passphrase, req.key_slot)
    try:
        with Storage(dpath) as data:
            lock_image(data, mode="read", force_share=force_share)
            avail = min(size, data.size())
            region, start, need = _luks_layout(src, dpath, region, size, avail, detached_header)

            def fill(out, dense):
                copy_payload(data, 0, avail, out, start, progress, dense=dense)
                if dense:
                    zero_fill(out.pwrite, start + avail, need - start - avail)
                elif not out.is_block_device and out.size() < need:
                    out.truncate(need)              # past a short data file: its zeros
                if cipher is not None:
                    _encrypt_zero_runs(out, start, runs, cipher, size)

            if existing:
                _into_existing(dst, region, fill, start, need, detached_header, progress)
            else:
                _new_luks_file(dst, region, fill, detached_header, progress and
                               (lambda: progress(size, size)))
            if req.verify:
                try:
                    _verify_qcow2_to_luks(dst, region, data, start, avail,
                                          runs if cipher is not None else (), cipher,
                                          detached_header)
                except Error:
                    if not existing:
                        unlink_quietly(dst)
                    raise
    finally:
        if cipher is not None:
            cipher.close()
    return dpath


def qcow2_to_luks2(req):
    """Keep-ciphertext (ConvertRequest *req*): qcow2-luks with a raw data
    file -> LUKS2 with 512-byte sectors, around the same volume key and
    UUID.  With a detached header, the new LUKS2 header's data segment is
    the data file itself, in place (nothing copied); otherwise a new
    volume (header, then the data file's bytes).  Needs the image's
    passphrase: a LUKS2 keyslot is made for the destination passphrase
    (default the same one)."""
    src, dst, detached_header, progress = req.src, req.header_target, req.detached, req.progress
    passphrase, new_passphrase, key_slot = req.src_passphrase, req.dst_passphrase, req.key_slot
    force_share = req.force_share
    if passphrase is None:
        raise Error("--keep-ciphertext to LUKS2 needs the image's passphrase (--image-opts "
                    "driver=qcow2,file.filename=%s,encrypt.key-secret=ID): a new LUKS2 keyslot "
                    "wraps the same volume key" % src)
    _, size, dpath = _qcow2_luks_source(src, force_share)
    runs = _ZeroRuns(src, dpath)
    if runs.count and detached_header:
        _zero_runs_cipher(src, runs, True, passphrase, key_slot)     # refuses, naming them
    with Storage(src) as st:
        area = fde_area(st, read_header(st))
        _, mk = unlock(area, passphrase, key_slot)
    try:
        request = _same_key_request(req, area, mk)
        with Storage(dpath) as data:
            lock_image(data, mode="read", force_share=force_share)
            avail = min(size, data.size())
            if detached_header and avail < size:
                raise Error("data file %s holds %d bytes, fewer than the %d-byte image %s"
                            % (dpath, avail, size, src))
            out = NewFile(dst)
            try:
                out.storage.truncate(LUKS2_HEADER_BYTES if detached_header
                                     else LUKS2_HEADER_BYTES + size)
                offset, _, _ = format_header(out.tmp, new_passphrase or passphrase, request,
                                             data_device=dpath if detached_header else None)
                if not detached_header:
                    copy_payload(data, 0, avail, out.storage, offset, progress)
                    out.storage.truncate(offset + round_up(size, SECTOR))
                    if runs.count:
                        with SectorCipher(area.header.spec, mk) as cipher:
                            _encrypt_zero_runs(out.storage, offset, runs, cipher, size)
                elif progress:
                    progress(size, size)
                if req.verify:
                    _verify_luks2_key(out.tmp, dpath if detached_header else None, mk,
                                      new_passphrase or passphrase)
                out.commit()
            except BaseException:
                out.abort()
                raise
    finally:
        mk.wipe()
    return dpath if detached_header else None


def _same_key_request(req, area, mk):
    """The Luks2Request for a LUKS2 header over the image's own ciphertext:
    its cipher, volume key and UUID (unless another is asked), 512-byte
    sectors.  The caller's request stays as it was given."""
    request = copy.copy(req.luks2_request) if req.luks2_request else Luks2Request()
    request.spec, request.master_key = area.header.spec, mk
    request.uuid = request.uuid or area.header.uuid
    if request.sector_size not in (0, SECTOR):
        raise Error("the qcow2-luks data is encrypted in 512-byte sectors; a LUKS2 header "
                    "over the same ciphertext must say sector-size=512, not %d"
                    % request.sector_size)
    request.sector_size = SECTOR
    return request


def _verify_luks2_key(path, data_device, mk, passphrase):
    """--verify for qcow2 -> LUKS2: the new keyslot, opened by libcryptsetup,
    yields exactly the image's volume key."""
    with luks2_device(data_device or path, path if data_device else None) as (ffi, lib, cd):
        vk, _ = get_volume_key(ffi, lib, cd, passphrase, None, path)
        with vk:
            if not vk.equals(mk):
                raise Error("verification failed: the new LUKS2 keyslot of %s does not yield the "
                            "image's volume key" % path)


def _zero_runs_cipher(src, runs, detached_header, passphrase, key_slot):
    """The image's sector cipher when it has zero runs (_ZeroRuns) to write
    as encrypted zeros; None when it has none.  Refused, naming the runs,
    without the passphrase or with a detached header."""
    if not runs.count:
        return None
    if detached_header:
        raise Error("%s has %s that read as zeros but hold unencrypted bytes in its data file, "
                    "which a detached header would make the payload; convert to a single "
                    "LUKS file (without --header) and with the image's passphrase instead"
                    % (src, runs.describe()))
    if passphrase is None:
        raise Error("%s has %s that read as zeros (zero or discarded clusters) but hold "
                    "unencrypted bytes in its data file; give the image's passphrase "
                    "(--image-opts driver=qcow2,file.filename=%s,encrypt.key-secret=ID) so "
                    "those ranges are written as encrypted zeros" % (src, runs.describe(), src))
    return _fde_cipher(src, passphrase, key_slot)


def _luks_layout(src, dpath, region, size, avail, detached_header):
    """(header region, payload start, bytes needed) of the LUKS volume
    made from the image's FDE *region* over its data file (*avail* of the
    *size* bytes present)."""
    if detached_header:
        if avail < size:
            raise Error("data file %s holds %d bytes, %d fewer than the %d-byte image %s: "
                        "a detached header over it would describe a smaller volume"
                        % (dpath, avail, size - avail, size, src))
        region = with_payload_offset(region, 0)      # the whole data file is payload
        return region, 0, len(region)
    payload = LuksHeader.parse(region[:HEADER_SIZE], path=src).payload_offset
    if payload * SECTOR < len(region):
        payload = len(region) // SECTOR
        region = with_payload_offset(region, payload)
    return region, payload * SECTOR, payload * SECTOR + size


def _new_luks_file(dst, region, fill, detached_header, done):
    """A new LUKS file *dst*: the header *region*, then (unless the header
    is detached) ``fill(storage, dense=False)``; removed on failure."""
    out = NewFile(dst)
    try:
        out.storage.pwrite(0, region)
        if not detached_header:
            fill(out.storage, False)
        elif done:
            done()
        out.commit()
    except BaseException:
        out.abort()
        raise


def _verify_qcow2_to_luks(dst, region, data, start, avail, runs, cipher, detached_header):
    with Storage(dst) as st:
        verify_bytes(region, st, 0, "LUKS header area")
        if detached_header:
            return
        for a, b in _complement(runs, avail):
            verify_range(data, a, st, start + a, b - a, "payload")
        for a, b in runs:
            b = min(b, avail)
            pos = a
            while pos < b:
                n = min(CHUNK, b - pos)
                buf = bytearray(st.pread(start + pos, n, "payload"))
                cipher.decrypt(buf, pos // SECTOR)
                if any(buf):
                    raise Error("verification failed: the payload does not decrypt to zeros "
                                "at byte %d of a zero range" % (pos + next(i for i, x in
                                                                           enumerate(buf) if x)))
                pos += n


def _into_existing(dst, region, fill, start, need, detached_header, progress):
    """Write a LUKS volume (or its detached header) into the existing *dst*
    so that no moment between the first write and the last looks like a
    finished volume: the old header is wiped first, the header goes last."""
    with Storage(dst, writable=True) as out:
        lock_image(out, mode="exclusive")
        have = out.size()
        if have < need:
            raise too_small(dst, have, need, "the LUKS %s" % (
                "header" if detached_header else "volume (header area %d + payload %d bytes)"
                % (start, need - start)))
        if not detached_header:
            zero_fill(out.pwrite, 0, min(4096, start))
            out.sync()
            fill(out, True)
            out.sync()
        elif progress:
            progress(need, need)
        out.pwrite(0, region)
        out.sync()

