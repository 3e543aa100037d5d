# SPDX-License-Identifier: LGPL-2.1-or-later
"""I/O faults (ENOSPC or EIO at the Nth write, EIO at the Nth sync; the
disk stays failed afterwards) injected into create, convert, keyslot
changes and qcow2 writes.  After every fault: a pyqcrypt.Error, no
half-made destination, every passphrase valid before still unlocks,
acknowledged data reads back, qemu-img check finds no corruption."""

import errno
import json
import os
import shutil
import subprocess

import pytest

import pyqcrypt
from pyqcrypt import luks, storage
from pyqcrypt.qcow2 import create_qcow2

from conftest import luks_opens, tool, two_key_volume

PW, PW2, PW3 = b"alpha", b"bravo", b"charlie"
KINDS = [("write", errno.ENOSPC), ("write", errno.EIO), ("sync", errno.EIO)]


def _injector(kind, n, err):
    """Fail op number n of *kind* and every later one; count ops."""
    seen = {"write": 0, "sync": 0, "truncate": 0}

    def hook(op, st, offset, length):
        seen[op] += 1
        if op == kind and seen[op] >= n:
            raise OSError(err, os.strerror(err))
    return hook, seen


def _count(fn, kind):
    hook, seen = _injector(kind, 1 << 30, 0)
    with storage.injected_faults(hook):
        fn()
    return seen[kind]


def _files(d):
    return sorted(f for f in os.listdir(d))


def _remove_probes(d):
    for f in _files(d):
        if f.startswith("probe"):
            os.unlink(os.path.join(d, f))


@pytest.mark.parametrize("what", ["qcow2-luks", "luks", "qcow2-datafile"])
def test_create_leaves_nothing(workdir, what):
    def create(name):
        path = os.path.join(workdir, name)
        if what == "luks":
            pyqcrypt.create(path, 1 << 20, "luks", passphrase=PW, iterations=1000)
        else:
            kw = dict(data_file=os.path.join(workdir, name + ".data"), data_file_raw=True) \
                if what == "qcow2-datafile" else {}
            create_qcow2(path, 4 << 20, encrypt_format="luks", passphrase=PW, iterations=1000, **kw)
    before = _files(workdir)
    faults = 0
    for kind, err in KINDS:
        total = _count(lambda: create("probe"), kind)
        _remove_probes(workdir)
        for n in range(1, total + 1):
            hook, _ = _injector(kind, n, err)
            with storage.injected_faults(hook):
                with pytest.raises(pyqcrypt.Error):
                    create("new")
            assert _files(workdir) == before, (kind, n)
            faults += 1
    print("create %s: %d faults" % (what, faults))


def _add(area):
    _, mk = luks.unlock(area, PW)
    with mk:
        luks.add_key(area, mk, PW3, iterations=1000)


def _amend_remove(area):
    # qemu-img amend's state=inactive,old-secret form, through the library
    for n in area.header.active_slots():
        mk = luks.try_slot(area, n, PW2)
        if mk is not None:
            mk.wipe()
            luks.kill_slot(area, n)


KEYSLOT_OPS = {
    "add-key": (_add, {PW, PW2}),
    "remove-key": (lambda a: luks.remove_key(a, PW2), {PW}),
    "change-key": (lambda a: luks.change_key(a, PW2, PW3, iterations=1000), {PW}),
    "amend-inactive": (_amend_remove, {PW}),
}


@pytest.mark.parametrize("name", sorted(KEYSLOT_OPS))
def test_keyslot_ops_survive_faults(workdir, name):
    op, must_open = KEYSLOT_OPS[name]
    base = two_key_volume(os.path.join(workdir, "v.luks"), PW, PW2)
    faults = 0
    for kind, err in KINDS:
        probe = os.path.join(workdir, "probe.luks")
        shutil.copy(base, probe)

        def run_op(path=probe):
            with luks.open_area(path, writable=True) as area:
                op(area)
        total = _count(run_op, kind)
        for n in range(1, total + 1):
            vol = os.path.join(workdir, "f.luks")
            shutil.copy(base, vol)
            hook, _ = _injector(kind, n, err)
            with storage.injected_faults(hook):
                with pytest.raises(pyqcrypt.StorageError):
                    run_op(vol)
            for pw in must_open:
                assert luks_opens(vol, pw), (name, kind, n, pw)
            if name == "change-key":
                assert luks_opens(vol, PW2) or luks_opens(vol, PW3)
            faults += 1
    print("%s: %d faults" % (name, faults))


def _qemu_check_ok(path, pw):
    proc = subprocess.run([tool("qemu-img"), "check", "--output=json", "--object",
                           "secret,id=s,data=%s" % pw.decode(), "--image-opts",
                           "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path],
                          capture_output=True, text=True)
    assert proc.returncode in (0, 3), proc.stderr
    return json.loads(proc.stdout).get("corruptions", 0) == 0


def test_qcow2_writes_survive_faults(workdir):
    base = os.path.join(workdir, "base.qcow2")
    create_qcow2(base, 16 << 20, cluster_size=4096, encrypt_format="luks", passphrase=PW,
                 iterations=1000)
    with pyqcrypt.open(base, passphrase=PW, writable=True) as img:
        img.write(0, b"A" * 50000)                 # acknowledged before any fault

    def workload(path):
        with pyqcrypt.open(path, passphrase=PW, writable=True) as img:
            img.write(40000, b"B" * 20000)         # in place and new clusters
            img.write(5 << 20, b"C" * 300000)      # new L2 table
            img.flush()

    faults = 0
    for kind, err in KINDS:
        probe = os.path.join(workdir, "probe.qcow2")
        shutil.copy(base, probe)
        total = _count(lambda: workload(probe), kind)
        for n in range(1, total + 1):
            path = os.path.join(workdir, "f.qcow2")
            shutil.copy(base, path)
            hook, _ = _injector(kind, n, err)
            with storage.injected_faults(hook):
                with pytest.raises(pyqcrypt.StorageError):
                    workload(path)
            assert _qemu_check_ok(path, PW), (kind, n)
            with pyqcrypt.open(path, passphrase=PW) as img:
                assert img.read(0, 40000) == b"A" * 40000
                # The unacknowledged in-place write may be partly applied,
                # but only ever as whole new sectors: old or new, never noise.
                assert set(img.read(40000, 10000)) <= {0x41, 0x42}
            faults += 1
    print("qcow2 writes: %d faults" % faults)


def test_convert_leaves_nothing(workdir):
    src = os.path.join(workdir, "src.luks")
    pyqcrypt.create(src, 2 << 20, "luks", passphrase=PW, iterations=1000)
    with pyqcrypt.open(src, passphrase=PW, writable=True) as img:
        img.write(0, os.urandom(2 << 20))
    src_bytes = open(src, "rb").read()
    jobs = {
        "keep": lambda dst: pyqcrypt.convert(src, dst, keep_ciphertext=True),
        "reencrypt": lambda dst: pyqcrypt.convert(src, dst, src_passphrase=PW, dst_passphrase=PW2,
                                                  iterations=1000),
    }
    faults = 0
    for name, job in jobs.items():
        for kind, err in KINDS:
            total = _count(lambda: job(os.path.join(workdir, "probe.qcow2")), kind)
            _remove_probes(workdir)
            for n in range(1, total + 1):
                hook, _ = _injector(kind, n, err)
                with storage.injected_faults(hook):
                    with pytest.raises(pyqcrypt.Error):
                        job(os.path.join(workdir, "dst.qcow2"))
                assert _files(workdir) == ["src.luks"], (name, kind, n, _files(workdir))
                faults += 1
    assert open(src, "rb").read() == src_bytes
    print("convert: %d faults" % faults)
