# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt.info()``: what an image is, as a typed, read-only object.

The facts are those ``pyqcrypt info --output json`` prints (qemu-img
info's), read from the headers alone: no passphrase is needed and no data
is decrypted.  ``ImageInfo`` gives them names and types; the JSON-shaped
report itself stays available from the command line.
"""

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

StrPath = Union[str, "os.PathLike[str]"]

__all__ = ["ImageInfo", "info"]


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`pyqcrypt.info` found in an image's headers.

    Attributes:
        path: the file described.
        format: "qcow2", "luks" (LUKS1), "luks2" or "raw".
        virtual_size: the size of the disk the image holds, in bytes.
        actual_size: the space the file takes on disk, in bytes.
        encrypted: whether reading the data needs a passphrase.
        encryption: "luks" (a qcow2-luks image or a LUKS1 volume), "luks2",
            "aes" (qcow2's legacy AES, read-only in QEMU) or None.
        cipher: the data cipher in cryptsetup's words, such as
            "aes-xts-plain64"; None when not encrypted with LUKS (or when a
            LUKS2 volume uses a cipher pyqcrypt cannot read).
        uuid: the LUKS header's UUID, or None.
        keyslots: the numbers of the keyslots in use, in ascending order.
        cluster_size: qcow2's cluster size in bytes, None for other formats.
        backing_file: the backing file name as the qcow2 header records it.
        backing_path: where that name points, from the image's directory.
        backing_format: the backing file's format as recorded, if it is.
        data_file: qcow2's external data file name, if it has one.
        snapshots: the names of the qcow2 internal snapshots, oldest first.
        dirty: whether the image is marked as not cleanly closed.
    """

    path: str
    format: str
    virtual_size: int
    actual_size: int
    encrypted: bool
    encryption: Optional[str] = None
    cipher: Optional[str] = None
    uuid: Optional[str] = None
    keyslots: Tuple[int, ...] = ()
    cluster_size: Optional[int] = None
    backing_file: Optional[str] = None
    backing_path: Optional[str] = None
    backing_format: Optional[str] = None
    data_file: Optional[str] = None
    snapshots: Tuple[str, ...] = ()
    dirty: bool = False


def info(path: StrPath, *, format: Optional[str] = None, force_share: bool = False) -> ImageInfo:
    """Describe the image at *path* from its headers (qemu-img info).

    Parameters:
        path: a qcow2 image (plain, LUKS or AES encrypted), a LUKS1 or LUKS2
            volume, or any other file (described as raw).
        format: "qcow2", "luks", "luks2" or "raw" to insist on one (the file
            must then be in it; "raw" describes any file as raw bytes);
            default: what the file's first bytes say.
        force_share: read a qcow2 image without QEMU's shared lock
            (qemu-img -U), e.g. while a QEMU writes it.

    Returns an :class:`ImageInfo`.

    Raises:
        StorageError: the file cannot be opened or read.
        FormatError, Error: a header is damaged, the file is not in
            *format*, or another process holds the image's write lock.

    Example::

        about = pyqcrypt.info("disk.qcow2")
        print(about.format, about.virtual_size, about.cipher, about.keyslots)
    """
    from .info_report import image_info
    report = image_info(os.fspath(path), force_share=force_share, format=format)
    return _from_report(report)


def _from_report(report: Dict[str, Any]) -> ImageInfo:
    """The ImageInfo of one qemu-img-info-shaped dictionary."""
    specific = report.get("format-specific") or {}
    data = specific.get("data") or {}
    encrypt = data.get("encrypt") if specific.get("type") == "qcow2" else data
    encryption = None
    if report["format"] in ("luks", "luks2"):
        encryption = report["format"]
    elif encrypt:
        encryption = encrypt.get("format")
    return ImageInfo(
        path=report["filename"], format=report["format"], virtual_size=report["virtual-size"],
        actual_size=report["actual-size"], encrypted=bool(report.get("encrypted")),
        encryption=encryption, cipher=_cipher(encrypt or {}),
        uuid=(encrypt or {}).get("uuid"), keyslots=_keyslots(encrypt or {}),
        cluster_size=report.get("cluster-size"), backing_file=report.get("backing-filename"),
        backing_path=report.get("full-backing-filename"),
        backing_format=report.get("backing-filename-format"), data_file=data.get("data-file"),
        snapshots=tuple(sn["name"] for sn in report.get("snapshots", ())),
        dirty=bool(report.get("dirty-flag")))


def _cipher(encrypt: Dict[str, Any]) -> Optional[str]:
    """cryptsetup's cipher spec from QEMU's names: "aes-256", "xts",
    "plain64" give "aes-xts-plain64"."""
    alg, mode = encrypt.get("cipher-alg"), encrypt.get("cipher-mode")
    if not alg or not mode:
        return None
    name, _, bits = alg.rpartition("-")
    if not (name and bits.isdigit()):
        name = alg
    spec = "%s-%s" % (name, mode)
    ivgen = encrypt.get("ivgen-alg")
    if mode != "ecb" and ivgen not in (None, "none"):
        spec += "-" + ivgen
        if ivgen == "essiv" and encrypt.get("ivgen-hash-alg"):
            spec += ":" + encrypt["ivgen-hash-alg"]
    return spec


def _keyslots(encrypt: Dict[str, Any]) -> Tuple[int, ...]:
    """The active keyslot numbers: LUKS2 slots carry theirs, LUKS1 ones
    are numbered by position."""
    found = []
    for n, slot in enumerate(encrypt.get("slots", ())):
        if slot.get("active"):
            found.append(slot.get("keyslot", n))
    return tuple(sorted(found))
