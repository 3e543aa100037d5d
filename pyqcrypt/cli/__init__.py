# SPDX-License-Identifier: LGPL-2.1-or-later
"""Layer 7: the ``pyqcrypt`` command line (argument parser and dispatch).

Each sub-command is a thin layer over the library.  Errors print one line,
``pyqcrypt: ...``, on standard error (a traceback only with ``--debug``);
a wrong passphrase exits 2 as cryptsetup does, other errors (usage errors
included, as in qemu-img and cryptsetup) exit 1.
"""

import sys
import textwrap

from ..errors import Error, WrongPassphrase
from . import (benchmark_cmd, common, compare_cmd, convert_cmd, inspect_cmds, luks_cmds,
               luks_query_cmds, map_cmd, measure_cmd, qemu_cmds, rebase_cmd, refused_cmds, resize_cmd,
               selftest_cmd, snapshot_cmd, version_cmd)
from . import attach_cmd
from . import verify_cmd

EXIT_ERROR = 1
EXIT_WRONG_PASSPHRASE = 2


class _Ignored:
    """What a command other than the one being run is built as: every call
    on it (add_argument, set_defaults, groups) does nothing."""

    def __getattr__(self, name):
        return self._nothing

    def _nothing(self, *args, **kwargs):
        return self


class _OnlyCommand:
    """The sub-command action of a parser built for one command line:
    building every command's arguments costs more than importing the
    whole CLI (8 ms of a 60 ms ``pyqcrypt info``), so only *name*'s are
    built.  ``found`` says whether *name* was a command at all."""

    def __init__(self, sub, name):
        self._sub, self._name, self.found = sub, name, False

    def add_parser(self, name, **kwargs):
        if name != self._name and self._name not in kwargs.get("aliases", ()):
            return _Ignored()
        self.found = True
        return self._sub.add_parser(name, **kwargs)


def _command_named(argv):
    """The command an argument list runs, or None (help, version, none)."""
    args = iter(argv)
    for arg in args:
        if arg in ("-V", "--version"):
            return ""               # the top level alone answers it
        if arg in ("-h", "--help"):
            return None
        if arg == "--output":
            next(args, None)        # its value is no command
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(only=None):
    """The whole parser, or with *only* one holding just that command's
    arguments (None when *only* is no command: build the whole one); with
    *only* "", the top-level options alone (for --version)."""
    parser = common.Parser(
        prog="pyqcrypt",
        description=textwrap.fill("Create, inspect, convert and re-key qcow2-with-LUKS images "
                                  "and LUKS1 volumes, compatible with QEMU and cryptsetup.", 79),
        epilog="examples:\n"
               "  pyqcrypt info disk.qcow2\n"
               "  pyqcrypt convert --keep-ciphertext -O qcow2 vol.luks disk.qcow2\n"
               "  pyqcrypt COMMAND --help          # the options of one command")
    version_cmd.add_options(parser)
    parser.add_argument("--debug", action="store_true",
                        help="show a traceback on errors (never secrets)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = only != ""       # --version needs no command
    if only is not None:
        sub = _OnlyCommand(sub, only)

    benchmark_cmd.register(sub)
    qemu_cmds.register(sub)
    inspect_cmds.register(sub)
    convert_cmd.register(sub)
    map_cmd.register(sub)
    compare_cmd.register(sub)
    resize_cmd.register(sub)
    measure_cmd.register(sub)
    snapshot_cmd.register(sub)
    rebase_cmd.register(sub)
    refused_cmds.register(sub)
    luks_cmds.register(sub)
    luks_query_cmds.register(sub)
    selftest_cmd.register(sub)
    attach_cmd.register(sub)
    verify_cmd.register(sub)
    if only and not sub.found:
        return None
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print("pyqcrypt: warning: %s" % message, file=sys.stderr)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so every
    ``except BaseException`` cleanup (temporary files, half-made
    destinations) runs before the process exits."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    import signal
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)        # a second signal must not cut the cleanup short
    raise Terminated(signum)


def _say(text):
    print("pyqcrypt: %s" % text, file=sys.stderr, flush=True)


def _install_signal_handlers():
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) is not signal.SIG_IGN:       # nohup stays nohup
            signal.signal(s, _terminate)


def _debug_traceback(args):
    """With --debug, the traceback too; the exit code stays the same."""
    if getattr(args, "debug", False):
        import traceback
        traceback.print_exc()


def main(argv=None):
    import warnings
    warnings.showwarning = _show_warning
    _install_signal_handlers()
    from .. import notices
    notices.slow_pbkdf2 = _say
    from ..crypto.keybuf import protect_process
    protect_process()               # before any secret is read
    name = _command_named(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=name) if name is not None else None
    parser = parser or build_parser()
    args, extra = parser.parse_known_args(argv)
    if version_cmd.requested(args, parser):
        return version_cmd.show(args)
    if extra and not getattr(args, "takes_anything", False):    # refused_cmds take qemu-img's all
        if getattr(args, "collect_paths", False) and not any(x.startswith("-") for x in extra):
            args.paths.extend(extra)
        else:
            # Said by the command's own parser, with its usage line.
            commands = next(a for a in parser._actions if a.dest == "command").choices
            commands[args.command].error("unrecognized arguments: %s" % " ".join(extra))
    try:
        return args.func(args)
    except WrongPassphrase as exc:
        _debug_traceback(args)
        print("pyqcrypt: %s" % exc, file=sys.stderr)
        return EXIT_WRONG_PASSPHRASE
    except (Error, OSError) as exc:
        _debug_traceback(args)
        print("pyqcrypt: %s" % exc, file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pyqcrypt: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        import signal
        print("pyqcrypt: terminated by %s"
              % signal.Signals(exc.signum).name, file=sys.stderr)
        return 128 + exc.signum
