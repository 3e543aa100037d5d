# SPDX-License-Identifier: LGPL-2.1-or-later
"""A key derivation that takes long is said, and can be stopped (issue 21,
item 4): a LUKS1 keyslot whose iteration count makes PBKDF2 run for about
a minute; after a few seconds stderr names the keyslot being tried, and
SIGTERM or SIGINT ends the process within a second, not after the
derivation."""

import os
import signal
import struct
import subprocess
import sys
import time

import pytest

import pyqcrypt

PW = b"slow passphrase"


@pytest.fixture
def slow_volume(workdir):
    vol = os.path.join(workdir, "slow.luks")
    pyqcrypt.create(vol, 1 << 20, format="luks", passphrase=PW, iterations=1000)
    with open(vol, "r+b") as fh:
        fh.seek(208 + 4)                                # keyslot 0's iteration count
        fh.write(struct.pack(">I", 120_000_000))        # ~a minute of PBKDF2-SHA256
    key = os.path.join(workdir, "k")
    with open(key, "wb") as fh:
        fh.write(b"not the passphrase")
    return vol, key


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_long_derivation_is_named_and_stops_at_once(slow_volume, sig):
    vol, key = slow_volume
    proc = subprocess.Popen([sys.executable, "-m", "pyqcrypt", "test-passphrase", "--key-file",
                             key, vol], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline().decode()          # blocks until the notice comes
        assert "trying keyslot 0 of %s" % vol in line, line
        assert "120000000" in line
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 2.0, took                              # not after the whole derivation
    assert proc.returncode != 0
    rest = proc.stderr.read().decode()
    assert "Traceback" not in rest, rest


def test_api_derivation_interrupted_by_keyboard_interrupt(slow_volume):
    """KeyboardInterrupt reaches an API caller during a long derivation."""
    vol, _ = slow_volume
    code = ("import os, signal, threading, pyqcrypt\n"
            "threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
            "try:\n"
            "    pyqcrypt.open(%r, passphrase=b'x')\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted')\n" % vol)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "interrupted", (out.stdout, out.stderr)
    assert time.monotonic() - start < 8
