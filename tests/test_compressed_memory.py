# SPDX-License-Identifier: LGPL-2.1-or-later
"""Hostile compressed clusters cannot raise memory with the workers
(issue 21): 4096 L2 entries all point at one 128 KiB deflate stream (two
clusters of input each, the most a descriptor can name), which inflates
past its cluster.  Converted with 8 workers, peak memory stays within a
few MiB of converting an ordinary image of the same size, and the output
is what qemu-img makes of the same image."""

import os
import struct
import subprocess
import sys
import zlib

import pytest

from conftest import qemu_img, write_file

CS = 64 << 10
CLUSTERS = 4096

# VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's, and
# the pytest worker holds hundreds of MiB.
RUN = """
import sys
import pyqcrypt.pipeline as p
p.cores = lambda: 8
from pyqcrypt.cli import main
rc = main(sys.argv[1:])
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print(hwm.split()[1], file=sys.stderr)
sys.exit(rc)
"""


def _peak_kib(*args):
    proc = subprocess.run([sys.executable, "-c", RUN] + [str(a) for a in args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1])


def _hostile(workdir):
    """A qcow2 image of CLUSTERS compressed clusters, every L2 entry naming
    the same 128 KiB of deflate data at the end of the file."""
    raw = write_file(os.path.join(workdir, "seed.raw"), b"A" * (CLUSTERS * CS))
    img = os.path.join(workdir, "bomb.qcow2")
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", raw, img)
    os.unlink(raw)
    with open(img, "r+b") as fh:
        head = fh.read(104)
        l1_size, l1_off = struct.unpack_from(">IQ", head, 36)
        fh.seek(0, 2)
        bomb_off = (fh.tell() + 511) // 512 * 512
        stream = zlib.compressobj(9, zlib.DEFLATED, -12).compress(b"\0" * (64 << 20))
        fh.seek(bomb_off)
        fh.write(stream[:2 * CS].ljust(2 * CS, b"\0"))
        x = 62 - (16 - 8)
        entry = (1 << 62) | (255 << x) | bomb_off            # compressed, 256 sectors
        fh.seek(l1_off)
        l1 = struct.unpack(">%dQ" % l1_size, fh.read(8 * l1_size))
        for e in l1:
            l2 = e & 0x00FFFFFFFFFFFE00
            if l2:
                fh.seek(l2)
                fh.write(struct.pack(">Q", entry) * (CS // 8))
    return img


@pytest.mark.interop
def test_hostile_compressed_clusters_do_not_multiply_memory(workdir):
    img = _hostile(workdir)
    plain = write_file(os.path.join(workdir, "plain.raw"), os.urandom(CLUSTERS * CS))
    normal = os.path.join(workdir, "normal.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", plain, normal)
    os.unlink(plain)
    base = _peak_kib("convert", "-O", "raw", normal, os.path.join(workdir, "n.raw"))
    out = os.path.join(workdir, "b.raw")
    peak = _peak_kib("convert", "-O", "raw", img, out)
    assert peak <= base + 16 * 1024, (peak, base)        # KiB: within 16 MiB of a plain image
    theirs = os.path.join(workdir, "q.raw")
    qemu_img("convert", "-O", "raw", img, theirs)
    with open(out, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
