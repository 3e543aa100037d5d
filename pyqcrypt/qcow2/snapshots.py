# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 internal snapshots: the snapshot table, read-only.

The header's ``nb_snapshots`` / ``snapshots_offset`` name a table of
variable-length entries, each 8-byte aligned::

    0  l1_table_offset (8)   8 l1_size (4)   12 id_str_size (2)   14 name_size (2)
   16  date_sec (4)         20 date_nsec (4) 24 vm_clock_nsec (8)
   32  vm_state_size (4)    36 extra_data_size (4)
   40  extra data: vm_state_size_large (8), disk_size (8), icount (8), unknown...
       then the id string, then the name (neither NUL-terminated)

The table is untrusted: counts, sizes and offsets are checked against the
file and QEMU's own limits (65536 snapshots, 64 MiB of table, 1 KiB of
extra data per entry, 32 MiB L1 tables) before anything is read, and entries
are read one at a time, so a hostile table costs neither a huge allocation
nor a traceback: every failure is a ``FormatError`` naming the field and its
offset.  Snapshots are created, deleted and applied by ``snapshot_ops.py``;
writes to the active layer copy shared clusters so every snapshot stays
intact (see ``snapshot_cow.py``).
"""

import struct
from typing import TYPE_CHECKING, Optional

from ..errors import FormatError
from ..units import round_up
from .header import MAX_L1_BYTES, MAX_SNAPSHOTS

if TYPE_CHECKING:       # checked as the dataclasses they behave as
    from dataclasses import dataclass
else:                   # no inspect/ast import at start-up (see _record)
    from .._record import dataclass

MAX_TABLE_BYTES = 1024 * MAX_SNAPSHOTS  # QCOW_MAX_SNAPSHOTS_SIZE
MAX_EXTRA_DATA = 1024                   # QCOW_MAX_SNAPSHOT_EXTRA_DATA
ENTRY_HEADER = 40
_ENTRY = ">QIHHIIQII"


@dataclass
class Snapshot:
    index: int
    entry_offset: int
    l1_table_offset: int
    l1_size: int
    id: str
    name: str
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: Optional[int]
    icount: Optional[int]               # None when the entry has no icount field
    extra_data_size: int
    entry_end: int

    def info(self):
        """The entry of qemu-img info's JSON "snapshots" array, keys in
        qemu-img's order."""
        out = {}
        if self.icount is not None:
            out["icount"] = self.icount
        out.update({"vm-clock-nsec": self.vm_clock_nsec % 1000000000, "name": self.name,
                    "date-sec": self.date_sec, "date-nsec": self.date_nsec,
                    "vm-clock-sec": self.vm_clock_nsec // 1000000000, "id": self.id,
                    "vm-state-size": self.vm_state_size})
        return out


def read_snapshots(storage, header, file_size=None):
    """The snapshot table of an image as a list of Snapshot (empty when it
    has none); FormatError for anything out of bounds."""
    n = header.nb_snapshots
    if not n:
        return []
    file_size = storage.size() if file_size is None else file_size
    start = header.snapshots_offset
    path = storage.path
    if n > MAX_SNAPSHOTS:
        _bad("nb_snapshots %d is more than QEMU allows (%d)" % (n, MAX_SNAPSHOTS),
             "nb_snapshots", 60, path)
    if start % header.cluster_size or start < header.cluster_size:
        _bad("snapshot table offset 0x%x is not cluster-aligned or lies on the header" % start,
             "snapshots_offset", 64, path)
    if start + n * ENTRY_HEADER > file_size:
        _bad("snapshot table (0x%x, %d entries) lies outside the file" % (start, n),
             "snapshots_offset", 64, path)
    out = []
    off = start
    for i in range(n):
        sn = _read_entry(storage, header, i, round_up(off, 8), start, file_size)
        out.append(sn)
        off = sn.entry_end
    return out


def _read_entry(storage, header, i, off, start, file_size):
    """Snapshot table entry *i*, which starts at *off*; every length is
    bounded before anything is read."""
    path = storage.path

    def check_end(end):
        if end - start > MAX_TABLE_BYTES:
            _bad("snapshot table is larger than QEMU allows (%d bytes) at entry %d"
                 % (MAX_TABLE_BYTES, i), "snapshot table", off, path)
        if end > file_size:
            _bad("snapshot table entry %d runs past the end of the file" % i, "snapshot table",
                 off, path)

    check_end(off + ENTRY_HEADER)
    (l1_off, l1_size, id_len, name_len, dsec, dnsec, vmclock, vmstate,
     extra_len) = struct.unpack(_ENTRY, storage.pread(off, ENTRY_HEADER, "snapshot table"))
    if extra_len > MAX_EXTRA_DATA:
        _bad("snapshot table entry %d has %d bytes of extra data (at most %d)"
             % (i, extra_len, MAX_EXTRA_DATA), "extra_data_size", off + 36, path)
    body = extra_len + id_len + name_len
    end = off + ENTRY_HEADER + body
    check_end(end)
    raw = storage.pread(off + ENTRY_HEADER, body, "snapshot table") if body else b""
    extra = raw[:extra_len]
    if extra_len >= 8:
        vmstate = struct.unpack_from(">Q", extra, 0)[0]
    disk_size = struct.unpack_from(">Q", extra, 8)[0] if extra_len >= 16 else None
    icount = struct.unpack_from(">Q", extra, 16)[0] if extra_len >= 24 else None
    if icount == (1 << 64) - 1:
        icount = None                   # QEMU's "no icount"
    if not id_len:
        _bad("snapshot table entry %d has an empty ID" % i, "id_str_size", off + 12, path)
    # QEMU keeps them as C strings: a NUL byte ends them.
    ident = raw[extra_len:extra_len + id_len].split(b"\0", 1)[0].decode("utf-8", "replace")
    name = raw[extra_len + id_len:body].split(b"\0", 1)[0].decode("utf-8", "replace")
    cs = header.cluster_size
    if l1_size * 8 > MAX_L1_BYTES:
        _bad("snapshot %s: l1_size %d is larger than QEMU allows" % (ident, l1_size),
             "l1_size", off + 8, path)
    if l1_size and (l1_off % cs or l1_off < cs or l1_off + l1_size * 8 > file_size):
        _bad("snapshot %s: L1 table (0x%x, %d entries) is not cluster-aligned, lies on the "
             "header or outside the file" % (ident, l1_off, l1_size), "l1_table_offset", off, path)
    return Snapshot(i, off, l1_off, l1_size, ident, name, dsec, dnsec, vmclock, vmstate,
                    disk_size, icount, extra_len, end)


def _bad(msg, fld, off, path):
    raise FormatError(msg, field=fld, offset=off, path=path)


def metadata_ranges(snapshots, header):
    """(offset, length, description, field, field_offset) of the snapshot
    table and every snapshot's L1 table (see refcounts.MetadataMap.build)."""
    if not snapshots:
        return
    yield (header.snapshots_offset, snapshots[-1].entry_end - header.snapshots_offset,
           "snapshot table", "snapshots_offset", 64)
    for sn in snapshots:
        if sn.l1_size:
            yield (sn.l1_table_offset, sn.l1_size * 8, "L1 table of snapshot %s" % sn.id,
                   "l1_table_offset", sn.entry_offset)


def read_l1(storage, sn):
    """A snapshot's L1 entries (its table was bounds-checked on reading)."""
    if not sn.l1_size:
        return ()
    return struct.unpack(">%dQ" % sn.l1_size, storage.pread(sn.l1_table_offset, sn.l1_size * 8,
                                                            "snapshot L1 table"))
