# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 metadata as pyqcrypt reads it itself: the two binary headers, the
JSON area behind them, and the one data segment pyqcrypt implements.

libcryptsetup loads and checks LUKS2 headers and opens their keyslots; it
has no public call that lists segments, their IV tweak or their flags, and
those decide how the payload is encrypted.  So this module reads the same
bytes as untrusted input (bounded sizes, checksums, strict field types) and
``data_segment`` returns the geometry of the payload, or refuses in words
every volume whose payload is not one plain encrypted segment: a
re-encryption (or encryption, decryption) in progress, any mandatory
requirement, authenticated encryption, linear or hardware segments,
unknown segment types and flags.
"""

import hashlib
import json
import re
import struct
from typing import Dict, List

from ..errors import Error, FormatError

MAGIC_PRIMARY = b"LUKS\xba\xbe"
MAGIC_SECONDARY = b"SKUL\xba\xbe"
BINARY_SIZE = 4096
# The sizes LUKS2 allows for one header copy (binary header + JSON area).
HEADER_SIZES = tuple(16384 << i for i in range(9))          # 16 KiB .. 4 MiB
SECTOR_SIZES = (512, 1024, 2048, 4096)
_NUMBER = re.compile(r"[0-9]{1,19}\Z")
_ID = re.compile(r"[0-9]{1,3}\Z")          # keyslot, segment ids: ASCII digits only
_CSUM_OFFSET, _CSUM_LEN = 448, 64
_HASHES = {"sha1": 20, "sha256": 32, "sha512": 64}


def _u64(text, field, path):
    """A LUKS2 JSON number stored as a decimal string (offsets, sizes)."""
    if not isinstance(text, str) or not _NUMBER.match(text) or int(text) >= 1 << 63:
        raise FormatError("%r is not a byte count" % (text,), field=field, path=path)
    return int(text)


def _cstr(raw):
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


class Segment:
    """One entry of the JSON ``segments`` object."""

    def __init__(self, key, obj, path):
        field = "segments.%s" % key
        if not isinstance(obj, dict):
            raise FormatError("is not an object", field=field, path=path)
        self.key = key
        self.type = obj.get("type")
        if not isinstance(self.type, str):
            raise FormatError("has no type", field=field, path=path)
        self.flags = obj.get("flags", [])
        if not isinstance(self.flags, list) or not all(isinstance(f, str) for f in self.flags):
            raise FormatError("flags are not a list of names", field=field, path=path)
        self.offset = _u64(obj.get("offset"), field + ".offset", path)
        size = obj.get("size")
        self.size = None if size == "dynamic" else _u64(size, field + ".size", path)
        self.integrity = obj.get("integrity")
        self.encryption = obj.get("encryption")
        self.iv_tweak = 0
        self.sector_size = 512
        if self.type == "crypt":
            self.iv_tweak = _u64(obj.get("iv_tweak", "0"), field + ".iv_tweak", path)
            self.sector_size = obj.get("sector_size")
            if self.sector_size not in SECTOR_SIZES or isinstance(self.sector_size, bool):
                raise FormatError("sector_size %r is not one of %s" % (self.sector_size, SECTOR_SIZES),
                                  field=field, path=path)
            if not isinstance(self.encryption, str) or not self.encryption:
                raise FormatError("has no encryption", field=field, path=path)

    def __repr__(self):
        return "<LUKS2 segment %s: %s at %d>" % (self.key, self.type, self.offset)


class Keyslot:
    """One entry of the JSON ``keyslots`` object (what dump and conversion
    report: its type, key size, KDF and priority)."""

    def __init__(self, key, obj):
        obj = obj if isinstance(obj, dict) else {}
        self.key = key
        self.type = obj.get("type")
        self.key_size = obj.get("key_size")
        kdf = obj.get("kdf")
        self.kdf = kdf.get("type") if isinstance(kdf, dict) else None
        self.priority = obj.get("priority", 1)


class Luks2Metadata:
    """The newest valid copy of a LUKS2 header's metadata."""

    keyslots: Dict[int, Keyslot]
    requirements: List[str]

    def __init__(self, binary, doc, path):
        self.path = path
        self.seqid = struct.unpack(">Q", binary[16:24])[0]
        self.label = _cstr(binary[24:72])
        self.uuid = _cstr(binary[168:208])
        self.subsystem = _cstr(binary[208:256])
        self.hdr_size = struct.unpack(">Q", binary[8:16])[0]
        for name in ("keyslots", "segments", "digests", "config"):
            if not isinstance(doc.get(name), dict):
                raise FormatError("the JSON area has no %r object" % name, path=path)
        for name in ("segments", "keyslots"):
            for k in doc[name]:
                if not _ID.match(k):
                    raise FormatError("%s id %r is not a small number" % (name, k[:20]), path=path)
        self.segments = [Segment(k, v, path) for k, v in sorted(
            doc["segments"].items(), key=lambda kv: int(kv[0]))]
        self.keyslots = {}
        for k, v in doc["keyslots"].items():
            if int(k) >= 32:
                raise FormatError("keyslot id %r is not a number below 32" % k, path=path)
            self.keyslots[int(k)] = Keyslot(k, v)
        self.digests = doc["digests"]
        config = doc["config"]
        self.config_flags = config.get("flags", [])
        req = config.get("requirements", {})
        mandatory = req.get("mandatory", []) if isinstance(req, dict) else ["<malformed>"]
        if not isinstance(mandatory, list):
            mandatory = ["<malformed>"]
        self.requirements = [str(m) for m in mandatory]
        self.keyslots_size = _u64(config.get("keyslots_size", "0"), "config.keyslots_size", path)
        self.tokens = doc.get("tokens", {})

    # ------------------------------------------------------------ refusals

    def data_segment(self) -> Segment:
        """The payload's one plain encrypted segment, or an Error that says
        what the volume is and what the user can do about it."""
        path = self.path
        reenc = [r for r in self.requirements if "reencrypt" in r]
        if reenc or any(k.type == "reencrypt" for k in self.keyslots.values()):
            raise Error("%s is in the middle of a cryptsetup reencrypt (requirement %s): part of "
                        "its data is under another key or not encrypted at all. Finish it first "
                        "(cryptsetup reencrypt --resume-only %s, with --force-offline-reencrypt "
                        "when it is not open), then convert"
                        % (path, ", ".join(reenc) or "reencrypt keyslot", path))
        if self.requirements:
            raise Error("%s has LUKS2 requirements pyqcrypt does not implement: %s (cryptsetup "
                        "luksDump shows them); nothing was read or written"
                        % (path, ", ".join(self.requirements)))
        if len(self.segments) != 1:
            raise Error("%s has %d data segments (%s); pyqcrypt reads volumes with exactly one "
                        "encrypted segment" % (path, len(self.segments), ", ".join(
                            "%s: %s" % (s.key, s.type) for s in self.segments) or "none"))
        seg = self.segments[0]
        if seg.type == "linear":
            raise Error("%s: its data segment is plaintext (linear), as when cryptsetup's "
                        "encryption or decryption was stopped; finish it with cryptsetup first" % path)
        if seg.type.startswith("hw-opal"):
            raise Error("%s uses OPAL self-encrypting-drive hardware encryption, which pyqcrypt "
                        "cannot read in software" % path)
        if seg.type != "crypt":
            raise Error("%s: its data segment has type %r, which pyqcrypt does not know"
                        % (path, seg.type))
        if seg.flags:
            raise Error("%s: its data segment carries flags %s, which pyqcrypt does not implement"
                        % (path, ", ".join(seg.flags)))
        if seg.integrity is not None:
            raise Error("%s uses authenticated encryption (dm-integrity, %s): its sectors carry "
                        "tags that pyqcrypt cannot check or write"
                        % (path, _integrity_name(seg.integrity)))
        if seg.key != "0":
            raise Error("%s: its only data segment is numbered %s, not 0" % (path, seg.key))
        if seg.offset % 512:
            raise FormatError("offset %d is not a multiple of 512" % seg.offset,
                              field="segments.0", path=path)
        if seg.size is not None and seg.size % seg.sector_size:
            raise FormatError("size %d is not a multiple of the %d-byte sector"
                              % (seg.size, seg.sector_size), field="segments.0", path=path)
        return seg

    def active_keyslots(self):
        """Keyslot numbers in the JSON, in order."""
        return sorted(self.keyslots)


def _integrity_name(obj):
    return obj.get("type", "?") if isinstance(obj, dict) else "?"


def _copy_at(read, offset, path):
    """(binary header, JSON document) of the copy at *offset*, or None when
    it is not a valid copy (wrong magic, size, checksum or JSON)."""
    binary = read(offset, BINARY_SIZE)
    if len(binary) < BINARY_SIZE:
        return None
    magic = MAGIC_PRIMARY if offset == 0 else MAGIC_SECONDARY
    if binary[:6] != magic or struct.unpack(">H", binary[6:8])[0] != 2:
        return None
    hdr_size, = struct.unpack(">Q", binary[8:16])
    if hdr_size not in HEADER_SIZES:
        return None
    if struct.unpack(">Q", binary[256:264])[0] != offset:
        return None
    alg = _cstr(binary[72:104])
    if alg not in _HASHES:
        return None
    whole = read(offset, hdr_size)
    if len(whole) < hdr_size:
        return None
    zeroed = bytearray(whole)
    zeroed[_CSUM_OFFSET:_CSUM_OFFSET + _CSUM_LEN] = bytes(_CSUM_LEN)
    digest = hashlib.new(alg, bytes(zeroed)).digest()
    if binary[_CSUM_OFFSET:_CSUM_OFFSET + len(digest)] != digest:
        return None
    text = bytes(whole[BINARY_SIZE:]).split(b"\0", 1)[0]
    try:
        doc = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    return binary, doc


def read_metadata(read, path) -> Luks2Metadata:
    """The LUKS2 metadata behind ``read(offset, length) -> bytes`` (a header
    file or the start of a volume): the valid copy with the highest sequence
    id, primary or secondary, as libcryptsetup chooses."""
    copies = []
    primary = _copy_at(read, 0, path)
    if primary:
        copies.append(primary)
        offsets = [struct.unpack(">Q", primary[0][8:16])[0]]
    else:
        offsets = list(HEADER_SIZES)
    for off in offsets:
        second = _copy_at(read, off, path)
        if second:
            copies.append(second)
            break
    if not copies:
        raise FormatError("no valid LUKS2 header copy (bad magic, size, checksum or JSON in both "
                          "the primary and the secondary header)", path=path)
    binary, doc = max(copies, key=lambda c: struct.unpack(">Q", c[0][16:24])[0])
    return Luks2Metadata(binary, doc, path)


def copies_in_sync(read, path) -> bool:
    """True when both header copies are valid and carry the same sequence
    id: the state in which libcryptsetup's load leaves the file alone (it
    rewrites a damaged or older copy from the other whenever it can)."""
    primary = _copy_at(read, 0, path)
    if not primary:
        return False
    second = _copy_at(read, struct.unpack(">Q", primary[0][8:16])[0], path)
    return bool(second) and second[0][16:24] == primary[0][16:24]


def area_size(meta: "Luks2Metadata") -> int:
    """Bytes from the start of the header to the end of its keyslots
    area: both metadata copies, then the keyslots."""
    return 2 * meta.hdr_size + meta.keyslots_size


def segment_length(seg: Segment, device_bytes: int, path) -> int:
    """The payload length in bytes: the fixed size, or the device from the
    segment's offset on, whole sectors only."""
    if seg.size is not None:
        if seg.offset + seg.size > device_bytes:
            raise FormatError("the data segment ends at byte %d but the device holds only %d"
                              % (seg.offset + seg.size, device_bytes), field="segments.0",
                              path=path)
        return seg.size
    length = device_bytes - seg.offset
    if length <= 0:
        raise FormatError("the data segment starts at byte %d but the device holds only %d: "
                          "there is no payload" % (seg.offset, device_bytes), path=path)
    return length - length % seg.sector_size
