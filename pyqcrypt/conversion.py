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
import shlex
import stat
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Union, cast

from . import image as images
from .crypto import CipherSpec, SectorCipher
from .errors import Error, FormatError
from .luks.area import is_luks, open_area
from .luks.format import format_region, plan_layout
from .luks.header import HEADER_SIZE, SECTOR, LuksHeader, check_names
from .luks.keyslots import unlock
from .luks.luks2 import get_volume_key, luks2_device, luks_version, segment_spec
from .luks.luks2_format import DEFAULT_HEADER_BYTES as LUKS2_HEADER_BYTES
from .luks.luks2_format import Luks2Request, create_luks2, format_header
from .luks.luks2_meta import segment_length
from .luks.rewrap import luks2_to_luks1_region
from .qcow2.header import CRYPT_LUKS
from .qcow2.image import Qcow2Image
from .qcow2.create import create_qcow2
from .qcow2.open import data_file_path, fde_area, is_qcow2, read_header
from .locks import lock_image
from .overlap import mounted_over, overlapping
from .pipeline import CHUNK, Buffer, Piece, Pipeline, write_pieces
from .units import round_up
from .storage import (MemoryStorage, NewFile, Region, Storage, fsync_dir, rename_noreplace,
                      tmp_name, warn_leftovers, zero_fill)

if TYPE_CHECKING:
    from .image import Secret, StrPath


# ---------------------------------------------------------------- exact copies

def copy_payload(src, src_start, length, dst, dst_start=0, progress=None, dense=False):
    """Copy exactly *length* bytes from Storage *src* to Storage *dst*.

    Only ranges the file system positively reports as holes are skipped
    (``Storage.data_runs``); they stay holes in a new file, or are written
    as zeros when *dense* (an existing target, whose old bytes must not
    show through).  Returns the number of data bytes copied.  Never
    returns having covered fewer than *length* bytes: a source that ends
    early is a FormatError naming where it ended."""
    pos = copied = 0
    # Block devices cannot copy_file_range: read and write overlap instead.
    pipelined = src.is_block_device or dst.is_block_device
    for a, b in src.data_runs(src_start, length):
        if not pos <= a < b <= length:
            raise Error("%s: inconsistent hole map (run %d..%d after %d)" % (src.path, a, b, pos))
        if dense and a > pos:
            zero_fill(dst.pwrite, dst_start + pos, a - pos)
        p = a
        if pipelined:
            _pipelined_copy(src, src_start + a, dst, dst_start + a, b - a,
                            progress and (lambda done, a=a: progress(a + done, length)))
            p = b
        while p < b:
            got = dst.copy_range_from(src, src_start + p, dst_start + p, min(b - p, 1 << 30))
            if got <= 0:
                raise Error("copying from %s stopped at byte %d of %d" % (src.path, p, length))
            p += got
            if progress:
                progress(p, length)
        copied += b - a
        pos = b
    if dense and pos < length:
        zero_fill(dst.pwrite, dst_start + pos, length - pos)
    if not dense and not dst.is_block_device and dst.size() < dst_start + length:
        dst.truncate(dst_start + length)        # a trailing hole exists once the size does
    if dst.size() < dst_start + length:
        raise Error("%s holds %d bytes after the copy, %d short of the %d needed"
                    % (dst.path, dst.size(), dst_start + length - dst.size(), dst_start + length))
    if progress:
        progress(length, length)
    return copied


def _pipelined_copy(src, src_off, dst, dst_off, length, progress=None):
    """Copy *length* bytes between Storages, reading ahead of writing
    (pyqcrypt.pipeline: a reader thread and a writer thread)."""
    def produce(get_buffer):
        pos = 0
        while pos < length:
            buf = get_buffer()
            n = min(CHUNK, length - pos)
            src.preadinto(buf.view[:n], src_off + pos, "data to copy")
            yield (pos, n), buf, None
            pos += n

    def sequence(item, buf):
        pos, n = item
        return [Piece(dst, dst_off + pos, buf.view[:n])]

    with Pipeline(chunk=CHUNK) as pipe:
        pipe.run(produce, sequence, progress and (lambda item: progress(item[0] + item[1])))


def first_difference(a, a_start, b, b_start, length):
    """The offset (relative to the starts) of the first byte where the two
    Storages differ over *length* bytes, or None when they are equal.  The
    two reads overlap (one in a helper thread; both release the GIL; on a
    block device they bypass the page cache, see pyqcrypt.storage)."""
    import concurrent.futures
    buf_a, buf_b = Buffer(CHUNK), Buffer(CHUNK)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pos = 0
        while pos < length:
            n = min(CHUNK, length - pos)
            fut = pool.submit(a.preadinto, buf_a.view[:n], a_start + pos, "data to verify")
            b.preadinto(buf_b.view[:n], b_start + pos, "data to verify")
            fut.result()
            diff = _first_diff(buf_a, buf_b, n)
            if diff is not None:
                return pos + diff
            pos += n
    return None


def _verify(a, a_start, b, b_start, length, what):
    diff = first_difference(a, a_start, b, b_start, length)
    if diff is not None:
        raise Error("verification failed: the %s differs at byte %d (%s offset %d, %s offset %d)"
                    % (what, diff, a.path, a_start + diff, b.path, b_start + diff))


def _verify_bytes(expected, st, offset, what):
    got = st.pread(offset, len(expected), what)
    if got != expected:
        diff = next(i for i in range(len(expected)) if got[i] != expected[i])
        raise Error("verification failed: the %s differs at byte %d (%s offset %d)"
                    % (what, diff, st.path, offset + diff))


def same_file(a, b):
    """True when paths *a* and *b* name the same file or block device."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if stat.S_ISBLK(sa.st_mode) and stat.S_ISBLK(sb.st_mode):
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _short_target(path, have, need, what):
    return Error("%s is too small: it holds %d bytes, %s needs %d, %d bytes (%s) more"
                 % (path, have, what, need, need - have, _human(need - have)))


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def _with_payload_offset(region, sectors):
    """*region* (bytes) with its LUKS header's payload offset set to
    *sectors*; every other byte unchanged."""
    region = bytearray(region)
    hdr = LuksHeader.parse(region[:HEADER_SIZE])
    hdr.payload_offset = sectors
    region[:HEADER_SIZE] = hdr.pack()
    return bytes(region)


# ---------------------------------------------------------------- keep-ciphertext

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
            region = _with_payload_offset(region, len(region) // SECTOR)
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


def luks_to_qcow2(src, dst, src_header=None, data_file=None, data_file_existing=False,
                  passphrase=None, cluster_size=65536, progress=None, verify=False,
                  force_share=False, iter_time_ms=None, key_slot=None, new_passphrase=None):
    """Keep-ciphertext: LUKS volume -> qcow2-luks with a raw data file.  A
    LUKS2 source needs its passphrase (or a list of them, see
    _luks_source).  *new_passphrase* gets a keyslot of its own in the
    result, beside every keyslot kept; it needs the source's passphrase."""
    if new_passphrase is not None and passphrase is None:
        raise Error("a new secret (encrypt.key-secret) becomes a keyslot of the kept header, which "
                    "needs the source's secret too: --image-opts driver=luks,file.filename=%s,"
                    "key-secret=ID" % src)
    source = _luks_source(src, src_header, passphrase, force_share, iter_time_ms, key_slot, dst)
    made = []
    try:
        if new_passphrase is not None:
            first = passphrase[0] if isinstance(passphrase, (list, tuple)) else passphrase
            source.region = _with_new_keyslot(source.region, first, new_passphrase, iter_time_ms,
                                              key_slot if not source.rewritten else None)
            source.rewritten = True
        # QEMU finds a relative data file name from the image's directory:
        # the file goes there, and the name is stored as the user gave it.
        stored = data_file if data_file else os.path.abspath(dst + ".data")
        if data_file_existing:
            if not data_file:
                raise Error("data_file_existing needs data_file=PATH (the payload itself)")
            dpath = _beside(dst, data_file)
            if source.start and same_file(dpath, src):
                raise Error("%s holds the header before its payload; it cannot be the data file "
                            "itself (give the payload device, e.g. a partition or a loop device "
                            "with an offset)" % src)
            with Storage(dpath) as existing:
                have = existing.size()
            if have < source.length:
                raise Error("data file %s holds %d bytes, %d fewer than the %d-byte payload of %s"
                            % (dpath, have, source.length - have, source.length, src))
            if progress:
                progress(source.length, source.length)
        else:
            dpath = _beside(dst, stored)
            new = NewFile(dpath)
            try:
                copy_payload(source.data, source.start, source.length, new.storage, 0, progress)
                new.commit()
            except BaseException:
                new.abort()
                raise
            made.append(dpath)
        create_qcow2(dst, source.length, cluster_size=cluster_size, encrypt_format="luks",
                     fde_region=source.region, data_file=stored, data_file_raw=True,
                     data_file_existing=True)
        made.append(dst)
        if verify:
            _verify_luks_to_qcow2(src, src_header, source, dst)
    except BaseException:
        for p in made:
            _unlink(p)
        raise
    finally:
        source.close()


def _with_new_keyslot(region, passphrase, new_passphrase, iter_time_ms, key_slot=None):
    """*region* (a LUKS1 header area, bytes) with *new_passphrase* added in
    its first free keyslot, the master key found with *passphrase*."""
    from .luks.area import HeaderArea
    from .luks.keyslots import add_key
    mem = MemoryStorage(len(region))
    mem.buf[:] = region
    area = HeaderArea.load(Region(mem, 0, len(region)))
    _, mk = unlock(area, passphrase, key_slot)
    with mk:
        add_key(area, mk, new_passphrase, iter_time_ms=iter_time_ms, calibration="qemu")
    return bytes(mem.buf)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
        _verify_bytes(expected, st, off, "LUKS header area")
        with Storage(data_file_path(dst, h)) as data:
            _verify(source.data, source.start, data, 0, source.length, "payload")


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


def qcow2_to_luks(src, dst, detached_header=False, progress=None, existing=False, verify=False,
                  passphrase=None, key_slot=None, force_share=False):
    """Keep-ciphertext: qcow2-luks with a raw data file -> LUKS1.  With
    *detached_header*, *dst* receives only the header, and the data file
    itself is the payload.  With *existing*, *dst* is an existing file or
    block device written in place (header last); otherwise a new file.

    Zero and unallocated clusters read as zeros in the image but hold plain
    bytes in its data file: with *passphrase* they are written as encrypted
    zeros (only those ranges are encrypted); without it, refused, naming
    the ranges."""
    region, size, dpath = _qcow2_luks_source(src, force_share)
    runs = _ZeroRuns(src, dpath)
    cipher = _zero_runs_cipher(src, runs, detached_header, passphrase, key_slot)
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
            if verify:
                try:
                    _verify_qcow2_to_luks(dst, region, data, start, avail,
                                          runs if cipher is not None else (), cipher,
                                          detached_header)
                except Error:
                    if not existing:
                        _unlink(dst)
                    raise
    finally:
        if cipher is not None:
            cipher.close()
    return dpath


def qcow2_to_luks2(src, dst, detached_header, passphrase, new_passphrase=None, key_slot=None,
                   request=None, progress=None, verify=False, force_share=False):
    """Keep-ciphertext: qcow2-luks with a raw data file -> LUKS2 with
    512-byte sectors, around the same volume key and UUID.  With
    *detached_header*, *dst* is a new LUKS2 header whose data segment is
    the data file itself, in place (nothing copied); otherwise a new
    volume (header, then the data file's bytes).  Needs the image's
    passphrase: a LUKS2 keyslot is made for *new_passphrase* (default the
    same one)."""
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
    request = request or Luks2Request()
    try:
        request.spec, request.master_key = area.header.spec, mk
        request.uuid = request.uuid or area.header.uuid
        if request.sector_size not in (0, SECTOR):
            raise Error("the qcow2-luks data is encrypted in 512-byte sectors; a LUKS2 header "
                        "over the same ciphertext must say sector-size=512, not %d"
                        % request.sector_size)
        request.sector_size = SECTOR
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
                if verify:
                    _verify_luks2_key(out.tmp, dpath if detached_header else None, mk,
                                      new_passphrase or passphrase)
                out.commit()
            except BaseException:
                out.abort()
                raise
    finally:
        mk.wipe()
    return dpath if detached_header else None


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
        region = _with_payload_offset(region, 0)      # the whole data file is payload
        return region, 0, len(region)
    payload = LuksHeader.parse(region[:HEADER_SIZE], path=src).payload_offset
    if payload * SECTOR < len(region):
        payload = len(region) // SECTOR
        region = _with_payload_offset(region, payload)
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
        _verify_bytes(region, st, 0, "LUKS header area")
        if detached_header:
            return
        for a, b in _complement(runs, avail):
            _verify(data, a, st, start + a, b - a, "payload")
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
            raise _short_target(dst, have, need, "the LUKS %s" % (
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


# ---------------------------------------------------------------- re-encrypting

def _allocated(img, offset, length):
    """False only when [offset, offset+length) is known to be a hole."""
    check = getattr(img, "is_allocated", None)
    return True if check is None else check(offset, length)


ZERO_GRAIN = 64 << 10


def _nonzero_runs(buf, n, grain):
    """The (start, end) runs of the first *n* bytes of the pipeline Buffer
    *buf* that are not all-zero grains (one memcmp per grain)."""
    runs = []
    start = None
    for g in range(0, n, grain):
        if buf.is_zero(g, min(g + grain, n)):
            if start is not None:
                runs.append((start, g))
                start = None
        elif start is None:
            start = g
    if start is not None:
        runs.append((start, n))
    return runs


def _read(img, offset, view, jobs):
    """Read into *view* (a reused buffer); an image that can leaves its
    decryption to the pipeline, appended to *jobs*."""
    readinto = getattr(img, "readinto", None)
    if readinto is None:
        view[:] = img.read(offset, len(view))
    else:
        readinto(offset, view, jobs)


def copy_image(src_img, dst_img, progress=None, sparse=True):
    """Copy every byte of *src_img* into *dst_img* in CHUNK pieces through
    the conversion pipeline (pyqcrypt.pipeline: reading, decrypting,
    encrypting and writing overlap, on every core, in one CHUNK buffer
    per worker).  When *sparse*, holes are skipped and all-zero grains (64 KiB,
    or a destination cluster) are not written, so they stay unallocated.
    The caller flushes *dst_img* afterwards."""
    size = src_img.size
    grain = max(ZERO_GRAIN, getattr(dst_img, "cs", 0))
    plan = getattr(dst_img, "plan_write", None)
    wants_flush = getattr(dst_img, "wants_flush", None)

    def produce(get_buffer):
        pos = 0
        while pos < size:
            n = min(CHUNK, size - pos)
            if sparse and not _allocated(src_img, pos, n):
                yield (pos, n), None, None
            else:
                buf = get_buffer()
                jobs = []
                _read(src_img, pos, buf.view[:n], jobs)
                yield (pos, n), buf, jobs
            pos += n

    def sequence(item, buf):
        pos, n = item
        if wants_flush is not None and wants_flush():
            pipe.barrier()              # the metadata after the data it names
            dst_img.flush()
        if buf is None:
            return None
        view = buf.view[:n]
        pieces = []
        for a, b in (_nonzero_runs(buf, n, grain) if sparse else [(0, n)]):
            planned = plan(pos + a, view[a:b]) if plan is not None else None
            if planned is not None:
                pieces.extend(planned)
                continue
            # A write the pipeline cannot plan (a partial cluster, ...): it
            # may flush metadata, so everything mapped before goes first.
            pipe.barrier()
            write_pieces(pieces)
            pieces = []
            dst_img.write(pos + a, view[a:b])
        return pieces

    with Pipeline(chunk=CHUNK) as pipe:
        pipe.run(produce, sequence, progress and (lambda item: progress(sum(item), size)))
    if progress and size == 0:
        progress(0, 0)


def _check_target(src, dst, src_header, dst_format, existing_target, keep_ciphertext, dst_header):
    """pyqcrypt's overwrite rule: a destination is always created new,
    never replaced; -n (*existing_target*) writes into an existing raw or
    LUKS target instead, which must not be the source itself."""
    if keep_ciphertext and dst_format == "luks" and dst_header is not None \
            and os.path.abspath(dst) != os.path.abspath(dst_header):
        raise Error("--keep-ciphertext with a detached header writes only the header (%s): its "
                    "payload is the qcow2 image's data file, so give no other destination (%s)"
                    % (dst_header, dst))
    if not existing_target:
        if os.path.lexists(dst):
            what = "is a block device" if _is_block(dst) else "already exists"
            raise Error("%s %s: pyqcrypt never replaces an existing file or device; remove it, "
                        "or add -n to write into it (with -O raw or -O luks)" % (dst, what))
        return
    if dst_format == "luks2":
        raise Error("-n -O luks2 is not supported: format the target first (pyqcrypt format "
                    "--type luks2 ...), then write through its header with -n --target-image-opts "
                    "driver=luks,file.filename=...,key-secret=ID")
    if dst_format not in ("raw", "luks"):
        raise Error("-n writes into an existing raw or LUKS target; a qcow2 destination is always "
                    "created new (drop -n)")
    if not os.path.exists(dst):
        raise Error("%s does not exist; -n writes only into an existing file or device (drop -n "
                    "to create it)" % dst)
    check_apart([dst, dst_header], source_files(src, src_header))


def source_files(src, src_header=None):
    """Every file or device a conversion reads from *src*: the image, its
    detached header, and down a qcow2 backing chain each layer's data file
    and backing file (as QEMU resolves their names)."""
    found = [p for p in (src, src_header) if p is not None]
    path = src
    for _ in range(images.MAX_CHAIN_DEPTH):
        if not is_qcow2(path):
            break
        try:
            with Storage(path) as st:
                h = read_header(st)
            if h.has_data_file:
                found.append(data_file_path(path, h))
            if not h.backing_file:
                break
            path = images.backing_path(path, h.backing_file)
        except Error:
            break                   # opening the source will say what is wrong
        found.append(path)
    return found


def check_apart(targets, sources):
    """Refuse when a write to one of *targets* could change one of *sources*
    however each is reached: the same file, a link to it, a loop device over
    it (or a partition or device-mapper volume on such a device)."""
    for t in targets:
        if t is None:
            continue
        for other in sources:
            if other is None:
                continue
            if same_file(t, other):
                raise Error("%s is the source %s itself; convert into another file or device"
                            % (t, other))
            if overlapping(t, other):
                raise Error("%s shares storage with the source's %s (a loop device, partition "
                            "or device-mapper volume over it, or the other way round); convert "
                            "into another file or device" % (t, other))


def _is_block(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _reencrypt_into_luks(src_img, dst, dst_header, passphrase, spec, hash_name, iter_time_ms,
                         iterations, allow_insecure, progress):
    """Re-encrypting conversion into an existing file or block device
    (``-n -O luks``): the data is written under the new master key first,
    the header (built in memory) last, so an interrupted run never leaves
    a volume that opens."""
    from .crypto import policy
    from .luks.volume import LuksPayload
    spec = spec if isinstance(spec, CipherSpec) else CipherSpec.parse(spec or "aes-xts-plain64")
    spec.check()
    size = src_img.size
    policy.enforce(spec, size, allow_insecure)
    layout = plan_layout(spec.key_bytes, detached=dst_header is not None)
    start = 0 if dst_header is not None else layout.area_bytes
    need = start + (size + SECTOR - 1) // SECTOR * SECTOR
    header_file = None
    with Storage(dst, writable=True) as target:
        lock_image(target, mode="exclusive")
        have = target.size()
        if have < need:
            raise _short_target(dst, have, need, "a LUKS volume holding the %d-byte source%s"
                                % (size, "" if dst_header else " (header area %d bytes)" % start))
        if dst_header is not None:
            header_file = (Storage(dst_header, writable=True) if os.path.exists(dst_header)
                           else NewFile(dst_header))
            if isinstance(header_file, Storage):
                lock_image(header_file, mode="exclusive")
        try:
            mem = MemoryStorage(layout.area_bytes)
            hdr, mk = format_region(Region(mem, 0, layout.area_bytes), spec, passphrase,
                                    hash_name or "sha256", layout, "cryptsetup", iter_time_ms,
                                    iterations, calibration="qemu")
            try:
                if dst_header is None:
                    zero_fill(target.pwrite, 0, 4096)       # the old header goes first
                    target.sync()
                with LuksPayload.luks1(target, hdr, mk, writable=True) as payload:
                    copy_image(src_img, payload, progress, sparse=False)
            finally:
                mk.wipe()
            target.sync()
            if header_file is None:
                target.pwrite(0, mem.buf)
                target.sync()
            elif isinstance(header_file, NewFile):
                header_file.storage.pwrite(0, mem.buf)
                header_file.commit()
            else:
                header_file.pwrite(0, mem.buf)
                header_file.sync()
        except BaseException:
            if isinstance(header_file, NewFile):
                header_file.abort()
            raise
        finally:
            if isinstance(header_file, Storage):
                header_file.close()


def _reencrypt_into_raw(src_img, dst, progress):
    """Plain bytes into an existing file or device (``-n -O raw``): every
    byte is written, zeros included, as the target's old bytes must go."""
    with images.RawImage(dst, writable=True) as out:        # locked as qemu-io -f raw locks
        if out.size < src_img.size:
            raise _short_target(dst, out.size, src_img.size, "the %d-byte source" % src_img.size)
        copy_image(src_img, out, progress, sparse=False)
        out.flush()


def _verify_images(src_img, dst, dst_passphrase, dst_header, dst_format):
    """Re-encrypting --verify: the decrypted bytes of the destination
    against the source's, as qemu-img compare does; both read ahead and
    decrypted on every core (pyqcrypt.pipeline)."""
    with images.open(dst, passphrase=dst_passphrase, header=dst_header,
                     format=dst_format) as dst_img:
        size = src_img.size
        if dst_img.size < size:
            raise Error("verification failed: %s holds %d bytes, the source %d"
                        % (dst, dst_img.size, size))

        def produce(get_buffer):
            for pos in range(0, size, CHUNK):
                n = min(CHUNK, size - pos)
                a = get_buffer()
                b = get_buffer()
                jobs = []
                _read(src_img, pos, a.view[:n], jobs)
                _read(dst_img, pos, b.view[:n], jobs)
                yield (pos, n, b), a, jobs

        def sequence(item, a):
            pos, n, b = item
            diff = _first_diff(a, b, n)
            if diff is not None:
                raise Error("verification failed: guest byte %d differs between the source "
                            "and %s" % (pos + diff, dst))
            return None

        with Pipeline(chunk=CHUNK) as pipe:
            pipe.run(produce, sequence)


def _first_diff(a, b, n):
    """The first index where the first *n* bytes of pipeline Buffers *a*
    and *b* differ, or None (a memcmp when they are equal)."""
    if a.raw.startswith(b.view[:n], a.off, a.off + n):
        return None
    step = 4096
    for i in range(0, n, step):
        e = min(i + step, n)
        if not a.raw.startswith(b.view[i:e], a.off + i, a.off + e):
            return next(j for j in range(i, e) if a.view[j] != b.view[j])
    return None


def convert(src: "StrPath", dst: "StrPath", *, dst_format: str = "qcow2",
            keep_ciphertext: bool = False,
            src_passphrase: "Union[Secret, Sequence[Secret], None]" = None,
            src_header: "Optional[StrPath]" = None, src_format: Optional[str] = None,
            dst_passphrase: "Optional[Secret]" = None, dst_header: "Optional[StrPath]" = None,
            data_file: "Optional[StrPath]" = None, data_file_existing: bool = False,
            cluster_size: int = 65536, spec: "Union[str, CipherSpec, None]" = None,
            iter_time_ms: Optional[int] = None, iterations: Optional[int] = None,
            qcow2_options: Optional[Dict[str, Any]] = None,
            progress: Optional[Callable[[int, int], None]] = None, key_slot: Optional[int] = None,
            allow_insecure: bool = False, existing_target: bool = False, verify: bool = False,
            hash_name: Optional[str] = None, force_share: bool = False,
            src_backing_passphrase: "Union[Secret, Sequence[Optional[Secret]], None]" = None,
            luks2_request: "Optional[Luks2Request]" = None,
            ) -> Optional[str]:
    """Convert *src* into *dst*; see the module docstring.

    *dst* is created new and never replaces anything, unless
    *existing_target* (the CLI's -n): then the existing raw or LUKS file or
    block device *dst* is written in place and must be large enough.
    *verify* re-reads both sides afterwards (ciphertext when keeping it,
    decrypted bytes otherwise) and fails at the first difference.  The
    source is read under QEMU's shared lock unless *force_share* (-U).  A
    source with a backing chain is flattened, as qemu-img convert does;
    *src_backing_passphrase* unlocks its encrypted lower layers (see
    pyqcrypt.open).  *dst_format* "luks2" writes a LUKS2 volume as
    *luks2_request* (pyqcrypt.luks.luks2_format.Luks2Request: cipher,
    sector size, key derivation) says; the default is cryptsetup's."""
    if os.fspath(dst) == "-":
        raise Error("'-' is not a destination: standard output is not a file or block device; "
                    "name a file")
    for path in (src, src_header):
        if path is not None and not os.path.lexists(path):
            raise Error("cannot open %s: No such file or directory" % path)
    _check_target(src, dst, src_header, dst_format, existing_target, keep_ciphertext, dst_header)
    for path in (src, src_header):
        where = mounted_over(path) if path is not None else []
        if where:
            warnings.warn("%s is mounted read-write (at %s): a copy taken while a file system "
                          "writes it can be inconsistent; unmount it, mount it read-only or "
                          "freeze it (fsfreeze) first" % (path, ", ".join(where)), stacklevel=2)
    new_data_file = (qcow2_options or {}).get("data_file")
    if not keep_ciphertext and new_data_file:
        # an existing data file the new image would write into
        check_apart([_beside(dst, new_data_file)], source_files(src, src_header))
    if keep_ciphertext:
        return _keep_ciphertext(src, dst, dst_format, src_header, dst_header, data_file,
                                data_file_existing, src_passphrase, cluster_size, progress,
                                verify, force_share, existing_target, key_slot, iter_time_ms,
                                dst_passphrase, luks2_request)
    if isinstance(src_passphrase, (list, tuple)):
        raise Error("several source passphrases are carried only by --keep-ciphertext from "
                    "LUKS2; a re-encrypting conversion takes one")
    src_img = images.open(src, passphrase=cast("Optional[Secret]", src_passphrase),
                          header=src_header, format=src_format,
                          key_slot=key_slot, force_share=force_share,
                          backing_passphrase=src_backing_passphrase)
    try:
        return _reencrypt(src_img, dst, dst_format, dst_passphrase, dst_header, spec, hash_name,
                          cluster_size, iter_time_ms, iterations, qcow2_options, allow_insecure,
                          progress, existing_target, verify, luks2_request)
    finally:
        src_img.close()


def _keep_ciphertext(src, dst, dst_format, src_header, dst_header, data_file, data_file_existing,
                     passphrase, cluster_size, progress, verify, force_share, existing, key_slot,
                     iter_time_ms=None, dst_passphrase=None, luks2_request=None):
    """The two conversions that move ciphertext without decrypting it."""
    if dst_format == "qcow2" and (src_header is not None or is_luks(src)):
        return luks_to_qcow2(src, dst, src_header, data_file, data_file_existing,
                             passphrase, cluster_size, progress, verify, force_share,
                             iter_time_ms, key_slot, dst_passphrase)
    if dst_format == "luks2" and is_qcow2(src):
        return qcow2_to_luks2(src, dst_header or dst, dst_header is not None, passphrase,
                              dst_passphrase, key_slot, luks2_request, progress, verify,
                              force_share)
    if dst_format == "luks" and is_qcow2(src):
        return qcow2_to_luks(src, dst_header or dst, detached_header=dst_header is not None,
                             progress=progress, existing=existing, verify=verify,
                             passphrase=passphrase, key_slot=key_slot, force_share=force_share)
    raise Error("--keep-ciphertext converts a LUKS volume to qcow2 (-O qcow2) or a qcow2-luks "
                "image with a raw data file to LUKS (-O luks, or -O luks2)")


def _reencrypt(src_img, dst, dst_format, dst_passphrase, dst_header, spec, hash_name,
               cluster_size, iter_time_ms, iterations, qcow2_options, allow_insecure, progress,
               existing_target, verify, luks2_request=None):
    """Decrypt (or read) *src_img* and write it, encrypted anew or plain,
    into a new image or (*existing_target*) an existing one; anything
    created is removed again if a later step fails."""
    made = []
    try:
        if existing_target:
            if dst_format == "luks":
                if dst_passphrase is None:
                    raise Error("a LUKS destination needs a passphrase")
                _reencrypt_into_luks(src_img, dst, dst_header, dst_passphrase, spec, hash_name,
                                     iter_time_ms, iterations, allow_insecure, progress)
            else:
                _reencrypt_into_raw(src_img, dst, progress)
        else:
            made = _reencrypt_new(src_img, dst, dst_format, dst_passphrase, dst_header, spec,
                                  cluster_size, iter_time_ms, iterations, qcow2_options,
                                  allow_insecure, progress, luks2_request)
        if verify:
            _verify_images(src_img, dst, dst_passphrase, dst_header, dst_format)
    except BaseException:
        for p in made:
            _unlink(p)
        raise


def _reencrypt_new(src_img, dst, dst_format, dst_passphrase, dst_header, spec, cluster_size,
                   iter_time_ms, iterations, qcow2_options, allow_insecure, progress,
                   luks2_request=None):
    """Re-encrypting conversion into a new image, built under visible
    temporary names (``NAME.pyqcrypt-PID.tmp``) and moved into place, never
    replacing anything, only once every byte is written and synced: an
    interrupted run never leaves a file under the final name.  Returns the
    files made (the caller removes them if anything after fails)."""
    for name in (dst, dst_header):
        if name is not None:
            warn_leftovers(name)
    stage = {dst: tmp_name(dst)}
    if dst_header is not None:
        stage[dst_header] = tmp_name(dst_header)
    made = []               # files under their final names (a qcow2 data file)
    unit = (luks2_request.sector_size if dst_format == "luks2" and luks2_request else 0) or SECTOR
    if dst_format != "raw" and src_img.size % unit:
        warnings.warn("the source holds %d bytes; the %s destination holds whole %d-byte "
                      "sectors, so it is %d bytes, the last %d of them zeros"
                      % (src_img.size, dst_format, unit, round_up(src_img.size, unit),
                         round_up(src_img.size, unit) - src_img.size), stacklevel=2)
    try:
        sparse = _create_target(src_img.size, dst, stage, made, dst_format, dst_passphrase,
                                dst_header, spec, cluster_size, iter_time_ms, iterations,
                                qcow2_options, allow_insecure, luks2_request)
        with images.open(stage[dst], passphrase=dst_passphrase, writable=True,
                         header=stage.get(dst_header), format=dst_format) as dst_img:
            copy_image(src_img, dst_img, progress, sparse)
            if not sparse and dst_img.size > src_img.size:
                # the rest of the last sector: zeros, not what fresh LUKS sectors decrypt to
                dst_img.write_zeroes(src_img.size, dst_img.size - src_img.size)
            dst_img.flush()
        _publish(stage, dst_header, made)
        return made
    except BaseException:
        for p in made + list(stage.values()):
            _unlink(p)
        raise


def _create_target(size, dst, stage, made, dst_format, dst_passphrase, dst_header, spec,
                   cluster_size, iter_time_ms, iterations, qcow2_options, allow_insecure,
                   luks2_request=None):
    """Create the new destination under its temporary name (*stage*); a
    qcow2 data file made beside it is appended to *made*.  Returns whether
    the copy may leave all-zero ranges unwritten (sparse)."""
    if dst_format == "qcow2":
        opts = dict(qcow2_options or {})
        if dst_passphrase is not None:
            opts.setdefault("encrypt_format", "luks")
        create_qcow2(stage[dst], size, cluster_size=cluster_size, passphrase=dst_passphrase,
                     spec=spec, iter_time_ms=iter_time_ms, iterations=iterations,
                     allow_insecure=allow_insecure, **opts)
        if opts.get("data_file") and not opts.get("data_file_existing"):
            made.append(_beside(dst, opts["data_file"]))
        # A raw data file is mapped whole: under encryption a skipped
        # zero run would hold plain zeros, which decrypt to noise.
        return not (opts.get("data_file_raw") and opts.get("encrypt_format"))
    if dst_format == "luks2":
        if dst_passphrase is None:
            raise Error("a LUKS destination needs a passphrase")
        request = luks2_request or Luks2Request(spec or "aes-xts-plain64")
        create_luks2(stage[dst], size, dst_passphrase, request, header=stage.get(dst_header))
        return False                    # unwritten LUKS sectors would decrypt to noise
    if dst_format == "luks":
        if dst_passphrase is None:
            raise Error("a LUKS destination needs a passphrase")
        images.create(stage[dst], size, "luks", passphrase=dst_passphrase,
                      spec=spec or "aes-xts-plain64", iter_time_ms=iter_time_ms,
                      iterations=iterations, header=stage.get(dst_header),
                      allow_insecure=allow_insecure)
        return False                    # unwritten LUKS sectors would decrypt to noise
    if dst_format == "raw":
        new = NewFile(stage[dst])
        new.storage.truncate(size)
        new.commit()
        return True
    raise Error("unknown output format %r (qcow2, luks, raw)" % (dst_format,))


def _publish(stage, dst_header, made):
    """Sync every staged file, then move each to its final name, the
    header (if detached) first: a payload alone never opens.  Each final
    name is appended to *made* once it exists."""
    for tmp in stage.values():
        with Storage(tmp) as st:
            st.sync()
    for final in sorted(stage, key=lambda f: f != dst_header):
        try:
            rename_noreplace(stage[final], final)
        except FileExistsError:
            raise Error("%s appeared while pyqcrypt was converting; it was left alone"
                        % final) from None
        made.append(final)
        fsync_dir(final)


def _beside(image, name):
    """A file name stored in *image* as qemu resolves it: relative to the
    image's directory."""
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(os.path.abspath(image)),
                                                         name)
