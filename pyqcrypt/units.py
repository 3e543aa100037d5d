# SPDX-License-Identifier: LGPL-2.1-or-later
"""Units and rounding every on-disk format here shares.

``SECTOR`` is the 512-byte unit of LUKS1 offsets, qcow2 compressed-cluster
lengths and the sector IVs of both formats (one fact, one definition);
``ceil_div`` and ``round_up`` are the integer roundings the layouts use.
"""

SECTOR = 512


def ceil_div(a, b):
    """a / b rounded up, for non-negative integers."""
    return -(-a // b)


def round_up(a, b):
    """The smallest multiple of *b* that is at least *a*."""
    return ceil_div(a, b) * b
