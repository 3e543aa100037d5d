# SPDX-License-Identifier: LGPL-2.1-or-later
"""The public API as a user's type checker sees it: tests/data/
api_user_script.py, a script using every public function, passes
``mypy --strict`` and runs; a type error or a positional option in such a
script is reported; every public name has a docstring with its
parameters, exceptions and an example.

mypy is pointed at this tree's pyqcrypt with MYPYPATH and reads it with
``--follow-imports=silent``: the types of pyqcrypt are used, the findings
inside pyqcrypt are not reported, which is how mypy treats an installed
package.  Only the user's script is held to --strict.
"""

import inspect
import os
import re
import shutil
import subprocess
import sys

import pytest

import pyqcrypt

SCRIPT = os.path.join(os.path.dirname(__file__), "data", "api_user_script.py")
PUBLIC = ["open", "create", "convert", "info", "add_key", "remove_key", "change_key", "kill_slot",
          "check_passphrase", "erase", "header_backup", "header_restore"]


def _mypy(workdir, script):
    pytest.importorskip("mypy", reason="mypy is not installed (the typing tests need it)")
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(pyqcrypt.__file__))
    if os.path.basename(parent) not in ("site-packages", "dist-packages"):
        env["MYPYPATH"] = parent        # a source tree; an installed pyqcrypt is found as installed
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--cache-dir", os.path.join(workdir, ".mypy_cache"), script],
                          capture_output=True, text=True, env=env, cwd=workdir)


def test_user_script_passes_mypy_strict(workdir):
    proc = _mypy(workdir, SCRIPT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "Success: no issues found in 1 source file"


def test_mypy_reports_what_the_api_forbids(workdir):
    """The check can fail: a wrong result type, an unknown keyword and an
    option given by position are each an error."""
    script = os.path.join(workdir, "misuse.py")
    shutil.copy(SCRIPT, script)
    with open(script, "a") as fh:
        fh.write("\n\ndef misuse() -> None:\n"
                 "    slot: str = pyqcrypt.add_key('d.qcow2', b'a', b'b')\n"
                 "    pyqcrypt.remove_key('d.qcow2', b'a', slot=1)\n"
                 "    pyqcrypt.check_passphrase('d.qcow2', b'a', None, 3)\n"
                 "    pyqcrypt.info('d.qcow2').format = 'raw'\n"
                 "    print(slot)\n")
    proc = _mypy(workdir, script)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert 'expression has type "int", variable has type "str"' in out
    assert 'Unexpected keyword argument "slot" for "remove_key"' in out
    assert 'Too many positional arguments for "check_passphrase"' in out
    assert re.search(r'Property "format" defined in "ImageInfo" is read-only|'
                     r'Cannot assign to .*"format"', out), out
    assert "Found 4 errors in 1 file" in out


def test_user_script_runs(workdir):
    proc = subprocess.run([sys.executable, SCRIPT, workdir], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "qcow2: added 1, changed into 2, removed 0, cipher aes-xts-plain64",
        "keyslots in use: [0]",
        "detached header opened in slot 0"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_function_is_documented_and_used(name):
    func = getattr(pyqcrypt, name)
    doc = inspect.getdoc(func) or ""
    assert "Example::" in doc and "Raises" in doc, name
    returns = inspect.signature(func).return_annotation
    if returns not in (None, "None"):
        assert "Returns" in doc, name
    assert "see the module docstring" not in doc
    with open(SCRIPT) as fh:
        assert "pyqcrypt.%s(" % name in fh.read()


def test_keyword_only_options():
    for name in ("add_key", "remove_key", "change_key", "kill_slot", "check_passphrase", "erase",
                 "header_backup", "header_restore", "info"):
        params = inspect.signature(getattr(pyqcrypt, name)).parameters.values()
        options = [p.name for p in params if p.default is not inspect.Parameter.empty]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params
                   if p.name in options), name


def test_ships_py_typed():
    assert os.path.isfile(os.path.join(os.path.dirname(pyqcrypt.__file__), "py.typed"))
