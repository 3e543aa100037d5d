# SPDX-License-Identifier: LGPL-2.1-or-later
"""The cryptsetup parity table: each cryptsetup spelling pyqcrypt accepts,
run by cryptsetup and by pyqcrypt on copies of the same LUKS1 and LUKS2
volume (tests/cryptsetup_parity.py holds the cases), printed as markdown:
verb | case | cryptsetup exit | pyqcrypt exit | stdout same? | volume after
same?  Deliberate differences are footnoted.  Scratch files on /dev/shm."""

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

import cryptsetup_parity as parity  # noqa: E402  (tests/ is on sys.path)


def _yes(flag):
    return "yes" if flag else "**no**"


def main():
    print("| LUKS | verb | case | cryptsetup exit | pyqcrypt exit | stdout same? | volume after same? |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    for version in (1, 2):
        for verb, case in parity.case_list():
            with tempfile.TemporaryDirectory(prefix="pyqcrypt-parity-", dir=base) as root:
                got = parity.run_case(parity.Scene(root, version), verb, case)
            after = _yes(got.after_same)
            why = parity.KNOWN.get((version, verb, case))
            if why:
                if why not in notes:
                    notes.append(why)
                after += " [%d]" % (notes.index(why) + 1)
            exits = ("%d" % got.pyq_exit) if got.pyq_exit == got.cs_exit else "**%d**" % got.pyq_exit
            print("| %d | %s | %s | %d | %s | %s | %s |" % (version, verb, case, got.cs_exit, exits,
                                                             _yes(got.stdout_same), after))
    for n, why in enumerate(notes, 1):
        print("\n[%d] %s" % (n, why))


if __name__ == "__main__":
    main()
