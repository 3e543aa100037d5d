# SPDX-License-Identifier: LGPL-2.1-or-later
"""Crash states a real machine can leave, not only "stopped before write N"
(issue 21): every write, sync and truncate of an operation is recorded,
and for every point a crash could hit, the disk is rebuilt from the state
before the operation as the page cache may have left it.  Everything a sync
covered is there; of the writes after a file's last sync, any may be lost
and they may land out of order, so each state keeps: all of them, none,
every prefix, and all but one (each in turn).  Every state must check clean
with ``qemu-img check`` (leaked clusters allowed) and hold what the
operation had acknowledged (qcow2 writes), a passphrase that worked
(keyslot changes), or no volume that opens with half its data (``-n``
conversions).  The number of states replayed is printed."""

import contextlib
import json
import os
import shutil
import subprocess

import pytest

import pyqcrypt
from pyqcrypt import storage
from pyqcrypt.luks import keyslots
from conftest import tool, write_file

pytestmark = pytest.mark.interop


@contextlib.contextmanager
def recording():
    """Every pwrite (with its bytes), sync and truncate, in order, as
    (kind, path, offset, data)."""
    ops = []
    real_pwrite, real_sync, real_truncate = (storage.Storage.pwrite, storage.Storage.sync,
                                             storage.Storage.truncate)

    def pwrite(self, offset, data):
        ops.append(("write", os.path.realpath(self.path), offset, bytes(memoryview(data).cast("B"))))
        return real_pwrite(self, offset, data)

    def sync(self):
        ops.append(("sync", os.path.realpath(self.path), 0, b""))
        return real_sync(self)

    def truncate(self, length):
        ops.append(("truncate", os.path.realpath(self.path), length, b""))
        return real_truncate(self, length)

    storage.Storage.pwrite, storage.Storage.sync, storage.Storage.truncate = pwrite, sync, truncate
    try:
        yield ops
    finally:
        storage.Storage.pwrite, storage.Storage.sync, storage.Storage.truncate = (
            real_pwrite, real_sync, real_truncate)


def crash_states(ops):
    """(crash point, ops that reached the disk) for every point and every
    subset the model allows (see the module docstring)."""
    seen = set()
    for k in range(len(ops) + 1):
        done = ops[:k]
        last_sync = {}
        for i, op in enumerate(done):
            if op[0] == "sync":
                last_sync[op[1]] = i
        durable = [i for i, op in enumerate(done)
                   if op[0] != "sync" and i < last_sync.get(op[1], -1)]
        loose = [i for i, op in enumerate(done)
                 if op[0] != "sync" and i > last_sync.get(op[1], -1)]
        choices = [loose, []] + [loose[:j] for j in range(1, len(loose))]
        choices += [[x for x in loose if x != drop] for drop in loose]
        for keep in choices:
            state = tuple(sorted(durable + keep))
            if state not in seen:
                seen.add(state)
                yield k, [done[i] for i in state]


def replay(ops, originals, into):
    """The files as *ops* leave them, starting from *originals* (realpath
    -> pristine copy); returns the rebuilt files' paths."""
    out = {}
    for path, pristine in originals.items():
        out[path] = os.path.join(into, os.path.basename(path))
        if pristine is None:
            write_file(out[path], b"")
        else:
            shutil.copyfile(pristine, out[path])
    for kind, path, offset, data in ops:
        if path not in out:
            continue
        with open(out[path], "r+b") as fh:
            if kind == "write":
                fh.seek(offset)
                fh.write(data)
            elif kind == "truncate":
                fh.truncate(offset)
    return out


def _workload(path, passphrase, ops, marks):
    """Writes with two flushes; *marks* gets the operation count at which
    each flush returned.  The second phase allocates a data cluster inside
    an L2 table that is already on disk (only the refcount block and that
    table change), and a cluster that needs a new L2 table."""
    with pyqcrypt.open(path, passphrase=passphrase, writable=True) as img:
        img.write(0, b"1" * 9000)
        img.flush()
        marks.append(len(ops))
        img.write(1 << 20, b"5" * 5000)            # new cluster, existing L2 table
        img.write(3 << 20, b"2" * 300000)          # new L2 table and clusters
        img.write(4096, b"3" * 100)                # in place
        img.flush()
        marks.append(len(ops))
        img.write(20 << 20, b"4" * 5000)


# What must read back after 0, 1 or 2 completed flushes (bytes 4096..4196 are
# rewritten in place after the first flush: old or new until the second).
ACKED = [[], [(0, b"1" * 4096), (4196, b"1" * 4804)],
         [(0, b"1" * 4096), (4096, b"3" * 100), (4196, b"1" * 4804), (1 << 20, b"5" * 5000),
          (3 << 20, b"2" * 300000)]]


def _qemu_check(path, enc):
    args = [tool("qemu-img"), "check", "--output=json"]
    args += (["--object", "secret,id=s,data=pw", "--image-opts",
              "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path] if enc else [path])
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode in (0, 3), (proc.stdout, proc.stderr)
    assert json.loads(proc.stdout).get("corruptions", 0) == 0, proc.stdout


@pytest.mark.parametrize("enc", [None, "luks"])
def test_qcow2_writes_survive_every_crash_state(workdir, enc):
    kw = dict(cluster_size=4096, refcount_bits=16)
    pw = None
    if enc:
        kw.update(encrypt_format="luks", passphrase=b"pw", iterations=1000)
        pw = b"pw"
    path = os.path.join(workdir, "w.qcow2")
    pyqcrypt.create(path, 32 << 20, format="qcow2", **kw)
    pristine = os.path.join(workdir, "pristine.qcow2")
    shutil.copyfile(path, pristine)
    marks = []
    with recording() as ops:
        _workload(path, pw, ops, marks)
    replayed = 0
    scratch = os.path.join(workdir, "r")
    os.mkdir(scratch)
    for k, state in crash_states(ops):
        files = replay(state, {os.path.realpath(path): pristine}, scratch)
        image = files[os.path.realpath(path)]
        _qemu_check(image, enc)
        acked = ACKED[sum(1 for m in marks if m <= k)]
        with pyqcrypt.open(image, passphrase=pw) as img:
            for off, data in acked:
                assert img.read(off, len(data)) == data, (k, off)
        replayed += 1
    assert replayed > 10
    print("qcow2 %s: %d operations, %d crash states replayed" % (enc or "plain", len(ops), replayed))


def test_change_key_keeps_a_passphrase_in_every_crash_state(workdir):
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, 1 << 20, format="luks", passphrase=b"old", iterations=1000)
    pristine = os.path.join(workdir, "pristine.luks")
    shutil.copyfile(vol, pristine)
    with recording() as ops:
        with pyqcrypt.luks.open_area(vol, writable=True) as area:
            keyslots.change_key(area, b"old", b"new", iterations=1000)
    assert any(op[0] == "sync" for op in ops)
    scratch = os.path.join(workdir, "r")
    os.mkdir(scratch)
    replayed = 0
    for k, state in crash_states(ops):
        image = replay(state, {os.path.realpath(vol): pristine}, scratch)[os.path.realpath(vol)]
        opens = []
        for pw in (b"old", b"new"):
            try:
                with pyqcrypt.open(image, passphrase=pw):
                    opens.append(pw)
            except pyqcrypt.WrongPassphrase:
                pass
        assert opens, "crash state %d (after %d operations): no passphrase opens" % (replayed, k)
        replayed += 1
    print("change-key: %d operations, %d crash states replayed" % (len(ops), replayed))


def test_existing_target_conversion_never_opens_half_written(workdir):
    """-n -O luks into an existing file: in every crash state the target is
    either no LUKS volume at all, or one that opens to exactly the source
    (the header is written last, after the data is synced)."""
    plain = os.urandom(1 << 20)
    src = write_file(os.path.join(workdir, "s.raw"), plain)
    dst = write_file(os.path.join(workdir, "t.img"), os.urandom(4 << 20))
    pristine = os.path.join(workdir, "pristine.img")
    shutil.copyfile(dst, pristine)
    with recording() as ops:
        pyqcrypt.convert(src, dst, dst_format="luks", existing_target=True, dst_passphrase=b"pw",
                         iterations=1000)
    scratch = os.path.join(workdir, "r")
    os.mkdir(scratch)
    replayed = 0
    for k, state in crash_states(ops):
        image = replay(state, {os.path.realpath(dst): pristine}, scratch)[os.path.realpath(dst)]
        try:
            img = pyqcrypt.open(image, passphrase=b"pw", format="luks")
        except pyqcrypt.Error:
            replayed += 1
            continue                           # no volume: nothing half-made opens
        with img:
            assert img.read(0, len(plain)) == plain, "crash state %d opens with wrong data" % replayed
        replayed += 1
    print("convert -n -O luks: %d operations, %d crash states replayed" % (len(ops), replayed))
