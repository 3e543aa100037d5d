# SPDX-License-Identifier: LGPL-2.1-or-later
"""Which format a file holds, decided from its first eight bytes: one
open, one read, one answer: "qcow2", "luks2", "luks" (LUKS1, or a LUKS magic
of a version pyqcrypt does not know, which the LUKS1 parser refuses by
name, or too short to hold a version) or "raw".

A file that cannot be opened or read is an error naming it, never "raw":
an unexpected errno (EIO, EACCES, ...) means "unknown", and reading a
qcow2 image or a LUKS volume as plaintext bytes is how data gets lost.
A file shorter than a magic number simply does not carry it.
"""

from .luks.magic import MAGIC as LUKS_MAGIC, head_version
from .qcow2.header import MAGIC as QCOW2_MAGIC
from .storage import read_head

HEAD_BYTES = 8          # the LUKS magic and version; the qcow2 magic is 4


def sniff(head):
    """The format the bytes *head* (a file's first bytes) start."""
    if head[:4] == QCOW2_MAGIC:
        return "qcow2"
    if head[:len(LUKS_MAGIC)] != LUKS_MAGIC:
        return "raw"
    # A LUKS magic is never plaintext: any version but 2, or none (a file
    # too short to hold one), goes to the LUKS1 parser, which names it.
    return "luks2" if head_version(head) == 2 else "luks"


def detect(path):
    """The format of the file at *path* (see the module docstring)."""
    return sniff(read_head(path, HEAD_BYTES))
