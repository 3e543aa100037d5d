# SPDX-License-Identifier: LGPL-2.1-or-later
"""A LUKS1 header and its key material, wherever they live.

``HeaderArea`` wraps a ``Region``: offset 0 of a LUKS device (length = the
payload offset), a detached header file (length = the file), or the FDE
clusters of a qcow2 image (length = the extension's length).  Everything
above (unlock, keyslot changes, dump, backup) goes through this one class,
so the three cases share every line of LUKS code.

``open_area`` opens a LUKS device's or detached header's area under QEMU's
image locks (``pyqcrypt.locks``), held until the area is closed: mode
"exclusive" for writers (as qemu-img amend takes on a luks image), "read"
for readers, none with ``force_share``.
"""


from ..errors import Error, FormatError
from ..locks import lock_image
from ..storage import Region, Storage
from .header import HEADER_SIZE, SECTOR, LuksHeader
from .magic import is_luks, luks_version  # noqa: F401  (re-exported)


class HeaderArea:
    """A parsed, validated LUKS1 header bound to the region it came from."""

    def __init__(self, region, header):
        self.region = region
        self.header = header

    @classmethod
    def load(cls, region):
        raw = region.read(0, min(region.length, HEADER_SIZE), "LUKS header")
        header = LuksHeader.parse(raw, region.length, path=region.path)
        return cls(region, header)

    @property
    def path(self):
        return self.region.path

    # -- key material ----------------------------------------------------------
    def material_area(self, slot):
        return self.header.slots[slot].area(self.header.key_bytes)

    def read_material_into(self, slot, buf):
        start, end = self.material_area(slot)
        if memoryview(buf).nbytes != end - start:
            raise Error("key material buffer has the wrong size")
        self.region.readinto(buf, start, "key material of keyslot %d" % slot)

    def write_material(self, slot, data):
        start, end = self.material_area(slot)
        if memoryview(data).nbytes != end - start:
            raise Error("key material has the wrong size")
        self.region.write(start, data, "key material of keyslot %d" % slot)

    # -- header ------------------------------------------------------------------
    def write_header(self, header):
        """Write *header* (one 592-byte write at the region start)."""
        header.validate(self.region.length, self.path)
        self.region.write(0, header.pack(), "LUKS header")
        self.header = header

    def sync(self):
        self.region.sync()

    def close(self):
        self.region.storage.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def device_region(storage, offset=0):
    """The header region of a LUKS volume on a file or device, or of a
    detached header file:
    up to the payload offset, or the whole file when the payload offset is
    0 (a detached header)."""
    size = storage.size()
    # A short file reaches the parser as it is, which names the problem
    # (bad magic or truncation).
    first = LuksHeader.parse(storage.pread(offset, max(0, min(size - offset, HEADER_SIZE))),
                             path=storage.path)
    length = size - offset
    if first.payload_offset and first.payload_offset * SECTOR <= length:
        length = first.payload_offset * SECTOR
    elif first.payload_offset and first.key_material_end() > length:
        # A header backup file or detached header may stop before the
        # payload offset, but it must still hold all the key material.
        raise FormatError("payload offset (sector %d) lies past the end of the %d-byte device"
                          % (first.payload_offset, size), field="payload-offset",
                          offset=offset + 104, path=storage.path)
    return Region(storage, offset, length)


def open_area(path, writable=False, header=None, force_share=False):
    """The HeaderArea of a LUKS volume on a file or device, or of its detached *header*,
    locked as QEMU would lock it (see the module docstring) for as long as
    it stays open.  *force_share* (read-only only) takes no lock."""
    storage = Storage(header if header is not None else path, writable=writable)
    try:
        lock_image(storage, mode="exclusive" if writable else "read", force_share=force_share)
        return HeaderArea.load(device_region(storage))
    except BaseException:
        storage.close()
        raise


