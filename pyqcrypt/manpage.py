# SPDX-License-Identifier: LGPL-2.1-or-later
"""The pyqcrypt(1) man page, generated from the argument parser so that it
never drifts from ``--help``.  ``python -m pyqcrypt.manpage > pyqcrypt.1``.
Its date is SOURCE_DATE_EPOCH's (UTC) when that is set, for reproducible
builds; today's otherwise."""

import datetime
import os
import sys

from . import __version__


def _esc(text):
    text = (text or "").replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def _option_line(option):
    if option.flags:
        names = ", ".join("\\fB%s\\fR" % _esc(o) for o in option.flags)
        if option.metavar is not None:
            names += " \\fI%s\\fR" % _esc(option.metavar)
        return names
    return "\\fI%s\\fR" % _esc(option.metavar)


def _examples(lines):
    """Example command lines as an unfilled block, so each keeps its lines."""
    if not lines:
        return []
    return [".PP", "Examples:", ".PP", ".RS", ".nf"] + [_esc(line) or "\\&" for line in lines] + [".fi", ".RE"]


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
    from .cli_reference import program
    cli = program(parser)
    out = [".TH PYQCRYPT 1 \"%s\" \"pyqcrypt %s\" \"User Commands\""
           % (page_date().isoformat(), __version__),
           ".SH NAME", "pyqcrypt \\- " + _esc(" ".join(cli.description.split(".")[0].lower().split())),
           ".SH SYNOPSIS", "\\fBpyqcrypt\\fR [\\fB\\-\\-debug\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
           ".SH DESCRIPTION", _esc(cli.description)]
    out += _examples(cli.examples)
    out.append(".SH COMMANDS")
    for cmd in cli.commands:
        out += [".SS %s" % _esc(" ".join((cmd.name,) + tuple("(%s)" % a for a in cmd.aliases))),
                _esc(cmd.summary)]
        if cmd.description:
            out += [".PP", _esc(cmd.description)]
        for option in cmd.options:
            out += [".TP", _option_line(option), _esc(option.help)]
        out += _examples(cmd.examples)
    out += _exit_status()
    out += [".SH SEE ALSO", "qemu\\-img(1), cryptsetup(8)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
