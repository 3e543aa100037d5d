# SPDX-License-Identifier: LGPL-2.1-or-later
"""What packagers rely on: a reproducible man page, a bash completion that
knows every command, py.typed, one version everywhere."""

import argparse
import os
import shutil
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt.cli import build_parser
from pyqcrypt.completion import render as render_completion
from pyqcrypt.manpage import render as render_manpage


def test_man_page_date_is_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")       # 2023-11-14 22:13:20 UTC
    first = render_manpage()
    assert first.startswith('.TH PYQCRYPT 1 "2023-11-14" "pyqcrypt %s"' % pyqcrypt.__version__)
    assert render_manpage() == first
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")              # UTC+14: still the UTC date
    assert render_manpage() == first


def test_completion_knows_every_command_and_option():
    script = render_completion()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, cmd in sub.choices.items():
        assert "\n        %s)\n" % name in script, name
        for action in cmd._actions:
            for opt in action.option_strings:
                assert opt in script, (name, opt)


def _complete(script_path, *words):
    """COMPREPLY for the command line *words* (the last one being typed)."""
    driver = ('. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); '
              '_pyqcrypt; printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run(["bash", "-c", driver, "bash", script_path, *words],
                          capture_output=True, text=True, check=True)
    return set(proc.stdout.split())


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_completion_completes(tmp_path):
    path = tmp_path / "pyqcrypt"
    path.write_text(render_completion())
    assert _complete(str(path), "pyqcrypt", "conv") == {"convert"}
    assert _complete(str(path), "pyqcrypt", "--debug", "self") == {"selftest"}
    assert _complete(str(path), "pyqcrypt", "convert", "--keep") == {"--keep-ciphertext"}
    assert _complete(str(path), "pyqcrypt", "convert", "-O", "q") == {"qcow2"}
    (tmp_path / "disk.qcow2").write_bytes(b"")
    os.chdir(tmp_path)
    assert _complete(str(path), "pyqcrypt", "info", "dis") == {"disk.qcow2"}


def test_modules_run_as_scripts():
    for module, start in (("pyqcrypt.manpage", ".TH PYQCRYPT 1"), ("pyqcrypt.completion", "# bash")):
        proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.startswith(start), proc.stderr


def test_typed_and_versioned():
    here = os.path.dirname(pyqcrypt.__file__)
    assert os.path.exists(os.path.join(here, "py.typed"))
    try:
        from importlib.metadata import version
    except ImportError:                                         # pragma: no cover
        pytest.skip("importlib.metadata needs Python 3.8")
    assert version("pyqcrypt") == pyqcrypt.__version__
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == "pyqcrypt " + pyqcrypt.__version__
