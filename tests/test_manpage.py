# SPDX-License-Identifier: LGPL-2.1-or-later
"""The man page is generated from the parser: every command and option in
--help is in it."""

import argparse
import re
import shutil
import subprocess
import sys

from pyqcrypt.cli import build_parser
from pyqcrypt.manpage import render


def test_every_command_and_option_documented():
    page = render()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert page.startswith(".TH PYQCRYPT 1")
    from pyqcrypt.cli.common import commands
    for name, aliases, cmd in commands(sub):
        assert ".SS %s" % name.replace("-", "\\-") in page
        for alias in aliases:
            assert "(%s)" % alias in page
        for action in cmd._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for opt in action.option_strings:
                assert opt.replace("-", "\\-") in page, (name, opt)
            if action.help:
                assert action.help.replace("\\", "\\\\").replace("-", "\\-") in page, (name, action.help)
        for example in cmd.epilog.splitlines()[1:]:             # shown as written
            assert "\n" + example[2:].replace("\\", "\\\\").replace("-", "\\-") + "\n" in page, example


def test_module_entry_point_and_man_renders():
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt.manpage"], capture_output=True, text=True)
    assert proc.returncode == 0 and "convert" in proc.stdout
    if shutil.which("groff"):
        out = subprocess.run(["groff", "-man", "-Tutf8"], input=proc.stdout, capture_output=True,
                             text=True)
        plain = re.sub(".\x08", "", out.stdout).replace("\u2010", "-")     # drop overstrike bold
        assert out.returncode == 0 and "keep-ciphertext" in plain
