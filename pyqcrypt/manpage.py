# SPDX-License-Identifier: LGPL-2.1-or-later
"""The pyqcrypt(1) man page, generated from the argument parser so that it
never drifts from ``--help``.  ``python -m pyqcrypt.manpage > pyqcrypt.1``.
Its date is SOURCE_DATE_EPOCH's (UTC) when that is set, for reproducible
builds; today's otherwise."""

import argparse
import datetime
import os
import sys

from . import __version__


def _esc(text):
    text = (text or "").replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def _option_line(action):
    if action.option_strings:
        names = ", ".join("\\fB%s\\fR" % _esc(o) for o in action.option_strings)
        if action.nargs != 0:
            names += " \\fI%s\\fR" % _esc(action.metavar or action.dest.upper())
        return names
    return "\\fI%s\\fR" % _esc(action.metavar or action.dest.upper())


def _examples(epilog):
    """A command's epilog (``examples:`` and indented command lines) as an
    unfilled block, so each example keeps its lines."""
    if not epilog:
        return []
    head, _, body = epilog.partition("\n")
    lines = [line[2:] if line.startswith("  ") else line for line in body.splitlines()]
    return [".PP", _esc(head.rstrip(":").capitalize() + ":"), ".PP", ".RS", ".nf"] + \
        [_esc(line) or "\\&" for line in lines] + [".fi", ".RE"]


def page_date():
    """The date the page carries: SOURCE_DATE_EPOCH's when set, else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).date()
    return datetime.date.today()


def _exit_status():
    """cryptsetup's exit codes, what each means there, and where pyqcrypt
    gives it (the texts are troff-ready)."""
    from .cli.cs_exits import DIFFERENCES, EXIT_CODES
    out = [".SH EXIT STATUS", "pyqcrypt uses cryptsetup's exit codes (qemu\\-img's 0 and 1 are "
           "the same):"]
    for code, meaning, where in EXIT_CODES:
        out += [".TP", "\\fB%d\\fR" % code, "cryptsetup: %s.  pyqcrypt: %s." % (meaning, where)]
    return out + [".PP", DIFFERENCES]


def render(parser=None):
    from .cli import build_parser
    parser = parser or build_parser()
    out = [".TH PYQCRYPT 1 \"%s\" \"pyqcrypt %s\" \"User Commands\""
           % (page_date().isoformat(), __version__),
           ".SH NAME", "pyqcrypt \\- " + _esc(" ".join(parser.description.split(".")[0].lower().split())),
           ".SH SYNOPSIS", "\\fBpyqcrypt\\fR [\\fB\\-\\-debug\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
           ".SH DESCRIPTION", _esc(parser.description)]
    out += _examples(parser.epilog)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out.append(".SH COMMANDS")
    from .cli.common import commands
    for name, aliases, cmd in commands(sub):
        out += [".SS %s" % _esc(" ".join([name] + ["(%s)" % a for a in aliases])),
                _esc(helps.get(name) or "")]
        if cmd.description and cmd.description != helps.get(name):
            out += [".PP", _esc(cmd.description)]
        for action in cmd._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            out += [".TP", _option_line(action), _esc(action.help or "")]
        out += _examples(cmd.epilog)
    out += _exit_status()
    out += [".SH SEE ALSO", "qemu\\-img(1), cryptsetup(8)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
