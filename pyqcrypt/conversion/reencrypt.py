# SPDX-License-Identifier: LGPL-2.1-or-later
"""Re-encrypting conversion: read (and decrypt) the source image and write
it into a new image staged under temporary names and published only when
complete, or into an existing raw or LUKS target (-n), data first and
header last.
"""

import os
import warnings

from .. import image as images
from ..crypto import CipherSpec
from ..errors import Error
from ..locks import lock_image
from ..luks.format import format_region, plan_layout
from ..luks.header import SECTOR
from ..luks.luks2_format import Luks2Request, create_luks2
from ..qcow2.create import create_qcow2
from ..storage import (MemoryStorage, NewFile, Publication, Region, Storage, unlink_quietly,
                       warn_leftovers, zero_fill)
from ..units import round_up
from .compare import verify_images
from .copying import copy_image
from .targets import beside_image, too_small


def _reencrypt_into_luks(src_img, req):
    """Re-encrypting conversion into an existing file or block device
    (``-n -O luks``): the data is written under the new master key first,
    the header (built in memory) last, so an interrupted run never leaves
    a volume that opens."""
    dst, dst_header, passphrase, spec = req.dst, req.dst_header, req.dst_passphrase, req.spec
    if passphrase is None:
        raise Error("a LUKS destination needs a passphrase")
    from ..crypto import policy
    from ..luks.volume import LuksPayload
    spec = spec if isinstance(spec, CipherSpec) else CipherSpec.parse(spec or "aes-xts-plain64")
    spec.check()
    size = src_img.size
    policy.enforce(spec, size, req.allow_insecure)
    layout = plan_layout(spec.key_bytes, detached=dst_header is not None)
    start = 0 if dst_header is not None else layout.area_bytes
    need = start + (size + SECTOR - 1) // SECTOR * SECTOR
    header_file = None
    with Storage(dst, writable=True) as target:
        lock_image(target, mode="exclusive")
        have = target.size()
        if have < need:
            raise too_small(dst, have, need, "a LUKS volume holding the %d-byte source%s"
                                % (size, "" if dst_header else " (header area %d bytes)" % start))
        if dst_header is not None:
            header_file = (Storage(dst_header, writable=True) if os.path.exists(dst_header)
                           else NewFile(dst_header))
            if isinstance(header_file, Storage):
                lock_image(header_file, mode="exclusive")
        try:
            mem = MemoryStorage(layout.area_bytes)
            hdr, mk = format_region(Region(mem, 0, layout.area_bytes), spec, passphrase,
                                    req.hash_name or "sha256", layout, "cryptsetup",
                                    req.iter_time_ms, req.iterations, calibration="qemu")
            try:
                if dst_header is None:
                    zero_fill(target.pwrite, 0, 4096)       # the old header goes first
                    target.sync()
                with LuksPayload.luks1(target, hdr, mk, writable=True) as payload:
                    copy_image(src_img, payload, req.progress, sparse=False)
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
            raise too_small(dst, out.size, src_img.size, "the %d-byte source" % src_img.size)
        copy_image(src_img, out, progress, sparse=False)
        out.flush()


def reencrypting(src_img, req):
    """Decrypt (or read) *src_img* and write it, encrypted anew or plain, as
    ConvertRequest *req* asks: into a new image or (*existing_target*) an
    existing one; anything created is removed again if a later step fails."""
    made = []
    try:
        if req.existing_target:
            if req.dst_format == "luks":
                _reencrypt_into_luks(src_img, req)
            else:
                _reencrypt_into_raw(src_img, req.dst, req.progress)
        else:
            made = _reencrypt_new(src_img, req)
        if req.verify:
            verify_images(src_img, req.dst, req.dst_passphrase, req.dst_header, req.dst_format)
    except BaseException:
        for p in made:
            unlink_quietly(p)
        raise


def _reencrypt_new(src_img, req):
    """Re-encrypting conversion into a new image, built under visible
    temporary names (``NAME.pyqcrypt-PID.tmp``) and moved into place, never
    replacing anything, only once every byte is written and synced: an
    interrupted run never leaves a file under the final name.  Returns the
    files made (the caller removes them if anything after fails)."""
    dst, dst_header, dst_format = req.dst, req.dst_header, req.dst_format
    for name in (dst, dst_header):
        if name is not None:
            warn_leftovers(name)
    # The detached header goes into place before its payload.
    publication = Publication(appeared="%s appeared while pyqcrypt was converting; it was left alone")
    stage = {dst: publication.stage(dst).tmp}
    if dst_header is not None:
        stage[dst_header] = publication.stage(dst_header, first=True).tmp
    made = []               # files under their final names (a qcow2 data file)
    luks2_request = req.luks2_request
    unit = (luks2_request.sector_size if dst_format == "luks2" and luks2_request else 0) or SECTOR
    if dst_format != "raw" and src_img.size % unit:
        warnings.warn("the source holds %d bytes; the %s destination holds whole %d-byte "
                      "sectors, so it is %d bytes, the last %d of them zeros"
                      % (src_img.size, dst_format, unit, round_up(src_img.size, unit),
                         round_up(src_img.size, unit) - src_img.size), stacklevel=2)
    try:
        with publication:
            sparse = _create_target(src_img.size, stage, made, req)
            with images.open_image(stage[dst], passphrase=req.dst_passphrase, writable=True,
                             header=stage.get(dst_header), format=dst_format) as dst_img:
                copy_image(src_img, dst_img, req.progress, sparse)
                if not sparse and dst_img.size > src_img.size:
                    # the rest of the last sector: zeros, not what fresh LUKS sectors decrypt to
                    dst_img.write_zeroes(src_img.size, dst_img.size - src_img.size)
                dst_img.flush()
            publication.commit()
    except BaseException:
        for p in made:
            unlink_quietly(p)
        raise
    return made + publication.published()


def _create_target(size, stage, made, req):
    """Create the new destination of *req* under its temporary name
    (*stage*); a qcow2 data file made beside it is appended to *made*.
    Returns whether the copy may leave all-zero ranges unwritten (sparse)."""
    dst, dst_format, dst_passphrase, spec = req.dst, req.dst_format, req.dst_passphrase, req.spec
    if dst_format == "qcow2":
        opts = dict(req.qcow2_options or {})
        if dst_passphrase is not None:
            opts.setdefault("encrypt_format", "luks")
        create_qcow2(stage[dst], size, cluster_size=req.cluster_size, passphrase=dst_passphrase,
                     spec=spec, iter_time_ms=req.iter_time_ms, iterations=req.iterations,
                     allow_insecure=req.allow_insecure, **opts)
        if opts.get("data_file") and not opts.get("data_file_existing"):
            made.append(beside_image(dst, opts["data_file"]))
        # A raw data file is mapped whole: under encryption a skipped
        # zero run would hold plain zeros, which decrypt to noise.
        return not (opts.get("data_file_raw") and opts.get("encrypt_format"))
    if dst_format == "luks2":
        if dst_passphrase is None:
            raise Error("a LUKS destination needs a passphrase")
        request = req.luks2_request or Luks2Request(spec or "aes-xts-plain64")
        create_luks2(stage[dst], size, dst_passphrase, request, header=stage.get(req.dst_header))
        return False                    # unwritten LUKS sectors would decrypt to noise
    if dst_format == "luks":
        if dst_passphrase is None:
            raise Error("a LUKS destination needs a passphrase")
        images.create(stage[dst], size, "luks", passphrase=dst_passphrase,
                      spec=spec or "aes-xts-plain64", iter_time_ms=req.iter_time_ms,
                      iterations=req.iterations, header=stage.get(req.dst_header),
                      allow_insecure=req.allow_insecure)
        return False                    # unwritten LUKS sectors would decrypt to noise
    if dst_format == "raw":
        new = NewFile(stage[dst])
        new.storage.truncate(size)
        new.commit()
        return True
    raise Error("unknown output format %r (qcow2, luks, raw)" % (dst_format,))

