# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt verify``: CI checks of the user's own images and key files
against pyqcrypt, qemu-img and cryptsetup (the logic is in
pyqcrypt.verification)."""

import time

from ..errors import Error
from . import common

DESCRIPTION = (
    "Check your own images and key files in one run, against pyqcrypt and this machine's "
    "qemu-img and cryptsetup, for a CI job. Four kinds of check: passphrase (a key file opens "
    "an image, or with --refuses must not: a revoked passphrase; for a LUKS1/LUKS2 volume or "
    "detached header cryptsetup open --test-passphrase must give the same answer and keyslot), "
    "check (qemu-img check and pyqcrypt check agree and find no leak or corruption), same-data "
    "(two images hold the same plaintext; the first differing offset is reported) and "
    "same-ciphertext (a keep-ciphertext pair stores the same ciphertext; no key needed). "
    "Give the checks inline or in a checks file (--checks) kept in your repository: TOML "
    "(Python 3.11 and later) or JSON, paths relative to the file; its [keys] table names key "
    "files and the checks refer to them by name (never write a passphrase into it). Tables: "
    "[[passphrase]] image, key, and optionally opens (false: must be refused), header, slot; "
    "[[check]] image, key (an encrypted qcow2); [[same-data]] images (two), key or keys; "
    "[[same-ciphertext]] images. A key file's whole content is the passphrase, as cryptsetup's "
    "--key-file reads it; it reaches cryptsetup on its standard input and qemu-img as a secret "
    "object naming the file, never in an argument list or a report. Prints one line per check "
    "(--json: a JSON report on stdout; --junit: JUnit XML too). Exits 0 when every check "
    "passed, 1 when one failed or the checks file is wrong (a one-line error; the JUnit file "
    "then holds one failed case, setup).")

EXAMPLES = [
    "pyqcrypt verify --checks ci/images.toml --junit verify.xml",
    "pyqcrypt verify --checks ci/images.toml --key main=\"$RUNNER_TEMP/main.key\" --json",
    "pyqcrypt verify --opens vol.luks main.key --refuses vol.luks old.key",
    "pyqcrypt verify --key-file main.key --check disk.qcow2 --same-data vol.luks disk.qcow2",
    "pyqcrypt verify --same-ciphertext vol.luks kept.qcow2",
    "# ci/images.toml:",
    "#   [keys]",
    "#   main = \"keys/main.key\"",
    "#   [[passphrase]]",
    "#   image = \"vol.luks\"",
    "#   key = \"main\"",
    "#   [[same-data]]",
    "#   images = [\"vol.luks\", \"disk.qcow2\"]",
    "#   key = \"main\"",
]


def _checks(args):
    from .. import verification
    from ..verification import plan
    checks = []
    if args.checks:
        overrides = dict(plan.parse_key_override(text) for text in args.key or ())
        checks += verification.load_checks_file(args.checks, overrides)
    elif args.key:
        raise Error("--key names a key of the checks file: give --checks FILE")
    checks += verification.inline_checks(args)
    if not checks:
        raise Error("nothing to verify: give --checks FILE or an inline check (--opens, --refuses, "
                    "--check, --same-data, --same-ciphertext)")
    return checks


def _cmd_verify(args):
    from .. import verification
    start = time.monotonic()
    try:
        checks = _checks(args)
    except Error as exc:
        if args.junit:      # a report that fails, not last run's that passed
            failed = {"kind": "setup", "name": args.checks or "command line", "passed": False,
                      "detail": str(exc), "seconds": 0.0}
            verification.write_junit([failed], 0.0, args.junit)
        raise
    tools = verification.Tools(args.qemu_img, args.cryptsetup)
    results = verification.run_checks(checks, tools)
    request = verification.ReportRequest(as_json=args.json, junit=args.junit)
    return verification.report(results, time.monotonic() - start, request)


def register(sub):
    p = common.add_command(sub, "verify", "check your images and key files with pyqcrypt, qemu-img "
                                          "and cryptsetup (for CI)", DESCRIPTION, EXAMPLES)
    p.add_argument("--checks", metavar="FILE",
                   help="the checks file (TOML or JSON; paths relative to it; key files only, "
                        "never passphrases)")
    p.add_argument("--key", action="append", metavar="NAME=PATH",
                   help="the key file of the checks file's key NAME (adds or replaces it; repeatable)")
    p.add_argument("--opens", action="append", nargs=2, metavar=("IMAGE", "KEYFILE"),
                   help="check that KEYFILE opens IMAGE (repeatable)")
    p.add_argument("--refuses", action="append", nargs=2, metavar=("IMAGE", "KEYFILE"),
                   help="check that KEYFILE does not open IMAGE, e.g. a revoked passphrase (repeatable)")
    p.add_argument("--check", action="append", metavar="IMAGE",
                   help="check that qemu-img check and pyqcrypt check agree on the qcow2 IMAGE and "
                        "find nothing (repeatable)")
    p.add_argument("--same-data", action="append", nargs=2, metavar=("A", "B"),
                   help="check that images A and B hold the same plaintext (repeatable)")
    p.add_argument("--same-ciphertext", action="append", nargs=2, metavar=("A", "B"),
                   help="check that the keep-ciphertext pair A, B stores the same ciphertext (repeatable)")
    p.add_argument("--key-file", metavar="KEYFILE",
                   help="the key file of the encrypted images of --check and --same-data")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML to FILE")
    for tool in ("qemu-img", "cryptsetup"):
        p.add_argument("--" + tool, metavar="PATH", dest=tool.replace("-", "_"),
                       help="the %s to run (default: the one on PATH)" % tool)
    p.set_defaults(func=_cmd_verify)
