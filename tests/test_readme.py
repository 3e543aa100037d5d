# SPDX-License-Identifier: LGPL-2.1-or-later
"""The README runs as pasted: every shell block marked ``<!-- runnable -->``
is run with bash (``-euo pipefail``) in a scratch directory, in order, each
after the ones before it as a reader would paste them, with ``pyqcrypt`` on
PATH being the pyqcrypt under test.  The blocks that cannot run here
(installing packages) are checked for what they name: the package files a
release builds and the version they carry."""

import os
import re
import subprocess
import sys

import pytest

import pyqcrypt
from conftest import tool

pytestmark = pytest.mark.interop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _readme():
    if not os.path.exists(README):          # an installed copy of tests/ without the source tree
        pytest.skip("README.md is not beside the tests (installed test suite)")
    with open(README, encoding="utf-8") as fh:
        return fh.read()


def runnable_blocks(text):
    """The shell blocks a ``<!-- runnable -->`` line marks, in order."""
    return re.findall(r"^<!-- runnable -->\n```sh\n(.*?)^```", text, re.S | re.M)


def shell_blocks(text):
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def _path_with_pyqcrypt(workdir):
    """PATH with a ``pyqcrypt`` that runs this interpreter's pyqcrypt in
    front, and the directories of the real tools the blocks call."""
    bindir = os.path.join(workdir, "bin")
    os.mkdir(bindir)
    shim = os.path.join(bindir, "pyqcrypt")
    with open(shim, "w") as fh:
        fh.write('#!/bin/sh\nexec "%s" -m pyqcrypt "$@"\n' % sys.executable)
    os.chmod(shim, 0o755)
    dirs = [bindir] + sorted({os.path.dirname(tool(name)) for name in ("cryptsetup", "qemu-img")})
    return os.pathsep.join(dirs + [os.environ.get("PATH", "/usr/bin:/bin")])


def test_readme_has_runnable_blocks():
    blocks = runnable_blocks(_readme())
    assert len(blocks) >= 2, "the flagship blocks lost their <!-- runnable --> mark"
    assert any("--keep-ciphertext" in block for block in blocks)


def test_runnable_blocks_run_as_pasted(workdir):
    env = dict(os.environ, PATH=_path_with_pyqcrypt(workdir), HOME=workdir)
    for number, block in enumerate(runnable_blocks(_readme()), 1):
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=workdir, env=env,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        assert run.returncode == 0, "README runnable block %d failed (exit %d):\n%s\n%s%s" % (
            number, run.returncode, block, run.stdout, run.stderr)
    # what the blocks claim, checked from their own output
    assert "cryptsetup opens back.img" in run.stdout
    for name in ("disk.qcow2", "old.qcow2", "old.qcow2.data", "back.img"):
        assert os.path.exists(os.path.join(workdir, name)), name


def debian_package_version():
    """The version the Debian packages of this tree carry (its changelog's)."""
    with open(os.path.join(ROOT, "packaging", "debian", "changelog")) as fh:
        return re.match(r"\S+ \(([^)]+)\)", fh.readline()).group(1)


def test_install_block_names_what_a_release_builds():
    text = _readme()
    version = pyqcrypt.__version__
    debian_version = debian_package_version()
    runnable = runnable_blocks(text)
    install = "\n".join(block for block in shell_blocks(text) if block not in runnable)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip() \
        if os.path.exists("/usr/bin/dpkg") else "amd64"
    assert "./python3-pyqcrypt_%s_%s.deb" % (debian_version, arch) in install
    assert "./pyqcrypt_%s_all.deb" % debian_version in install
    assert "pyqcrypt-%s.tar.gz" % version in install
    for package in ("libssl-dev", "libcryptsetup-dev", "libgcrypt20-dev", "libzstd-dev", "nettle-dev"):
        assert package in install, package
    assert ". .venv/bin/activate" in install


def test_readme_starts_with_what_it_is():
    first = _readme().split("\n## ", 1)[0]
    assert "qcow2" in first and "LUKS" in first
    assert "ci/" not in first and "PYQCRYPT_" not in first, "internals before what the tool is"
