# SPDX-License-Identifier: LGPL-2.1-or-later
"""A repair (check -r all) stopped at every one of its writes leaves an
image no worse than before, as ``qemu-img check`` sees it.

For each damaged image of test_check_repair_vs_qemu, the repair runs once
to count its writes, then once per write with the disk failing from that
write on (what was written before it stays: a process killed there), and
each result is checked with qemu-img:

* no refcount is ever below its references unless it was before, and a
  finding other than a COPIED flag is never new (refcounts are written
  first, each straight to the number of references);
* a COPIED finding is new only on a cluster whose too-low refcount the
  repair raised: its entries keep their flags until that raise is synced
  (clearing them first would let QEMU free a shared cluster);
* leaks only go away, the check always completes, and the guest reads the
  same bytes.

A stop after the last write leaves what a whole repair leaves.
"""

import errno
import json
import os
import re
import shutil
import subprocess

import pytest

from pyqcrypt import storage
from pyqcrypt.errors import Error
from pyqcrypt.qcow2.check import FIX_ERRORS, FIX_LEAKS
from pyqcrypt.qcow2.repair import repair_qcow2

from conftest import qemu_img, tool
from test_check_repair_vs_qemu import DAMAGE, WRITES
from test_check_vs_qemu import MASK, Layout, make

pytestmark = pytest.mark.interop

TOO_LOW = re.compile(r"^ERROR cluster (\d+) refcount=(\d+) reference=(\d+)$")
COPIED_LINE = re.compile(r"^ERROR OFLAG_COPIED data cluster: l2_entry=([0-9a-f]+) refcount=\d+$")


def _findings(path):
    """(exit code, ERROR lines, Leaked lines, leak count) of qemu-img check."""
    proc = subprocess.run([tool("qemu-img"), "check", "--output=json", path],
                          capture_output=True, text=True)
    lines = proc.stderr.splitlines()
    leaks = json.loads(proc.stdout).get("leaks", 0) if proc.stdout else None
    return (proc.returncode, [x for x in lines if x.startswith("ERROR")],
            [x for x in lines if x.startswith("Leaked")], leaks)


def _guest(path):
    raw = path + ".raw"
    qemu_img("convert", "-O", "raw", path, raw)
    with open(raw, "rb") as fh:
        data = fh.read()
    os.unlink(raw)
    return data


def _repair(path, fail_at=None):
    """Repair *path* in this process; with *fail_at*, every write from
    that one (1-based) on fails with EIO.  Returns the writes attempted."""
    seen = {"write": 0}

    def hook(op, st, offset, length):
        if op == "write":
            seen["write"] += 1
        if fail_at is not None and seen["write"] >= fail_at:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    with storage.injected_faults(hook):
        with storage.Storage(path, writable=True) as st:
            repair_qcow2(st, path, FIX_LEAKS | FIX_ERRORS)
    return seen["write"]


def _assert_no_worse(before, after, cs):
    rc0, errors0, leaked0, leaks0 = before
    rc, errors, leaked, leaks = after
    assert rc != 1 and leaks is not None, after
    raised = {int(m.group(1)) for m in map(TOO_LOW.match, errors0) if m}
    for line in errors:
        m = COPIED_LINE.match(line)
        if line in errors0:
            continue
        assert m and (int(m.group(1), 16) & MASK) // cs in raised, (line, errors0)
    assert set(leaked) <= set(leaked0) and leaks <= leaks0, (leaked, leaked0)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_repair_stopped_at_every_write(workdir, damage):
    lay = Layout(make(workdir, 4096, writes=WRITES))
    damage(lay)
    damaged = lay.save()
    before = _findings(damaged)
    guest = _guest(damaged)
    probe = os.path.join(workdir, "probe.qcow2")
    shutil.copyfile(damaged, probe)
    writes = _repair(probe)
    assert writes >= 1
    complete = _findings(probe)
    for n in range(1, writes + 1):
        shutil.copyfile(damaged, probe)
        with pytest.raises(Error):
            _repair(probe, fail_at=n)
        after = _findings(probe)
        _assert_no_worse(before, after, lay.cs)
        assert _guest(probe) == guest, "guest bytes changed after %d writes" % (n - 1)
    shutil.copyfile(damaged, probe)
    _repair(probe, fail_at=writes + 1)
    assert _findings(probe) == complete
