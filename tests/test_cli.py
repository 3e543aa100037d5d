# SPDX-License-Identifier: LGPL-2.1-or-later
"""The pyqcrypt command: benchmark output and error conventions."""

import subprocess
import sys

import pytest

from pyqcrypt import cli


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *args],
                          capture_output=True, text=True)


def test_benchmark_one_cipher():
    proc = _run("benchmark", "-c", "aes-xts-plain64", "-s", "512", "--hash", "sha256",
                "--time", "0.05")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# Tests are approximate")
    assert any(l.startswith("PBKDF2-sha256") and "iterations per second for 256-bit key" in l
               for l in lines)
    row = [l for l in lines if "aes-xts-plain64" in l][0].split()
    assert row[1] == "512b" and row[3] == "MiB/s" and float(row[2]) > 0


def test_benchmark_unavailable_cipher_says_why():
    proc = _run("benchmark", "-c", "serpent-xts-plain64", "-s", "512", "--time", "0.05")
    assert proc.returncode == 0
    assert "N/A" in proc.stdout and "serpent" in proc.stdout


@pytest.mark.parametrize("args,pattern", [
    (("benchmark", "-c", "aes-xyz-plain64"), "xyz"),
    (("benchmark", "-c", "aes-xts-plain64", "-s", "100"), "bits"),
    (("benchmark", "--threads", "0"), "thread"),
])
def test_errors_are_one_line_without_traceback(args, pattern):
    proc = _run(*args)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyqcrypt: ") and pattern in err[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback():
    proc = _run("--debug", "benchmark", "-c", "aes-xyz-plain64")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_console_script_entry_point():
    assert callable(cli.main)
    assert cli.build_parser().prog == "pyqcrypt"
