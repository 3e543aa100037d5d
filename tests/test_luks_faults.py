# SPDX-License-Identifier: LGPL-2.1-or-later
"""Crash safety of keyslot changes, by fault injection.

Each operation runs once to record its writes and syncs, then once per
crash point: the process "dies" (an exception no code path catches) just
before write or sync number N, for every N.  After each crash the volume
must still parse, and every passphrase valid both before and after the
operation must still unlock it; for change-key, the old or the new one.

Each operation also keeps at most one write between two syncs.  With that,
a crash that loses unsynced writes leaves the same state as an earlier
crash point, so these runs cover it too.
"""

import os
import shutil

import pytest

from pyqcrypt import luks, storage

from conftest import luks_opens, two_key_volume

PW, PW2, PW3 = b"alpha", b"bravo", b"charlie"


class Crash(BaseException):
    """Simulated power loss: BaseException, so nothing catches it as an error."""


def _add(area):
    _, mk = luks.unlock(area, PW)
    with mk:
        luks.add_key(area, mk, PW3, iterations=1000)


OPERATIONS = {
    "add": (_add, {PW, PW2}, {PW, PW2, PW3}),
    "remove": (lambda area: luks.remove_key(area, PW2), {PW, PW2}, {PW}),
    "kill": (lambda area: luks.kill_slot(area, 1), {PW, PW2}, {PW}),
    "change": (lambda area: luks.change_key(area, PW2, PW3, iterations=1000), {PW, PW2}, {PW, PW3}),
    "erase": (luks.erase, {PW, PW2}, set()),
}


def _run(vol, op, crash_at=None):
    events = []

    def hook(kind, st, offset, length):
        if crash_at is not None and len(events) == crash_at:
            raise Crash()
        events.append((kind, offset, length))

    with storage.injected_faults(hook):
        try:
            with luks.open_area(vol, writable=True) as area:
                op(area)
        except Crash:
            pass
    return events


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_crash_at_every_write_and_sync(workdir, name):
    op, before, after = OPERATIONS[name]
    base = two_key_volume(os.path.join(workdir, "base.luks"), PW, PW2)
    probe = os.path.join(workdir, "probe.luks")
    shutil.copy(base, probe)
    events = _run(probe, op)
    writes = [e for e in events if e[0] == "write"]
    assert writes and events[-1][0] == "sync", events
    # At most one write between syncs.
    pending = 0
    for kind, _, _ in events:
        pending = pending + 1 if kind == "write" else 0
        assert pending <= 1, events
    # The completed operation did what it says.
    for pw in (PW, PW2, PW3):
        assert luks_opens(probe, pw) == (pw in after), (name, pw)
    survivors = before & after
    for n in range(len(events) + 1):
        vol = os.path.join(workdir, "crash-%d.luks" % n)
        shutil.copy(base, vol)
        _run(vol, op, crash_at=n)
        with luks.open_area(vol) as area:       # still a valid LUKS1 header
            luks.dump_text(area.header, vol)
        for pw in survivors:
            assert luks_opens(vol, pw), (name, "crash before event", n, pw)
        if name == "change":
            assert luks_opens(vol, PW2) or luks_opens(vol, PW3), ("change lost both at", n)
        os.unlink(vol)
    print("%s: %d faults injected (%d writes, %d syncs)"
          % (name, len(events) + 1, len(writes), len(events) - len(writes)))
