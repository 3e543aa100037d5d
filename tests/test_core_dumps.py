# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keys never reach a core file.

A child process opens a LUKS volume whose master key the test chose, then
waits; the test sends SIGABRT with an unlimited core size and searches
whatever core file appears for either half of the XTS key.  The control
run (PYQCRYPT_ALLOW_CORE_DUMPS=1) must find the key there, which shows the
search can fail; the real run must not.
"""

import glob
import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest

import pyqcrypt

PW = b"core dump pass"

CHILD = textwrap.dedent("""
    import sys, time, pyqcrypt
    img = pyqcrypt.open(sys.argv[1], passphrase=sys.argv[2].encode())
    img.read(0, 4096)
    print("ready", flush=True)
    time.sleep(120)
""")


def _core_pattern():
    try:
        with open("/proc/sys/kernel/core_pattern") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _dump(workdir, vol, allow):
    env = dict(os.environ)
    env.pop("PYQCRYPT_ALLOW_CORE_DUMPS", None)
    if allow:
        env["PYQCRYPT_ALLOW_CORE_DUMPS"] = "1"
    for old in glob.glob(os.path.join(workdir, "core*")):
        os.unlink(old)

    def unlimited():
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, vol, PW.decode()], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, preexec_fn=unlimited)
    assert proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGABRT)
    proc.wait(timeout=60)
    cores = glob.glob(os.path.join(workdir, "core*"))
    data = b""
    for c in cores:
        with open(c, "rb") as fh:
            data += fh.read()
    return cores, data


def test_no_key_in_core_dumps(workdir):
    pattern = _core_pattern()
    if not pattern.startswith("core"):
        pytest.skip("core files go to %r here, not to the working directory" % pattern)
    key = os.urandom(64)
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, 1 << 20, "luks", passphrase=PW, iterations=1000, master_key=key)
    cores, data = _dump(workdir, vol, allow=True)
    if not cores:
        pytest.skip("this machine writes no core files even for dumpable processes")
    assert key[:32] in data or key[32:] in data, "control: the key should be in an unprotected core"
    cores, data = _dump(workdir, vol, allow=False)
    assert key[:32] not in data and key[32:] not in data
    assert PW not in data
