# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 6: conversion between image formats (``pyqcrypt.convert``).

Keeping the ciphertext (no decryption; from_luks.py and to_luks.py):

* LUKS1 volume (attached header, or detached) -> qcow2-luks whose data lives
  in a raw external data file.  The LUKS header area is stored verbatim as
  the image's FDE clusters, so every keyslot and the UUID survive, and the
  payload becomes the data file (copied sparse-aware with copy_file_range,
  or adopted in place).  This works because with a raw data file the host
  offset equals the guest offset, which is the payload-relative sector raw
  LUKS uses for its IVs.
* qcow2-luks with a raw external data file -> LUKS1 (one file, or a
  detached header over the data file) or LUKS2 (with the passphrase).
* A LUKS2 source needs its passphrase: libcryptsetup hands over the volume
  key, and a LUKS1 header is written around the same key and cipher.

Re-encrypting (reencrypt.py): any readable image (raw, LUKS1, LUKS2, qcow2
plain/LUKS/AES, a backing chain) to raw, LUKS1, LUKS2 or qcow2, in constant
memory, skipping holes and zero runs so sparse sources stay sparse.

The rest of the package: copying.py moves bytes (exact copies and the
image pipeline), compare.py is --verify, targets.py decides what may be
written where.  Every entry point takes one ConvertRequest (request.py).
Nothing is left half-made: new files are built under temporary names, and a
failed conversion removes what it created.
"""

import os
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Union, cast

from .. import image as images
from ..errors import Error
from ..luks.area import is_luks
from ..overlap import mounted_over
from ..qcow2.open import is_qcow2
from .compare import first_difference
from .copying import copy_image, copy_payload
from .from_luks import luks_to_qcow2
from .reencrypt import reencrypting
from .request import ConvertRequest
from .targets import beside_image, check_apart, check_target, source_files
from .to_luks import qcow2_to_luks, qcow2_to_luks2

if TYPE_CHECKING:
    from ..crypto import CipherSpec
    from ..image import Secret, StrPath
    from ..luks.luks2_format import Luks2Request

__all__ = ["ConvertRequest", "convert", "run", "check_apart", "copy_image", "copy_payload",
           "first_difference", "source_files"]


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
    """Convert the image *src* into the new image *dst* (qemu-img convert).

    By default the guest data of any image pyqcrypt opens (a backing chain
    flattened) is re-encrypted into *dst_format* ("qcow2", "raw", "luks",
    "luks2"), holes and zero runs skipped.  *keep_ciphertext* moves the
    encrypted bytes as they are between a LUKS1 volume and a qcow2-luks
    image with a raw *data_file* (or qcow2-luks to LUKS2): keyslots and UUID
    survive.  *dst* is built under a temporary name and never replaces a
    file (unless *existing_target*: write into the existing raw/LUKS file or
    device *dst*, qemu-img's -n); a failure removes what was made.

    Secrets are bytes: *src_passphrase* (a list only with keep_ciphertext
    from LUKS2: each is carried into the new header),
    *src_backing_passphrase* (as pyqcrypt.open's backing_passphrase),
    *dst_passphrase*.  *src_header*/*dst_header*: detached LUKS headers;
    *src_format* skips the probe; *key_slot* is the only keyslot tried.
    The new image: *cluster_size*, *qcow2_options* (pyqcrypt.create's),
    *data_file* (*data_file_existing*: adopt it, already holding the
    payload), *spec* (cipher), *hash_name*, *iter_time_ms*/*iterations*
    (PBKDF2 cost), *allow_insecure*, *luks2_request* (a Luks2Request).
    *progress(done, total)* is called while copying; *verify* re-reads
    both sides and fails at the first difference; *force_share* reads
    *src* without QEMU's shared lock (-U).

    Returns the data file a keep-ciphertext conversion made or used, else
    None.  Raises WrongPassphrase (no keyslot of *src* opens), FormatError
    or UnsupportedCipher (*src* damaged or unreadable), StorageError (I/O,
    locks), Error (a refused conversion, said in one line).

    Example::

        pyqcrypt.convert("disk.qcow2", "disk.luks", dst_format="luks",
                         src_passphrase=b"old", dst_passphrase=b"new")
    """
    return run(ConvertRequest(
        src, dst, dst_format=dst_format, keep_ciphertext=keep_ciphertext,
        src_passphrase=src_passphrase, src_header=src_header, src_format=src_format,
        dst_passphrase=dst_passphrase, dst_header=dst_header, data_file=data_file,
        data_file_existing=data_file_existing, cluster_size=cluster_size, spec=spec,
        iter_time_ms=iter_time_ms, iterations=iterations, qcow2_options=qcow2_options,
        progress=progress, key_slot=key_slot, allow_insecure=allow_insecure,
        existing_target=existing_target, verify=verify, hash_name=hash_name,
        force_share=force_share, src_backing_passphrase=src_backing_passphrase,
        luks2_request=luks2_request))


def run(req: ConvertRequest) -> Optional[str]:
    """Carry out one ConvertRequest (what ``convert`` does with its keywords)."""
    src, dst = req.src, req.dst
    if os.fspath(dst) == "-":
        raise Error("'-' is not a destination: standard output is not a file or block device; "
                    "name a file")
    for path in (src, req.src_header):
        if path is not None and not os.path.lexists(path):
            raise Error("cannot open %s: No such file or directory" % path)
    check_target(req)
    for path in (src, req.src_header):
        where = mounted_over(path) if path is not None else []
        if where:
            warnings.warn("%s is mounted read-write (at %s): a copy taken while a file system "
                          "writes it can be inconsistent; unmount it, mount it read-only or "
                          "freeze it (fsfreeze) first" % (path, ", ".join(where)), stacklevel=3)
    new_data_file = (req.qcow2_options or {}).get("data_file")
    if not req.keep_ciphertext and new_data_file:
        # an existing data file the new image would write into
        check_apart([beside_image(dst, new_data_file)], source_files(src, req.src_header))
    if req.keep_ciphertext:
        return _keep_ciphertext(req)
    if isinstance(req.src_passphrase, (list, tuple)):
        raise Error("several source passphrases are carried only by --keep-ciphertext from "
                    "LUKS2; a re-encrypting conversion takes one")
    src_img = images.open_image(src, passphrase=cast("Optional[Secret]", req.src_passphrase),
                          header=req.src_header, format=req.src_format,
                          key_slot=req.key_slot, force_share=req.force_share,
                          backing_passphrase=req.src_backing_passphrase)
    try:
        reencrypting(src_img, req)
        return None
    finally:
        src_img.close()


def _keep_ciphertext(req):
    """The conversions that move ciphertext without decrypting it."""
    if req.dst_format == "qcow2" and (req.src_header is not None or is_luks(req.src)):
        return luks_to_qcow2(req)
    if req.dst_format == "luks2" and is_qcow2(req.src):
        return qcow2_to_luks2(req)
    if req.dst_format == "luks" and is_qcow2(req.src):
        return qcow2_to_luks(req)
    raise Error("--keep-ciphertext converts a LUKS volume to qcow2 (-O qcow2) or a qcow2-luks "
                "image with a raw data file to LUKS (-O luks, or -O luks2)")
