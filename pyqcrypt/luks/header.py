# SPDX-License-Identifier: LGPL-2.1-or-later
"""The LUKS1 partition header: parse, validate and serialize.

The header is 592 bytes: magic, version, cipher name and mode, hash spec,
payload offset, key size, master-key digest (salt, iterations), UUID and
eight 48-byte keyslot descriptors.  All integers are big-endian.  Every
field read from disk is untrusted; ``LuksHeader.parse`` rejects anything
malformed with a ``FormatError`` naming the field and its offset, and never
allocates more than the bounds below allow.
"""

import re
import struct
from typing import TYPE_CHECKING, List

from ..errors import FormatError
from ..crypto.cipherspec import CipherSpec
from ..units import SECTOR, ceil_div, round_up
from .magic import MAGIC

if TYPE_CHECKING:       # checked as the dataclasses they behave as
    from dataclasses import dataclass, field, replace
else:                   # no inspect/ast import at start-up (see _record)
    from .._record import dataclass, field, replace

VERSION = 1
HEADER_SIZE = 592
NUM_SLOTS = 8
DIGEST_SIZE = 20
SALT_SIZE = 32
SLOT_ENABLED = 0x00AC71F3
SLOT_DISABLED = 0x0000DEAD
STRIPES = 4000
MAX_KEY_BYTES = 128                 # 1024-bit master keys at most
MAX_MATERIAL_BYTES = 64 << 20       # per keyslot; far above 128 B x 4000

_FMT = ">6sH32s32s32sII20s32sI40s"
_SLOT_FMT = ">II32sII"
_SLOTS_AT = 208
_SLOT_SIZE = 48
_NAME_RE = re.compile(r"^[A-Za-z0-9_:.+\-]*$")
_UUID_RE = re.compile(r"^[\x21-\x7e]*$")

# (name, offset, size) of the string fields, for error messages.
_STRINGS = (("cipher-name", 8, 32), ("cipher-mode", 40, 32), ("hash-spec", 72, 32),
            ("uuid", 168, 40))


def material_sectors(key_bytes, stripes):
    """512-byte sectors one keyslot's split key occupies."""
    return ceil_div(key_bytes * stripes, SECTOR)


@dataclass
class Keyslot:
    active: bool = False
    iterations: int = 0
    salt: bytes = bytes(SALT_SIZE)
    km_offset: int = 0          # in 512-byte sectors from the header start
    stripes: int = STRIPES

    def area(self, key_bytes):
        """(start, end) of the key material in bytes from the header start."""
        start = self.km_offset * SECTOR
        return start, start + material_sectors(key_bytes, self.stripes) * SECTOR

    def extent(self, key_bytes):
        """(start, end) of the whole keyslot area: the material rounded up
        to 4 KiB, as cryptsetup and QEMU reserve it."""
        start = self.km_offset * SECTOR
        sectors = material_sectors(key_bytes, self.stripes)
        return start, start + round_up(sectors, 8) * SECTOR


@dataclass
class LuksHeader:
    cipher_name: str
    cipher_mode: str
    hash_spec: str
    payload_offset: int         # sectors; 0 for a detached header
    key_bytes: int
    mk_digest: bytes
    mk_digest_salt: bytes
    mk_digest_iter: int
    uuid: str
    slots: List[Keyslot] = field(default_factory=lambda: [Keyslot() for _ in range(NUM_SLOTS)])
    version: int = VERSION

    # ---- parsing -----------------------------------------------------------------
    @classmethod
    def parse(cls, data, region_length=None, path=None):
        """Parse and validate; *region_length* bounds the key material."""
        data = bytes(data[:HEADER_SIZE])
        if len(data) < 6 or data[:6] != MAGIC:
            raise FormatError("not a LUKS header (bad magic)", field="magic", offset=0, path=path)
        if len(data) < HEADER_SIZE:
            raise FormatError("LUKS header truncated (%d of %d bytes)" % (len(data), HEADER_SIZE),
                              field="header", offset=len(data), path=path)
        (magic, version, cname, cmode, hspec, payload, key_bytes, digest, dsalt,
         diter, uuid) = struct.unpack_from(_FMT, data, 0)
        if version != VERSION:
            what = ("a LUKS2 header where only LUKS1 can be (inside a qcow2 image, or for qemu-img "
                    "amend, whose luks driver is LUKS1); open, convert, info, dump and the keyslot "
                    "verbs take LUKS2 volumes"
                    if version == 2 else "unsupported LUKS version %d" % version)
            raise FormatError(what, field="version", offset=6, path=path)
        strings = {}
        for (name, off, size), raw in zip(_STRINGS, (cname, cmode, hspec, uuid)):
            strings[name] = _cstring(raw, name, off, path)
        slots = []
        for i in range(NUM_SLOTS):
            off = _SLOTS_AT + i * _SLOT_SIZE
            active, iters, salt, km, stripes = struct.unpack_from(_SLOT_FMT, data, off)
            if active not in (SLOT_ENABLED, SLOT_DISABLED):
                raise FormatError("keyslot %d state is 0x%08x, neither enabled nor disabled"
                                  % (i, active), field="keyslot %d active" % i, offset=off, path=path)
            slots.append(Keyslot(active == SLOT_ENABLED, iters, salt, km, stripes))
        hdr = cls(strings["cipher-name"], strings["cipher-mode"], strings["hash-spec"], payload,
                  key_bytes, digest, dsalt, diter, strings["uuid"], slots, version)
        hdr.validate(region_length, path)
        return hdr

    def validate(self, region_length=None, path=None):
        """Check every field and the keyslot layout; FormatError if wrong."""
        def bad(msg, fld, off):
            raise FormatError(msg, field=fld, offset=off, path=path)

        for fld, off, val in (("cipher-name", 8, self.cipher_name), ("cipher-mode", 40, self.cipher_mode),
                              ("hash-spec", 72, self.hash_spec)):
            if not val:
                bad("%s is empty" % fld, fld, off)
            if not _NAME_RE.match(val) or len(val) > 31:
                bad("%s %r has invalid characters" % (fld, val), fld, off)
        if not _UUID_RE.match(self.uuid) or len(self.uuid) > 39:
            bad("uuid has invalid characters", "uuid", 168)
        if not 1 <= self.key_bytes <= MAX_KEY_BYTES:
            bad("key size of %d bytes is out of range (1..%d)" % (self.key_bytes, MAX_KEY_BYTES),
                "key-bytes", 108)
        if self.mk_digest_iter < 1:
            bad("master key digest iteration count is zero", "mk-digest-iter", 164)
        areas = []
        for i, slot in enumerate(self.slots):
            base = _SLOTS_AT + i * _SLOT_SIZE
            if slot.active and slot.iterations < 1:
                bad("keyslot %d is enabled with zero iterations" % i, "keyslot %d iterations" % i, base + 4)
            if slot.active or slot.km_offset or slot.stripes:
                if not 1 <= slot.stripes or self.key_bytes * slot.stripes > MAX_MATERIAL_BYTES:
                    bad("keyslot %d has %d stripes" % (i, slot.stripes), "keyslot %d stripes" % i, base + 44)
                start, end = slot.area(self.key_bytes)
                if start < HEADER_SIZE:
                    bad("keyslot %d key material (sector %d) overlaps the header" % (i, slot.km_offset),
                        "keyslot %d key-material-offset" % i, base + 40)
                if self.payload_offset and end > self.payload_offset * SECTOR:
                    bad("keyslot %d key material runs into the payload (ends at sector %d, payload "
                        "at %d)" % (i, end // SECTOR, self.payload_offset),
                        "keyslot %d key-material-offset" % i, base + 40)
                if region_length is not None and end > region_length:
                    bad("keyslot %d key material ends at byte %d, past the %d-byte header area"
                        % (i, end, region_length), "keyslot %d key-material-offset" % i, base + 40)
                areas.append((start, end, i))
        areas.sort()
        for (s1, e1, i1), (s2, e2, i2) in zip(areas, areas[1:]):
            if s2 < e1:
                bad("key material of keyslots %d and %d overlaps" % (i1, i2),
                    "keyslot %d key-material-offset" % i2, _SLOTS_AT + i2 * _SLOT_SIZE + 40)
        return self

    # ---- serialization ---------------------------------------------------------------
    def pack(self):
        """The 592 header bytes."""
        self.validate()
        out = bytearray(struct.pack(
            _FMT, MAGIC, self.version, self.cipher_name.encode(), self.cipher_mode.encode(),
            self.hash_spec.encode(), self.payload_offset, self.key_bytes, self.mk_digest,
            self.mk_digest_salt, self.mk_digest_iter, self.uuid.encode()))
        for slot in self.slots:
            out += struct.pack(_SLOT_FMT, SLOT_ENABLED if slot.active else SLOT_DISABLED,
                               slot.iterations, slot.salt, slot.km_offset, slot.stripes)
        assert len(out) == HEADER_SIZE
        return bytes(out)

    # ---- derived facts -------------------------------------------------------------------
    @property
    def spec(self):
        """The CipherSpec (UnsupportedCipher if the names are unknown)."""
        return CipherSpec.from_luks(self.cipher_name, self.cipher_mode, self.key_bytes)

    def key_material_end(self):
        """Bytes from the header start to the end of the last keyslot area,
        each area rounded up to 4 KiB as both cryptsetup and QEMU lay them
        out (the size of a detached header and of a header backup)."""
        ends = [s.extent(self.key_bytes)[1] for s in self.slots if s.km_offset]
        return max(ends, default=HEADER_SIZE)

    def active_slots(self):
        return [i for i, s in enumerate(self.slots) if s.active]

    def free_slots(self):
        return [i for i, s in enumerate(self.slots) if not s.active]

    def copy(self):
        return replace(self, slots=[replace(s) for s in self.slots])


def _cstring(raw, name, offset, path):
    end = raw.find(b"\0")
    if end < 0:
        raise FormatError("%s is not NUL-terminated" % name, field=name, offset=offset, path=path)
    try:
        return raw[:end].decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("%s is not ASCII" % name, field=name, offset=offset, path=path) from None


def check_names(header):
    """Raise UnsupportedCipher unless pyqcrypt can run this header's cipher
    and hash (dump works without this; unlock and I/O need it)."""
    from ..crypto.cipherspec import check_hash
    spec = header.spec.check()
    check_hash(header.hash_spec)
    return spec


__all__ = ["LuksHeader", "Keyslot", "MAGIC", "HEADER_SIZE", "NUM_SLOTS", "SECTOR", "STRIPES",
           "DIGEST_SIZE", "SALT_SIZE", "material_sectors", "check_names"]
