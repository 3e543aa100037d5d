# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt --version [--output json]``: pyqcrypt's version line (first,
unchanged, for scripts), then Python's and each backend library's version
and whether its native module is built (pyqcrypt.backends gathers them;
imported only when --version runs, which loads the native modules)."""

import argparse
import json
import sys

from .. import __version__


class _ShowVersion(argparse.Action):
    """-V/--version: noted, and answered by main() once --output is parsed too."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)


def add_options(parser):
    """The top-level -V/--version and its --output."""
    parser.add_argument("-V", "--version", action=_ShowVersion, dest="show_version",
                        help="print pyqcrypt's version, then Python's and each backend library's "
                             "(OpenSSL, libcryptsetup, libgcrypt, Nettle, libzstd) and whether its "
                             "module is built, and exit")
    parser.add_argument("--output", choices=("text", "json"), dest="version_output",
                        help="with --version: print as text (default) or as a JSON document")


def requested(args, parser):
    """True when the command line asked for the version; a --output without
    --version is a usage error."""
    if getattr(args, "version_output", None) and not getattr(args, "show_version", False):
        parser.error("--output goes with --version (a command's own --output follows its name)")
    return getattr(args, "show_version", False)


def show(args, out=None):
    from .. import backends
    out = out or sys.stdout
    if args.version_output == "json":
        json.dump(backends.version_document(__version__), out, indent=2)
        out.write("\n")
    else:
        out.write("\n".join(backends.version_lines(__version__)) + "\n")
    return 0
