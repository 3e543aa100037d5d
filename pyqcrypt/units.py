# SPDX-License-Identifier: LGPL-2.1-or-later
"""Units and rounding every on-disk format here shares.

``SECTOR`` is the 512-byte unit of LUKS1 offsets, qcow2 compressed-cluster
lengths and the sector IVs of both formats (one fact, one definition);
``ceil_div`` and ``round_up`` are the integer roundings the layouts use,
``unit_span`` the whole sectors (or encryption units) a read-modify-write
of a byte range covers.
"""

SECTOR = 512


def ceil_div(a, b):
    """a / b rounded up, for non-negative integers."""
    return -(-a // b)


def round_up(a, b):
    """The smallest multiple of *b* that is at least *a*."""
    return ceil_div(a, b) * b


def unit_span(offset, length, unit=SECTOR, limit=None):
    """The whole units of *unit* bytes that cover [offset, offset+length),
    as a read-modify-write of sector-encrypted data needs them: (first,
    skip, span), the first unit's offset, the bytes before *offset* in it,
    and the bytes of whole units from *first* (at most *limit*, itself a
    multiple of *unit*)."""
    first = offset - offset % unit
    skip = offset - first
    span = round_up(skip + length, unit)
    return first, skip, span if limit is None else min(limit, span)
