# SPDX-License-Identifier: LGPL-2.1-or-later
"""The command line as data: each command of the ``pyqcrypt`` parser with
its names, summary, description, options and examples, read from the
argparse parser itself.  The man page (``pyqcrypt.manpage``) and the HTML
reference (``docs/``) both render this one walk, so neither can drift from
``--help`` or from each other."""

import argparse
from typing import List, NamedTuple, Optional, Tuple


class Option(NamedTuple):
    """One option or positional argument: its flags (empty for a
    positional), the placeholder of its value (None for a flag that takes
    none) and its help text."""
    flags: Tuple[str, ...]
    metavar: Optional[str]
    help: str


class Command(NamedTuple):
    """One sub-command: *aliases* are its cryptsetup spellings."""
    name: str
    aliases: Tuple[str, ...]
    summary: str
    description: str
    usage: str
    options: Tuple[Option, ...]
    examples: Tuple[str, ...]


class Program(NamedTuple):
    description: str
    examples: Tuple[str, ...]
    commands: Tuple[Command, ...]


def examples(epilog: Optional[str]) -> Tuple[str, ...]:
    """The command lines of an ``examples:`` epilog, unindented."""
    if not epilog:
        return ()
    body = epilog.partition("\n")[2]
    return tuple(line[2:] if line.startswith("  ") else line for line in body.splitlines())


def _option(action: argparse.Action) -> Option:
    meta = action.metavar
    placeholder = " ".join(meta) if isinstance(meta, tuple) else meta    # nargs=2 names both values
    if action.option_strings:
        value = None if action.nargs == 0 else (placeholder or action.dest.upper())
        return Option(tuple(action.option_strings), value, action.help or "")
    return Option((), placeholder or action.dest.upper(), action.help or "")


def program(parser: Optional[argparse.ArgumentParser] = None) -> Program:
    """The whole command line, in the order ``pyqcrypt --help`` lists it."""
    from .cli import build_parser
    from .cli.common import commands
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    found: List[Command] = []
    for name, aliases, cmd in commands(sub):
        summary = helps.get(name) or ""
        description = cmd.description if cmd.description and cmd.description != summary else ""
        options = tuple(_option(a) for a in cmd._actions if not isinstance(a, argparse._HelpAction))
        found.append(Command(name, tuple(aliases), summary, description or "",
                             cmd.format_usage().strip(), options, examples(cmd.epilog)))
    return Program(parser.description or "", examples(parser.epilog), tuple(found))
