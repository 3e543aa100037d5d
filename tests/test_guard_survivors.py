# SPDX-License-Identifier: LGPL-2.1-or-later
"""Tests for mutants ci/mutate.py found surviving (issue 21): each pins a
behaviour no other test looked at."""

import os

import pytest

import pyqcrypt
from pyqcrypt.crypto.keybuf import SecretBuffer, qemu_can_use
from pyqcrypt.luks.luks2 import luks_version
from pyqcrypt.storage import Storage


def test_one_byte_secrets_compare_by_value():
    with SecretBuffer.from_bytes(b"a") as a, SecretBuffer.from_bytes(b"b") as b:
        assert not a.equals(b) and not a.equals(b"b") and a.equals(b"a")
    with SecretBuffer.from_bytes(b"xyz") as c:
        assert c.byte(0) == ord("x") and c.byte(2) == ord("z")
        with pytest.raises(Exception):
            c.byte(3)


@pytest.mark.parametrize("data,ok", [
    ("\U0001F600".encode(), True),            # a 4-byte sequence
    (b"\xf0\x9f\x98", False),                # cut short
    (b"\xf1\x7f\x80\x80", False),            # a continuation byte below 0x80
    (b"\xf1\x80\x80\x80", True),
    (b"ok\x00", False),                      # NUL: GLib refuses it, so QEMU does
])
def test_qemu_secret_rules(data, ok):
    assert qemu_can_use(data) is ok


def test_read_only_storage_refuses_writes(workdir):
    path = os.path.join(workdir, "ro.img")
    with open(path, "wb") as fh:
        fh.write(bytes(8192))
    with Storage(path) as st:
        for call in (lambda: st.pwrite(0, b"x"), lambda: st.truncate(4096)):
            with pytest.raises(pyqcrypt.Error, match="read-only"):
                call()
        with pytest.raises(pyqcrypt.Error):
            st.pread(-1, 10)
    with open(path, "rb") as fh:
        assert fh.read() == bytes(8192)


def test_luks_version_needs_the_magic(workdir):
    path = os.path.join(workdir, "not.luks")
    with open(path, "wb") as fh:
        fh.write(b"NOTLUK\x00\x02" + bytes(504))
    assert luks_version(path) is None
    with open(path, "wb") as fh:
        fh.write(b"LUKS\xba\xbe\x00\x02" + bytes(504))
    assert luks_version(path) == 2
    # a file that cannot be read is not "no LUKS" (tests/test_probe.py)
    with pytest.raises(pyqcrypt.Error, match="missing: No such file"):
        luks_version(os.path.join(workdir, "missing"))


def test_iteration_limit_is_inclusive(monkeypatch):
    from pyqcrypt.luks import keyslots
    monkeypatch.setenv("PYQCRYPT_MAX_ITERATIONS", "5000")
    keyslots._check_cost(5000, "keyslot 0 iterations", None)        # at the limit: allowed
    with pytest.raises(pyqcrypt.Error):
        keyslots._check_cost(5001, "keyslot 0 iterations", None)


def test_luks2_pbkdf_values_of_zero_are_refused():
    from pyqcrypt.luks.luks2_format import Pbkdf
    for kw in ({"iter_time_ms": 0}, {"memory_kb": 0}, {"threads": 0}):
        with pytest.raises(pyqcrypt.Error):
            Pbkdf("argon2id", **kw)
