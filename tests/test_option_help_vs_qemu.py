# SPDX-License-Identifier: LGPL-2.1-or-later
"""``-o help`` / ``-o ?`` of create, convert and amend against qemu-img's
listing: with pyqcrypt's marks taken off ("(not supported by pyqcrypt)",
"(pyqcrypt: only ...)") stdout is qemu-img's byte for byte and both exit
0; the marks sit exactly on the options each command refuses or limits."""

import re
import subprocess
import sys

import pytest

from conftest import qemu_img

pytestmark = pytest.mark.interop

MARK = re.compile(rb" \((?:not supported by pyqcrypt|pyqcrypt: only [^)]*)\)$", re.M)

CASES = [
    ("create", "-f", "qcow2", "-o", "help"),
    ("create", "-f", "qcow2", "-o", "?"),
    ("create", "-f", "qcow2", "-o", "cluster_size=4k,help"),
    ("create", "-f", "luks", "-o", "help"),
    ("create", "-f", "raw", "-o", "help"),
    ("create", "-o", "help"),
    ("create", "-f", "qcow2", "-o", "help", "new.img"),
    ("create", "-f", "raw", "-o", "help", "new.img"),
    ("amend", "-f", "qcow2", "-o", "help"),
    ("amend", "-f", "luks", "-o", "?"),
    ("convert", "-O", "qcow2", "-o", "help"),
    ("convert", "-O", "luks", "-o", "help"),
    ("convert", "-o", "help"),
    ("convert", "-O", "raw", "-o", "help", "a.img", "b.img"),
]


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_listing_is_qemu_img_s(args):
    theirs = qemu_img(*args)
    ours = subprocess.run([sys.executable, "-m", "pyqcrypt"] + list(args), capture_output=True)
    assert ours.returncode == 0 and ours.stderr == b"", ours.stderr
    assert MARK.sub(b"", ours.stdout) == theirs.stdout


def _marked(verb, fmt):
    from pyqcrypt.cli.option_help import NOT_SUPPORTED, listing
    lines = listing(verb, fmt).splitlines()[1:]
    names = {line.split("=")[0].strip(): line for line in lines if "=<" in line}
    return ({n for n, line in names.items() if line.endswith(NOT_SUPPORTED)},
            {n for n, line in names.items() if not line.endswith(NOT_SUPPORTED)})


def test_marks_follow_what_the_commands_accept():
    from pyqcrypt.cli import convert_cmd, qemu_cmds
    refused, taken = _marked("create", "qcow2")
    assert refused == {"compression_type", "size"}
    assert taken <= qemu_cmds._QCOW2_CREATE_OPTS and not refused & qemu_cmds._QCOW2_CREATE_OPTS
    refused, taken = _marked("convert", "qcow2")
    assert taken <= convert_cmd._QCOW2_OPTS and not refused & convert_cmd._QCOW2_OPTS
    refused, taken = _marked("create", "luks")
    assert taken <= qemu_cmds._LUKS_CREATE_OPTS and refused == {"size"}
    refused, taken = _marked("amend", "luks")
    assert not refused
    refused, taken = _marked("amend", "qcow2")
    assert taken == {"encrypt.iter-time", "encrypt.keyslot", "encrypt.new-secret",
                     "encrypt.old-secret", "encrypt.state"}


def test_amend_help_needs_a_format_or_an_image():
    theirs = qemu_img("amend", "-o", "help", check=False)
    ours = subprocess.run([sys.executable, "-m", "pyqcrypt", "amend", "-o", "help"],
                          capture_output=True)
    assert ours.returncode == theirs.returncode == 1 and ours.stdout == theirs.stdout == b""
