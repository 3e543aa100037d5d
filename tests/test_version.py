# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt --version``: pyqcrypt's line first and unchanged, then each
backend library's version as the loaded library states it, checked
against what the system says (``openssl version``, ``cryptsetup
--version``, pkg-config's module versions), so a wrong version fails."""

import json
import os
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt import _native, backends
from pyqcrypt.errors import MissingDependency

from conftest import run, tool

KEYS = ["openssl", "libcryptsetup", "libgcrypt", "nettle", "libzstd"]
LIBRARY_FILES = {"openssl": "libcrypto.so", "libcryptsetup": "libcryptsetup.so", "libgcrypt": "libgcrypt.so",
                 "nettle": "libnettle.so", "libzstd": "libzstd.so"}


def pyqcrypt_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", *args], capture_output=True, text=True)
    return proc


def modversion(package):
    return run(["pkg-config", "--modversion", package], text=True).stdout.strip()


def system_versions():
    """What the system says, asked without pyqcrypt."""
    openssl = run(["openssl", "version"], text=True).stdout.split()[1]
    cryptsetup = run([tool("cryptsetup"), "--version"], text=True).stdout.split()[1]
    assert cryptsetup == modversion("libcryptsetup")
    return {"openssl": openssl, "libcryptsetup": cryptsetup, "libgcrypt": modversion("libgcrypt"),
            "nettle": modversion("nettle"), "libzstd": modversion("libzstd")}


@pytest.mark.parametrize("spelling", [["--version", "--output", "json"], ["--version", "--output=json"],
                                      ["--output=json", "-V"]])
def test_json_versions_are_the_systems(spelling):
    proc = pyqcrypt_cli(*spelling)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["pyqcrypt"] == pyqcrypt.__version__
    assert doc["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert list(doc["backends"]) == KEYS
    want = system_versions()
    for key, entry in doc["backends"].items():
        assert entry["built"] is True, entry
        if key == "nettle":         # Nettle states major.minor only
            assert want[key] == entry["version"] or want[key].startswith(entry["version"] + "."), entry
        else:
            assert entry["version"] == want[key], (key, entry, want[key])
        assert os.path.basename(entry["library"]).startswith(LIBRARY_FILES[key]), entry
        assert os.path.exists(entry["library"]), entry


def test_text_keeps_the_first_line_and_names_each_backend():
    proc = pyqcrypt_cli("--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "pyqcrypt %s" % pyqcrypt.__version__      # what scripts read
    assert lines[1].startswith("Python %d.%d.%d " % sys.version_info[:3])
    want = system_versions()
    names = {"openssl": "OpenSSL", "libcryptsetup": "libcryptsetup", "libgcrypt": "libgcrypt",
             "nettle": "Nettle", "libzstd": "libzstd"}
    for line, key in zip(lines[2:], KEYS):
        version = want[key] if key != "nettle" else ".".join(want[key].split(".")[:2])
        assert line.startswith("%s %s (" % (names[key], version)), (line, want[key])
        assert " built; " in line
    assert len(lines) == 2 + len(KEYS)
    assert pyqcrypt_cli("-V").stdout == proc.stdout


def test_output_without_version_is_a_usage_error(workdir):
    proc = pyqcrypt_cli("--output", "json", "info", os.path.join(workdir, "none"))
    assert proc.returncode == 1 and "--output goes with --version" in proc.stderr


def test_a_module_that_is_not_built_says_why(monkeypatch):
    real = _native.load

    def load(name):
        if name in ("zstd", "gcrypt"):
            raise MissingDependency("%s: install it" % name)
        return real(name)
    monkeypatch.setattr(_native, "load", load)
    found = {b.key: b for b in backends.backend_versions()}
    for key in ("libzstd", "libgcrypt", "nettle"):
        assert found[key].built is False and found[key].version is None, found[key]
    assert found["libzstd"].detail == "zstd: install it"
    assert "not built" in found["nettle"].detail
    assert found["openssl"].built and found["libcryptsetup"].built
    text = backends.version_lines("0")
    assert "libzstd: not built (zstd: install it)" in text


PROBE_TWICE = """
import json
from pyqcrypt import backends
first = {b.key: b for b in backends.backend_versions()}["libcryptsetup"]
backends._cryptsetup_line = None          # forget what it said: it will not say it again
again = {b.key: b for b in backends.backend_versions()}["libcryptsetup"]
print(json.dumps([first.version, again.version, again.built, again.detail, backends.summary()]))
"""


def test_libcryptsetup_that_no_longer_states_its_version_is_unknown():
    """libcryptsetup states its release once per process (a fresh one
    here): asked again after that, the version is unknown, not guessed."""
    proc = subprocess.run([sys.executable, "-c", PROBE_TWICE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    first, again, built, detail, summary = json.loads(proc.stdout)
    assert first == system_versions()["libcryptsetup"]
    assert built and again is None and "did not state" in detail
    assert "libcryptsetup (version unknown)" in summary
