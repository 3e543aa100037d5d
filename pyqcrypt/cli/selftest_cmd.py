# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt selftest``: interop with this machine's qemu-img, qemu-io and
cryptsetup (the logic is in pyqcrypt.selftest)."""

from . import common


def _cmd_selftest(args):
    from .. import selftest
    return selftest.main(qemu_img=args.qemu_img, qemu_io=args.qemu_io, cryptsetup=args.cryptsetup,
                         strict=args.strict, junit=args.junit, as_json=args.json, keep=args.keep,
                         only=args.case)


def register(sub):
    p = common.add_command(
        sub, "selftest", "check interop with this machine's qemu-img, qemu-io and cryptsetup",
        "Make small images with pyqcrypt and with the qemu-img, qemu-io and cryptsetup found on "
        "PATH, cross them (ours read by them, theirs read by us, keyslots added on each side, the "
        "keep-ciphertext round trip LUKS1 -> qcow2-luks -> LUKS1, LUKS2 with 512- and 4096-byte "
        "sectors, detached headers, serpent and twofish, a qcow2 data file on a loop device, "
        "zstd-compressed qcow2) and compare the decrypted bytes. The header names pyqcrypt's "
        "backend libraries with their versions; then one line per case with the tool versions and "
        "PASS, FAIL or SKIP with the reason. A missing tool skips its cases; a broken one fails "
        "them. Exits 0 only when no case failed.",
        ["pyqcrypt selftest",
         "pyqcrypt selftest --strict --junit selftest.xml     # in CI: a skip is a failure",
         "pyqcrypt selftest --json --cryptsetup /opt/cryptsetup/sbin/cryptsetup"])
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML to FILE")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--strict", action="store_true",
                   help="count a skipped case (a missing tool) as a failure")
    p.add_argument("--case", action="append", metavar="REGEX",
                   help="run only the cases whose name matches REGEX (repeatable)")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directory with the images (its path goes to stderr)")
    for tool in ("qemu-img", "qemu-io", "cryptsetup"):
        p.add_argument("--" + tool, metavar="PATH", dest=tool.replace("-", "_"),
                       help="the %s to test (default: the one on PATH); a missing one then fails"
                            % tool)
    p.set_defaults(func=_cmd_selftest)
