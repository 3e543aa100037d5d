# SPDX-License-Identifier: LGPL-2.1-or-later
"""Loop devices for the tests: real block devices made from scratch files.

``loop_devices`` is a pytest fixture returning ``attach(path, offset=None,
sizelimit=None)``; every device it attaches is detached when the test ends,
whether it passed or failed.  Tests skip, naming the reason, only where loop
devices truly cannot be had (not root, no /dev/loop-control, or the kernel
refuses).
"""

import os
import shutil
import subprocess
import time

import pytest


def _losetup():
    return shutil.which("losetup") or "/usr/sbin/losetup"


def loop_unavailable():
    """Why loop devices cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "loop devices need root"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop driver not available)"
    if not os.path.exists(_losetup()):
        return "losetup is not installed (Debian package mount)"
    return None


def _attach(path, offset=None, sizelimit=None, read_only=False):
    args = [_losetup(), "-f", "--show"]
    if offset is not None:
        args += ["-o", str(offset)]
    if sizelimit is not None:
        args += ["--sizelimit", str(sizelimit)]
    if read_only:
        args.append("-r")
    last = None
    for _ in range(10):          # parallel tests race for the same free device
        proc = subprocess.run(args + [path], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.strip()
        last = proc.stderr.strip()
        time.sleep(0.2)
    pytest.skip("cannot attach a loop device here: %s" % last)


def detach(dev):
    for _ in range(20):
        proc = subprocess.run([_losetup(), "-d", dev], capture_output=True, text=True)
        if proc.returncode == 0 or "No such device" in proc.stderr:
            return
        time.sleep(0.1)          # still busy (a closing process): try again
    raise AssertionError("could not detach %s: %s" % (dev, proc.stderr))


@pytest.fixture
def loop_devices():
    """attach(path, offset=None, sizelimit=None) -> /dev/loopN, detached at
    teardown even when the test fails."""
    why = loop_unavailable()
    if why:
        pytest.skip(why)
    attached = []

    def attach(path, offset=None, sizelimit=None, read_only=False):
        dev = _attach(path, offset, sizelimit, read_only)
        attached.append(dev)
        return dev

    yield attach
    for dev in reversed(attached):
        detach(dev)


def flush(dev):
    """Drop a device's cached blocks, so reads see what its backing file
    holds (needed only when a test writes the backing file directly)."""
    subprocess.run(["blockdev", "--flushbufs", dev], check=False, capture_output=True)
