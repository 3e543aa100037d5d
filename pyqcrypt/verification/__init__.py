# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt verify``: CI checks of the user's own images and secrets,
run in one go and reported as a table, JSON or JUnit XML.

``plan`` reads what to check (the checks file, the inline checks),
``checks`` runs each kind (passphrase, check, same-data,
same-ciphertext) against pyqcrypt and the real qemu-img and cryptsetup;
this module runs the list, times each check and writes the reports:

* JSON: ``{"passed": bool, "checks": [{"kind", "name", "passed",
  "detail", "seconds"}, ...]}``;
* JUnit: one ``<testsuite name="pyqcrypt verify">`` with a
  ``<testcase>`` per check (classname: its kind, name: its images), a
  ``<failure message=...>`` on failure (pyqcrypt.junit writes it).
"""

import json
import os
import sys
import time
import traceback

from ..errors import Error
from .checks import RUNNERS, CheckFailed, Tools
from .plan import Check, inline_checks, load_checks_file

__all__ = ["Check", "Tools", "inline_checks", "load_checks_file", "run_checks", "junit_xml", "write_junit",
           "ReportRequest", "report"]


def _run_one(check, tools):
    """(passed, detail) of one check."""
    try:
        return True, RUNNERS[check.kind](check, tools)
    except CheckFailed as exc:
        return False, str(exc)
    except (Error, OSError) as exc:
        return False, "%s: %s" % (type(exc).__name__, exc)
    except Exception as exc:            # a bug: the check failed, with its cause
        if os.environ.get("PYQCRYPT_VERIFY_DEBUG"):
            traceback.print_exc()
        return False, "%s: %s" % (type(exc).__name__, exc)


def run_checks(checks, tools):
    """Run every Check; a list of result dicts (kind, name, passed, detail,
    seconds)."""
    results = []
    for check in checks:
        start = time.monotonic()
        passed, detail = _run_one(check, tools)
        results.append({"kind": check.kind, "name": check.name, "passed": passed, "detail": detail,
                        "seconds": round(time.monotonic() - start, 3)})
    return results


def junit_xml(results, seconds):
    from ..junit import JunitCase, suite_xml
    cases = [JunitCase(r["kind"], r["name"], r["seconds"], failure=None if r["passed"] else r["detail"],
                       failure_text="%s %s: %s" % (r["kind"], r["name"], r["detail"]), out=r["detail"])
             for r in results]
    return suite_xml("pyqcrypt verify", cases, seconds)


def _table(results, seconds):
    lines = []
    width = max(len(r["kind"]) for r in results)
    for r in results:
        lines.append("%s  %s  %s: %s" % ("PASS" if r["passed"] else "FAIL", r["kind"].ljust(width),
                                         r["name"], r["detail"]))
    failed = sum(not r["passed"] for r in results)
    lines.append("%d checks: %d passed, %d failed in %.1f s" % (len(results), len(results) - failed,
                                                                failed, seconds))
    return "\n".join(lines) + "\n"


def write_junit(results, seconds, path):
    """The JUnit report of *results* to the file *path*, atomically."""
    from ..junit import write_report
    try:
        write_report(path, junit_xml(results, seconds))
    except OSError as exc:
        raise Error("cannot write %s: %s" % (path, exc.strerror or exc)) from None


class ReportRequest:
    """How to report: *as_json* (JSON on *out* instead of the table),
    *junit* (a file name for JUnit XML, or None), *out* (a text stream)."""

    __slots__ = ("as_json", "junit", "out")

    def __init__(self, as_json=False, junit=None, out=None):
        self.as_json, self.junit, self.out = as_json, junit, out or sys.stdout


def report(results, seconds, request):
    """Write the reports; returns the exit status (0 only when every check
    passed)."""
    passed = all(r["passed"] for r in results)
    if request.junit:
        write_junit(results, seconds, request.junit)
    if request.as_json:
        json.dump({"passed": passed, "checks": results}, request.out, indent=2)
        request.out.write("\n")
    else:
        request.out.write(_table(results, seconds))
    return 0 if passed else 1
