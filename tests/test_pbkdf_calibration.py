# SPDX-License-Identifier: LGPL-2.1-or-later
"""How new LUKS1 keyslots are priced, as the tool pyqcrypt mirrors prices
them (issue 21): cryptsetup's verbs time OpenSSL's PBKDF2 for the key's
length and give the master-key digest a fixed 125 ms; qemu-img's verbs
give the digest, timed for its 20-byte output, 1/8 of the keyslot time.
The benchmark is replaced by fixed rates here, so nothing is timed: the
ratios against the real tools are printed by ci/bench_pbkdf.py."""

import pytest

import pyqcrypt
from pyqcrypt.luks import keyslots


@pytest.fixture
def rates(monkeypatch):
    """benchmark_for answers 1e6 iterations/s per output block (32 bytes),
    and records what was asked."""
    asked = []

    def fake(hash_name, iter_time_ms, key_bytes=32, backend=None):
        asked.append((key_bytes, backend))
        return 1_000_000 // ((key_bytes + 31) // 32)
    monkeypatch.setattr(keyslots, "benchmark_for", fake)
    import pyqcrypt.luks.format as fmt
    monkeypatch.setattr(fmt, "benchmark_for", fake)
    return asked


def test_cryptsetup_calibration(rates):
    assert keyslots.slot_iterations("sha256", 64, 2000, calibration="cryptsetup") == 1_000_000
    assert keyslots.digest_iterations("sha256", 64, 2000, calibration="cryptsetup") == 62_500
    assert keyslots.digest_iterations("sha256", 64, 100, calibration="cryptsetup") == 62_500
    assert all(backend == "openssl" for _, backend in rates)


def test_qemu_calibration(rates):
    assert keyslots.slot_iterations("sha256", 64, 2000, calibration="qemu") == 1_000_000
    assert keyslots.digest_iterations("sha256", 64, 2000, calibration="qemu") == 250_000
    assert keyslots.digest_iterations("sha256", 64, 80, calibration="qemu") == 10_000
    assert (20, None) in rates and all(backend is None for _, backend in rates)


def test_creates_follow_their_tool(rates, workdir):
    import os
    import struct
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, 1 << 20, format="luks", passphrase=b"pw", iter_time_ms=2000)
    with open(vol, "rb") as fh:
        head = fh.read(592)
    digest_iter = struct.unpack_from(">I", head, 164)[0]
    slot_iter = struct.unpack_from(">I", head, 212)[0]
    assert (digest_iter, slot_iter) == (250_000, 1_000_000)          # qemu-img create's rules
    dev = os.path.join(workdir, "d.img")
    with open(dev, "wb") as fh:
        fh.truncate(8 << 20)
    from pyqcrypt.luks.device import format_device
    format_device(dev, b"pw", iter_time_ms=2000)
    with open(dev, "rb") as fh:
        head = fh.read(592)
    assert struct.unpack_from(">I", head, 164)[0] == 62_500            # cryptsetup's 125 ms
    assert struct.unpack_from(">I", head, 212)[0] == 1_000_000
