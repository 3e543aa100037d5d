# SPDX-License-Identifier: LGPL-2.1-or-later
"""Start-up (issue 22): a command imports only the code it runs.

Scripts and CI loops call ``pyqcrypt info`` thousands of times; what it
imports is what it costs.  Each case runs the command in a fresh
interpreter and lists the pyqcrypt modules it loaded: ``import
pyqcrypt.cli`` loads the command line alone, ``--version`` no format
code, and ``info`` neither conversion, nor the pipeline, nor any code that
writes qcow2 or LUKS (creating, allocating, formatting, keyslot changes).
The time itself is measured by ci/bench_startup.py, not here."""

import json
import os
import subprocess
import sys

import pytest

from conftest import cs_format, qemu_img, write_file

PROBE = r"""
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: json.dump(sorted(m for m in sys.modules if m.startswith("pyqcrypt")
                                         or m in ("dataclasses", "inspect")), open(out, "w")))
sys.argv = ["pyqcrypt"] + sys.argv[2:]
runpy.run_module("pyqcrypt", run_name="__main__")
"""

# Never needed to describe an image.
WRITERS = ("pyqcrypt.conversion", "pyqcrypt.pipeline", "pyqcrypt.qcow2.create",
           "pyqcrypt.qcow2.image", "pyqcrypt.qcow2.allocation", "pyqcrypt.qcow2.clusters",
           "pyqcrypt.qcow2.mapping", "pyqcrypt.luks.format", "pyqcrypt.luks.keyslots",
           "pyqcrypt.luks.luks2_format", "pyqcrypt.luks.luks2_keyslots", "pyqcrypt.luks.volume",
           "pyqcrypt.crypto.kdf", "pyqcrypt.crypto.sector")


def _loaded(workdir, *args):
    out = os.path.join(workdir, "modules.json")
    proc = subprocess.run([sys.executable, "-c", PROBE, out, *map(str, args)],
                          capture_output=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode()
    with open(out) as fh:
        return set(json.load(fh))


def _offenders(loaded, prefixes):
    return sorted(m for m in loaded for p in prefixes if m == p or m.startswith(p + "."))


def test_importing_the_cli_loads_only_the_cli(workdir):
    out = subprocess.run([sys.executable, "-c", "import sys, pyqcrypt.cli; print(' '.join(sorted("
                          "m for m in sys.modules if m.startswith('pyqcrypt'))))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert set(out) <= {"pyqcrypt", "pyqcrypt._lazy", "pyqcrypt.errors"} | {m for m in out
                                                          if m.startswith("pyqcrypt.cli")}, out


def test_version_loads_no_format_code(workdir):
    loaded = _loaded(workdir, "--version")
    assert not _offenders(loaded, ("pyqcrypt.qcow2", "pyqcrypt.luks", "pyqcrypt.image",
                                   "pyqcrypt.info_report") + WRITERS)


@pytest.mark.parametrize("kind", ["qcow2", "raw", "luks1", "luks2"])
def test_info_loads_no_writing_code(workdir, kind):
    path = os.path.join(workdir, "i." + kind)
    if kind == "qcow2":
        qemu_img("create", "-q", "-f", "qcow2", path, "1G")
    elif kind == "raw":
        write_file(path, bytes(1 << 20))
    elif kind == "luks1":
        path = cs_format(workdir, "i.luks1", b"startup")
    else:
        path = cs_format(workdir, "i.luks2", b"startup", size=24 << 20,
                         extra=("--type", "luks2", "--pbkdf", "pbkdf2"))
        with open(path, "rb") as fh:
            assert fh.read(8)[6:] == b"\x00\x02"
    loaded = _loaded(workdir, "info", path)
    assert "pyqcrypt.info_report" in loaded            # the probe sees what ran
    assert not _offenders(loaded, WRITERS), _offenders(loaded, WRITERS)
    # dataclasses imports inspect, ast, dis and tokenize: 6-9 ms of a
    # 70 ms run; the records on this path are pyqcrypt._record's.
    assert not loaded & {"dataclasses", "inspect"}, loaded & {"dataclasses", "inspect"}


@pytest.mark.parametrize("package", ["pyqcrypt", "pyqcrypt.crypto", "pyqcrypt.luks",
                                     "pyqcrypt.qcow2", "pyqcrypt.storage"])
def test_lazy_names_never_shadow_a_submodule(package):
    """A lazily exported name equal to a submodule's name would be the
    function or the module depending on what was imported first (the
    import system sets pkg.sub when it loads pkg.sub): ``from
    pyqcrypt.crypto import pbkdf2`` once returned the module."""
    import importlib
    import pkgutil
    pkg = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not set(pkg._LAZY) & submodules
    for name in pkg._LAZY:                       # and each resolves to what it names
        value = getattr(pkg, name)
        assert not isinstance(value, type(pkg)), (package, name)


def test_a_parser_built_for_one_command_is_that_command_of_the_whole_one():
    """main() builds only the command being run (building all of them is
    most of a short command's own time): each command's usage, help and
    defaults must be those of the whole parser."""
    from pyqcrypt import cli
    whole = cli.build_parser()
    commands = next(a for a in whole._actions if a.dest == "command").choices
    for name, full in commands.items():            # cryptsetup's names (luksDump) too
        one = cli.build_parser(only=name)
        mine = next(a for a in one._actions if a.dest == "command").choices
        assert name in mine and len({id(p) for p in mine.values()}) == 1
        assert mine[name].format_help() == full.format_help(), name
        assert mine[name]._defaults == full._defaults, name
    assert cli.build_parser(only="no-such-command") is None
    top = cli.build_parser(only="")
    assert not next(a for a in top._actions if a.dest == "command").choices
