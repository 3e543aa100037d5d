# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 5: one block-device interface over the image formats.

``open()`` probes the format (LUKS magic, else raw) and returns an object
with ``read(offset, length)``, ``write(offset, data)``, ``size``,
``flush()`` and ``close()``, usable as a context manager.  ``create()``
makes a new image.  qcow2 joins these when its layer lands.
"""

from .errors import Error
from .luks.area import is_luks, open_area
from .luks.raw import create_volume, open_volume
from .storage import Storage


class RawImage:
    """A plain file or block device."""

    format_name = "raw"

    def __init__(self, path, writable=False):
        self._st = Storage(path, writable=writable)
        self.size = self._st.size()
        self.writable = writable

    def read(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Error("read outside the %d-byte image" % self.size)
        return self._st.pread(offset, length)

    def write(self, offset, data):
        n = memoryview(data).nbytes
        if offset < 0 or offset + n > self.size:
            raise Error("write outside the %d-byte image" % self.size)
        self._st.pwrite(offset, data)

    def flush(self):
        if self.writable:
            self._st.sync()

    def close(self):
        self._st.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_luks_area(path, writable=False, header=None):
    """The LUKS1 HeaderArea of an image: a raw volume, or its detached
    *header* (qcow2 FDE regions join when the qcow2 layer lands)."""
    return open_area(path, writable=writable, header=header)


def probe(path):
    """The format name of the image at *path*: "luks" or "raw"."""
    return "luks" if is_luks(path) else "raw"


def open(path, passphrase=None, writable=False, header=None, format=None, key_slot=None):
    """Open an image as a block device (see the module docstring)."""
    fmt = format or ("luks" if header is not None else probe(path))
    if fmt == "luks":
        if passphrase is None:
            raise Error("%s is encrypted with LUKS; a passphrase is needed" % path)
        return open_volume(path, passphrase, header=header, writable=writable, key_slot=key_slot)
    if fmt == "raw":
        return RawImage(path, writable)
    raise Error("unknown image format %r" % (fmt,))


def create(path, size, format="luks", passphrase=None, **options):
    """Create a new image; for "luks", *options* are those of
    ``pyqcrypt.luks.raw.create_volume`` (spec, key_bits, hash_name,
    iter_time_ms, iterations, header, uuid, master_key)."""
    if format == "luks":
        if passphrase is None:
            raise Error("a LUKS volume needs a passphrase")
        return create_volume(path, size, passphrase, **options)
    raise Error("creating %r images is not supported yet" % (format,))
