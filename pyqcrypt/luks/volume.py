# SPDX-License-Identifier: LGPL-2.1-or-later
"""The decrypted payload of a raw LUKS1 volume as a block device.

Reads and writes go through the sector core in chunks; IVs count sectors
from the start of the payload.  Unaligned writes read, decrypt, patch,
encrypt and write back the sectors they touch.

A payload dropped without ``close()`` is closed by the garbage collector
with a ``ResourceWarning``; any use after ``close()`` is an ``Error``.
"""

import warnings
from typing import Union

from ..crypto import SECTOR_SIZE, SectorCipher
from ..errors import Error
from ..pipeline import Job, Piece
from ..storage import zero_fill
from .header import check_names

CHUNK = 1 << 20


class LuksPayload:
    """Payload I/O for an unlocked LUKS1 volume."""

    _closed = True              # until __init__ completes
    size: int

    def __init__(self, data_storage, header, master_key, payload_bytes=None, writable=False,
                 owned_storages=()):
        spec = check_names(header)
        self.header = header
        self._data = data_storage
        self._start = header.payload_offset * SECTOR_SIZE
        available = data_storage.size() - self._start
        if available < 0:
            raise Error("%s is smaller than its payload offset" % data_storage.path)
        self.size = available if payload_bytes is None else min(payload_bytes, available)
        self.size -= self.size % SECTOR_SIZE
        self.writable = writable
        self._cipher = SectorCipher(spec, master_key)
        self._owned = list(owned_storages)
        self._closed = False

    @property
    def closed(self):
        return self._closed

    def _check_open(self):
        if self._closed:
            raise Error("LUKS volume %s is closed" % self._data.path)

    def _check(self, offset, length):
        self._check_open()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Error("I/O of %d bytes at %d is outside the %d-byte volume"
                        % (length, offset, self.size))

    def read(self, offset: int, length: int) -> bytes:
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
        if offset % SECTOR_SIZE == 0 and length % SECTOR_SIZE == 0:
            self._data.preadinto(view, self._start + offset, "payload")
            if jobs is None:
                self._cipher.decrypt(view, offset // SECTOR_SIZE)
            else:
                jobs.append(Job(self._cipher, False, view, offset // SECTOR_SIZE))
            return buf
        out = view
        pos = 0
        while pos < length:
            abs_off = offset + pos
            first = abs_off // SECTOR_SIZE
            skip = abs_off - first * SECTOR_SIZE
            span = min(CHUNK, (skip + length - pos + SECTOR_SIZE - 1) // SECTOR_SIZE * SECTOR_SIZE)
            buf = bytearray(span)
            self._data.preadinto(buf, self._start + first * SECTOR_SIZE, "payload")
            self._cipher.decrypt(buf, first)
            take = min(span - skip, length - pos)
            out[pos:pos + take] = buf[skip:skip + take]
            pos += take
        return buf

    def write(self, offset: int, data: Union[bytes, bytearray, memoryview]) -> None:
        self._check_open()
        if not self.writable:
            raise Error("volume is open read-only")
        data = memoryview(data).cast("B")
        self._check(offset, len(data))
        pos = 0
        while pos < len(data):
            abs_off = offset + pos
            first = abs_off // SECTOR_SIZE
            skip = abs_off - first * SECTOR_SIZE
            span = min(CHUNK, (skip + len(data) - pos + SECTOR_SIZE - 1) // SECTOR_SIZE * SECTOR_SIZE)
            take = min(span - skip, len(data) - pos)
            buf = bytearray(span)
            if skip or take < span:         # partial sectors: read-modify-write
                self._data.preadinto(buf, self._start + first * SECTOR_SIZE, "payload")
                self._cipher.decrypt(buf, first)
            buf[skip:skip + take] = data[pos:pos + take]
            self._cipher.encrypt(buf, first)
            self._data.pwrite(self._start + first * SECTOR_SIZE, buf)
            pos += take

    def plan_write(self, offset, data):
        """The conversion pipeline's write: the Piece that puts the whole
        sectors *data* at *offset* (the caller encrypts it in place, giving
        up *data*, and writes it); None when not sector-aligned (use
        ``write()``)."""
        self._check_open()
        if not self.writable:
            return None
        view = memoryview(data).cast("B")
        self._check(offset, len(view))
        if offset % SECTOR_SIZE or len(view) % SECTOR_SIZE:
            return None
        return [Piece(self._data, self._start + offset, view, self._cipher,
                      offset // SECTOR_SIZE)]

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

    def close(self) -> None:
        """Wipe the key and close the files (no sync: call flush() for
        that); a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._cipher is not None:
            self._cipher.close()
            self._cipher = None
        owned, self._owned = self._owned, []
        for st in owned:
            st.close()

    def __del__(self):
        if self._closed:
            return
        try:
            warnings.warn("unclosed image %s" % self._data.path, ResourceWarning, source=self)
        except Exception:           # warnings as errors, interpreter shutdown
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<LuksPayload %s, %d bytes>" % (self._data.path, self.size)
