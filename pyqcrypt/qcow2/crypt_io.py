# SPDX-License-Identifier: LGPL-2.1-or-later
"""Guest data in host clusters, encrypted per sector (QEMU's
qcow2_co_encrypt / qcow2_co_decrypt).

Encrypted images encrypt every 512-byte data sector: LUKS with the host
sector number as IV (in the data file when there is one), legacy AES with
the guest sector number; ``HostSectorCrypt`` picks the IV and drives the
image's ``SectorCipher`` (``KeylessCrypt`` refuses, for metadata-only
work).  ``HostData`` (mixed into Qcow2Image) reads and writes guest bytes
at a host offset of the data file: whole sectors are decrypted in place
(or left to the conversion pipeline as Jobs), partial ones by a
read-modify-write of the sectors they touch.  Bytes past the end of the
file read as zeros.
"""

from ..pipeline import Job
from ..units import SECTOR, unit_span


class HostSectorCrypt:
    """Encrypts a host run: IV from the host sector (LUKS) or the guest
    sector (legacy AES)."""

    def __init__(self, cipher, iv_from_host):
        self.cipher = cipher
        self.iv_from_host = iv_from_host

    def sector(self, host, guest):
        """The IV sector number of the run at *host* (guest offset *guest*)."""
        return (host if self.iv_from_host else guest) // SECTOR

    def job(self, encrypt, view, host, guest):
        """A pipeline Job that encrypts or decrypts *view* in place."""
        return Job(self.cipher, encrypt, view, self.sector(host, guest))

    def encrypt(self, buf, host, guest):
        self.cipher.encrypt(buf, self.sector(host, guest))

    def decrypt(self, buf, host, guest):
        self.cipher.decrypt(buf, self.sector(host, guest))

    def close(self):
        self.cipher.close()


class KeylessCrypt:
    """The crypt of an encrypted image opened without its key, for work
    on its metadata alone (resize): any data sector it would have to
    encrypt or decrypt is an Error, never plaintext written or read as if
    it were guest data."""

    cipher = None

    def __init__(self, path):
        self.path = path

    def _refuse(self, *args):
        from ..errors import Error
        raise Error("%s is encrypted: this needs its secret (guest data would be read or written)"
                    % self.path)

    sector = job = encrypt = decrypt = _refuse

    def close(self):
        pass


class HostData:
    """Qcow2Image's reads and writes of the data file (see the module docstring)."""

    def _read_host_into(self, host, guest, view, jobs=None):
        """Fill *view* from host offset *host* (guest offset *guest*),
        decrypted; with a list *jobs*, whole sectors' decryption is left
        there as a Job."""
        length = len(view)
        if self.crypt is None:
            self._pread_padded(view, host)
            return
        if host % SECTOR == 0 and length % SECTOR == 0:
            self._pread_padded(view, host)            # decrypt in place
            if jobs is None:
                self.crypt.decrypt(view, host, guest)
            else:
                jobs.append(self.crypt.job(False, view, host, guest))
            return
        first, skip, span = unit_span(host, length)
        tmp = bytearray(span)
        self._pread_padded(tmp, first)
        self.crypt.decrypt(tmp, first, guest - skip)
        view[:] = tmp[skip:skip + length]

    def _write_host(self, host, guest, data):
        """Write *data* at host offset *host* (guest offset *guest*),
        encrypted; the sectors it covers partly are read and decrypted
        first."""
        if self.crypt is None:
            self.data.pwrite(host, data)
            return
        first, skip, span = unit_span(host, len(data))
        buf = bytearray(span)
        if span != len(data):               # partial sectors: read-modify-write
            self._pread_padded(buf, first)
            self.crypt.decrypt(buf, first, guest - skip)
        buf[skip:skip + len(data)] = data
        self.crypt.encrypt(buf, first, guest - skip)
        self.data.pwrite(first, buf)

    def _pread_padded(self, buf, offset):
        """Read into buf; bytes past the end of the file read as zeros."""
        view = memoryview(buf).cast("B")
        size = self.data.size()
        avail = max(0, min(len(view), size - offset))
        if avail:
            self.data.preadinto(view[:avail], offset, "cluster data")
        if avail < len(view):
            view[avail:] = bytes(len(view) - avail)
