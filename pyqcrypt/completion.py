# SPDX-License-Identifier: LGPL-2.1-or-later
"""Bash completion for the pyqcrypt command, generated from the argument
parser like the man page, so that it never lags behind a new command or
option.  ``python -m pyqcrypt.completion > pyqcrypt`` writes it; the build
installs it as share/bash-completion/completions/pyqcrypt.

It completes command names, each command's options, the values of options
that take a fixed set (``-O qcow2``), and file names everywhere else.
"""

import argparse
import shlex
import sys


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


# Values for options argparse does not restrict (the commands check them
# themselves, with better messages), by metavar.
VALUE_HINTS = {"FMT": ["qcow2", "luks", "raw"], "TYPE": ["luks1", "luks"]}


def _options(parser):
    """(every option string, those that take a value, {option: choices})."""
    names, valued, choices = [], [], {}
    for action in parser._actions:
        if not action.option_strings:
            continue
        names += action.option_strings
        if action.nargs != 0:
            valued += action.option_strings
            values = ([str(c) for c in action.choices] if action.choices
                      else VALUE_HINTS.get(action.metavar or ""))
            if values:
                for opt in action.option_strings:
                    choices[opt] = values
    return names, valued, choices


def _words(items):
    return shlex.quote(" ".join(items))


def _case_pattern(items):
    return "|".join(shlex.quote(i) for i in items)


# What follows the per-command arms: complete a fixed value, a file after
# an option that takes one, an option after "-", a file otherwise.
_TAIL = [
    "    esac",
    "    if [[ -n $values ]]; then",
    "        mapfile -t COMPREPLY < <(compgen -W \"$values\" -- \"$cur\")",
    "        return 0",
    "    fi",
    "    if [[ \" $valued \" == *\" $prev \"* ]]; then",
    "        mapfile -t COMPREPLY < <(compgen -f -- \"$cur\")",
    "        compopt -o filenames 2>/dev/null",
    "        return 0",
    "    fi",
    "    if [[ $cur == -* ]]; then",
    "        mapfile -t COMPREPLY < <(compgen -W \"$opts\" -- \"$cur\")",
    "    else",
    "        mapfile -t COMPREPLY < <(compgen -f -- \"$cur\")",
    "        compopt -o filenames 2>/dev/null",
    "    fi",
    "    return 0",
    "}",
    "complete -F _pyqcrypt pyqcrypt",
]


def _head(global_opts, commands):
    """The function's start: find the command word; before it, complete
    the global options or the command names."""
    return [
        "# bash completion for pyqcrypt(1), generated from its argument parser",
        "# (python -m pyqcrypt.completion); do not edit.",
        "_pyqcrypt()",
        "{",
        "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}",
        "    local cmd='' i opts='' valued='' values=''",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        case ${COMP_WORDS[i]} in",
        "            -*) ;;",
        "            *) cmd=${COMP_WORDS[i]}; break ;;",
        "        esac",
        "    done",
        "    if [[ -z $cmd ]]; then",
        "        if [[ $cur == -* ]]; then",
        "            mapfile -t COMPREPLY < <(compgen -W %s -- \"$cur\")" % _words(global_opts),
        "        else",
        "            mapfile -t COMPREPLY < <(compgen -W %s -- \"$cur\")" % _words(commands),
        "        fi",
        "        return 0",
        "    fi",
        "    case $cmd in",
    ]


def _command_arm(name, cmd):
    """The case arm of one command: its options, those that take a value,
    and the fixed values an option takes."""
    opts, valued, choices = _options(cmd)
    lines = ["        %s)" % shlex.quote(name),
             "            opts=%s" % _words(opts),
             "            valued=%s" % _words(valued)]
    if choices:
        lines.append("            case $prev in")
        for opt, values in sorted(choices.items()):
            lines.append("                %s) values=%s ;;" % (_case_pattern([opt]), _words(values)))
        lines.append("            esac")
    lines.append("            ;;")
    return lines


def render(parser=None):
    """The completion script for *parser* (the pyqcrypt command's by default)."""
    from .cli import build_parser
    parser = parser or build_parser()
    sub = _subparsers(parser)
    global_opts = _options(parser)[0]
    lines = _head(global_opts, sub.choices)
    for name, cmd in sub.choices.items():       # cryptsetup's names too (luksDump)
        lines += _command_arm(name, cmd)
    lines += _TAIL
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
