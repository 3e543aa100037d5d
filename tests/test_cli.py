# SPDX-License-Identifier: LGPL-2.1-or-later
"""The pyqcrypt command: benchmark output and error conventions."""

import argparse
import subprocess
import sys

import pytest

import pyqcrypt
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
    assert any(line.startswith("PBKDF2-sha256") and "iterations per second for 256-bit key" in line
               for line in lines)
    row = [line for line in lines if "aes-xts-plain64" in line][0].split()
    assert row[1] == "512b" and row[3] == "MiB/s" and float(row[2]) > 0
    assert row[-1] == "openssl"


@pytest.mark.parametrize("cipher,bits", [("serpent-xts-plain64", 512), ("twofish-xts-plain64", 256),
                                         ("aes-lrw-plain64", 256)])
def test_benchmark_lists_libgcrypt_ciphers(cipher, bits):
    from pyqcrypt._native import have_gcrypt
    if not have_gcrypt():
        pytest.skip("pyqcrypt built without libgcrypt")
    proc = _run("benchmark", "-c", cipher, "-s", str(bits), "--hash", "sha256", "--time", "0.05")
    assert proc.returncode == 0, proc.stderr
    row = [line for line in proc.stdout.splitlines() if cipher in line][0].split()
    assert row[1] == "%db" % bits and row[3] == "MiB/s" and float(row[2]) > 0
    assert float(row[4]) > 0 and row[-1] == "libgcrypt"


def test_benchmark_unavailable_cipher_says_why():
    proc = _run("benchmark", "-c", "cast6-xts-plain64", "-s", "512", "--time", "0.05")
    assert proc.returncode == 0
    assert "N/A" in proc.stdout and "cast6" in proc.stdout


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
    """The installed ``pyqcrypt`` script is cli.main, and runs."""
    import os
    from importlib.metadata import entry_points
    every = entry_points()
    scripts = (every.select(group="console_scripts") if hasattr(every, "select")      # Python >= 3.10
               else every.get("console_scripts", []))
    eps = [e for e in scripts if e.name == "pyqcrypt"]
    assert len(eps) == 1 and eps[0].load() is cli.main, eps
    script = os.path.join(os.path.dirname(sys.executable), "pyqcrypt")
    assert os.access(script, os.X_OK), "%s: the console script is not installed" % script
    proc = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "pyqcrypt %s" % pyqcrypt.__version__, proc


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag):
    """The first line stays pyqcrypt's alone (scripts read it); the backends
    follow (tests/test_version.py checks them)."""
    proc = _run(flag)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "pyqcrypt %s" % pyqcrypt.__version__


# Usage errors exit 1, as in qemu-img and cryptsetup: 2 means a wrong
# passphrase (and corruption for check).
USAGE_ERRORS = [
    (("info",), "required: filename"),
    (("check", "--bogus", "x.qcow2"), "unrecognized arguments: --bogus"),
    (("check", "--output", "xml", "x.qcow2"), "invalid choice"),
    (("frobnicate",), "invalid choice"),
    (("test-passphrase", "--key-fil", "k", "v.luks"), "unrecognized arguments: --key-fil"),
    # no abbreviations: --pbkdf-force would have become --pbkdf-force-iterations
    (("add-key", "--pbkdf-force", "1000", "v.luks", "k"), "unrecognized arguments"),
    (("add-key", "--pbkdf", "scrypt", "v.luks", "k"), "unknown PBKDF 'scrypt'"),
    (("format", "-q", "--type", "plain", "v.luks"), "plain devices have no LUKS header"),
    (("test-passphrase", "--type", "bogus", "v.luks"), "unknown device type"),
    (("kill-slot", "v.luks", "one"), "invalid int value"),
]


@pytest.mark.parametrize("args,message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_exit_1(args, message):
    proc = _run(*args)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert message in proc.stderr and proc.stderr.startswith("usage: pyqcrypt"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cryptsetup_spellings_accepted(workdir):
    """--pbkdf pbkdf2 and --type luks1 (what cryptsetup scripts pass) work."""
    import os
    key = os.path.join(workdir, "k")
    with open(key, "wb") as fh:
        fh.write(b"spelling pass")
    vol = os.path.join(workdir, "v.luks")
    with open(vol, "wb") as fh:
        fh.truncate(4 << 20)
    proc = _run("format", "-q", "--type", "luks1", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                "1000", "--key-file", key, vol)
    assert proc.returncode == 0, proc.stderr
    for args in (("test-passphrase", "--type", "luks1"), ("test-passphrase", "--type", "luks"),
                 ("dump", "--type", "luks1")):
        proc = _run(*args, "--key-file", key, vol)
        assert proc.returncode == 0, (args, proc.stderr)
    proc = _run("dump", "--type", "luks2", vol)
    assert proc.returncode == 1 and "does not hold a LUKS2 header" in proc.stderr
    # argon2 is LUKS2's: on this LUKS1 volume it is refused in words, nothing written
    before = open(vol, "rb").read(1 << 20)
    for args in (("add-key", "--pbkdf", "argon2id"), ("change-key", "--pbkdf", "argon2i"),
                 ("add-key", "--pbkdf-memory", "65536")):
        proc = _run(*args, "--key-file", key, vol, key)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "pbkdf2 only" in proc.stderr or "argon2 on LUKS2 only" in proc.stderr, proc.stderr
    assert open(vol, "rb").read(1 << 20) == before


def _commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub


def test_every_command_and_option_has_help_and_an_example():
    """Each command has a one-line summary, a description for users (not a
    docstring), an example epilog; each option and argument a help line."""
    parser, sub = _commands()
    summaries = {a.dest: a.help for a in sub._choices_actions}
    assert parser.epilog.startswith("examples:\n  pyqcrypt ")
    from pyqcrypt.cli.common import commands
    for name, _aliases, cmd in commands(sub):
        assert summaries.get(name) and "\n" not in summaries[name], name
        assert cmd.description and "``" not in cmd.description, name
        assert not cmd.allow_abbrev, name
        assert cmd.formatter_class is argparse.RawDescriptionHelpFormatter, name
        examples = cmd.epilog.splitlines()
        assert examples[0] == "examples:" and (examples[1] + " ").startswith("  pyqcrypt %s " % name), name
        for action in cmd._actions:
            assert action.help, (name, action.option_strings or action.dest)
    assert not parser.allow_abbrev


def test_convert_help_is_for_users():
    proc = _run("convert", "--help")
    assert proc.returncode == 0
    assert "``" not in proc.stdout and "over pyqcrypt.convert" not in proc.stdout
    assert "examples:\n  pyqcrypt convert " in proc.stdout


def test_star_import_keeps_builtin_open():
    namespace = {}
    exec("from pyqcrypt import *", namespace)
    assert "open" not in namespace and "convert" in namespace and "Error" in namespace
    assert pyqcrypt.open is pyqcrypt.image.open
