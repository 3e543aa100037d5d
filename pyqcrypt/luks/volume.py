# SPDX-License-Identifier: LGPL-2.1-or-later
"""The decrypted payload of a LUKS volume on a file or device (LUKS1, or a LUKS2 data
segment) as a block device.

Reads and writes go through the sector core in chunks.  The payload is
encrypted in units of the segment's sector size (512 bytes for LUKS1;
512 to 4096 for LUKS2) and every unit's IV counts 512-byte sectors from the
start of the payload, plus the segment's IV tweak (dm-crypt without
``iv_large_sectors``).  Writes that do not cover whole units read, decrypt,
patch, encrypt and write back the units they touch.

A payload dropped without ``close()`` is closed by the garbage collector
with a ``ResourceWarning``; any use after ``close()`` is an ``Error``
(pyqcrypt.lifecycle).
"""

import threading
from typing import Union

from ..crypto import SectorCipher
from ..errors import Error
from ..lifecycle import ImageLifecycle
from ..pipeline import Job, Piece
from ..storage import zero_fill
from ..units import SECTOR, unit_span
from .header import check_names

CHUNK = 1 << 20


class Geometry:
    """Where a payload lies and how its units are numbered: *start* and
    *size* in bytes on the data device, the encryption *unit* (sector size)
    and the IV number of the payload's first byte (*iv_offset*, in 512-byte
    sectors)."""

    __slots__ = ("start", "size", "unit", "iv_offset")

    def __init__(self, start, size, unit=SECTOR, iv_offset=0):
        if unit not in (512, 1024, 2048, 4096):
            raise Error("encryption sector size %r is not supported" % (unit,))
        self.start, self.size, self.unit, self.iv_offset = start, size - size % unit, unit, iv_offset

    def __repr__(self):
        return "Geometry(start=%d, size=%d, unit=%d, iv_offset=%d)" % (
            self.start, self.size, self.unit, self.iv_offset)


class LuksPayload(ImageLifecycle):
    """Payload I/O for an unlocked LUKS volume."""

    _closed_noun = "LUKS volume "
    size: int
    header = None               # the LuksHeader of a LUKS1 volume
    luks2 = None                # the Luks2Metadata of a LUKS2 volume
    keyslot = None              # the LUKS2 keyslot that opened it

    def __init__(self, data_storage, spec, master_key, geometry, writable=False,
                 owned_storages=(), kind="LUKS"):
        self._data = data_storage
        self.path = data_storage.path
        self.geometry = geometry
        self._start = geometry.start
        self._unit = geometry.unit
        self.size = geometry.size
        self.kind = kind
        self.format_name = "luks2" if kind == "LUKS2" else "luks"    # pyqcrypt.Image.format
        self.writable = writable
        self._cipher = SectorCipher(spec, master_key, sector_size=geometry.unit,
                                    iv_step=geometry.unit // SECTOR)
        self._owned = list(owned_storages)
        # Writes that do not cover whole units read, patch and write back a
        # unit; two threads doing that to one unit would lose one's bytes.
        self._write_lock = threading.Lock()
        self._closed = False

    @classmethod
    def luks1(cls, data_storage, header, master_key, payload_bytes=None, writable=False,
              owned_storages=()):
        """The payload of a LUKS1 volume: from the header's payload offset
        to the end of the device (or *payload_bytes*), 512-byte units."""
        spec = check_names(header)
        start = header.payload_offset * SECTOR
        available = data_storage.size() - start
        if available < 0:
            raise Error("%s is smaller than its payload offset" % data_storage.path)
        size = available if payload_bytes is None else min(payload_bytes, available)
        payload = cls(data_storage, spec, master_key, Geometry(start, size), writable,
                      owned_storages, "LUKS1")
        payload.header = header
        return payload

    def _check(self, offset, length):
        self._check_open()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Error("I/O of %d bytes at %d is outside the %d-byte volume"
                        % (length, offset, self.size))

    def _iv(self, offset):
        """The IV number of the unit at payload byte *offset*."""
        return offset // SECTOR + self.geometry.iv_offset

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)             # before allocating *length* bytes
        out = bytearray(length)
        self.readinto(offset, out)
        return bytes(out)

    def readinto(self, offset, buf, jobs=None):
        """Read len(buf) bytes at *offset* into the writable *buf*; aligned
        runs are read and decrypted in place, without copies.  With a list
        *jobs* (the conversion pipeline), an aligned read is left as
        ciphertext and its decryption appended to *jobs* as a Job."""
        view = memoryview(buf).cast("B")
        length = len(view)
        self._check(offset, length)
        unit = self._unit
        if offset % unit == 0 and length % unit == 0:
            self._data.preadinto(view, self._start + offset, "payload")
            if jobs is None:
                self._cipher.decrypt(view, self._iv(offset))
            else:
                jobs.append(Job(self._cipher, False, view, self._iv(offset)))
            return buf
        pos = 0
        while pos < length:
            first, skip, span = unit_span(offset + pos, length - pos, unit, CHUNK)
            tmp = bytearray(span)
            self._data.preadinto(tmp, self._start + first, "payload")
            self._cipher.decrypt(tmp, self._iv(first))
            take = min(span - skip, length - pos)
            view[pos:pos + take] = tmp[skip:skip + take]
            pos += take
        return buf

    def write(self, offset: int, data: Union[bytes, bytearray, memoryview]) -> None:
        self._check_open()
        if not self.writable:
            raise Error("volume is open read-only")
        data = memoryview(data).cast("B")
        self._check(offset, len(data))
        with self._write_lock:
            self._write(offset, data)

    def _write(self, offset, data):
        pos = 0
        while pos < len(data):
            first, skip, span = unit_span(offset + pos, len(data) - pos, self._unit, CHUNK)
            take = min(span - skip, len(data) - pos)
            buf = bytearray(span)
            if take < span:                 # partial units: read-modify-write
                self._data.preadinto(buf, self._start + first, "payload")
                self._cipher.decrypt(buf, self._iv(first))
            buf[skip:skip + take] = data[pos:pos + take]
            self._cipher.encrypt(buf, self._iv(first))
            self._data.pwrite(self._start + first, buf)
            pos += take

    def plan_write(self, offset, data):
        """The conversion pipeline's write: the Piece that puts the whole
        units *data* at *offset* (the caller encrypts it in place, giving
        up *data*, and writes it); None when not unit-aligned (use
        ``write()``)."""
        self._check_open()
        if not self.writable:
            return None
        view = memoryview(data).cast("B")
        self._check(offset, len(view))
        if offset % self._unit or len(view) % self._unit:
            return None
        return [Piece(self._data, self._start + offset, view, self._cipher, self._iv(offset))]

    def write_zeroes(self, offset, length, unmap=False):
        """Encrypted zeros over the range (a LUKS volume has no zero map)."""
        zero_fill(self.write, offset, length)

    def discard(self, offset, length):
        """Advice only: the volume keeps its bytes (unmapping sectors under
        dm-crypt would make them decrypt to noise, not zeros)."""
        self._check_open()

    def flush(self):
        self._check_open()
        if self.writable:
            self._data.sync()

    def _release(self) -> None:
        """Wipe the key and close the files (no sync: call flush() for
        that)."""
        if self._cipher is not None:
            self._cipher.close()
            self._cipher = None
        owned, self._owned = self._owned, []
        for st in owned:
            st.close()

    def __repr__(self):
        return "<LuksPayload %s %s, %d bytes, %d-byte sectors>" % (
            self.kind, self._data.path, self.size, self._unit)
