# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt selftest``: does this machine's qemu-img, qemu-io and
cryptsetup still agree with pyqcrypt?

The check a CI pipeline or a distribution's autopkgtest runs when QEMU or
cryptsetup is upgraded.  It makes small images with pyqcrypt and with the
tools found on PATH (or given with --qemu-img, --qemu-io, --cryptsetup),
crosses them and compares decrypted bytes:

* pyqcrypt's LUKS1 volumes and qcow2-luks images opened and read by the
  tools, and theirs read by pyqcrypt;
* a keyslot added on each side and opened on the other;
* the keep-ciphertext round trip LUKS1 -> qcow2-luks -> LUKS1, whose
  payload ciphertext must come back unchanged;
* LUKS2 with 512- and 4096-byte sectors and detached headers
  (``selftest_cases_luks2.py``);
* serpent and twofish volumes, a qcow2 data file on a loop device, and
  zstd-compressed qcow2 (``selftest_cases_formats.py``).

Each case ends PASS, FAIL or SKIP with its reason.  A tool that is missing
skips the cases that need it (a FAIL with --strict, or when its path was
given explicitly); a tool that is there but broken (its --version fails,
or it misreads or mis-writes an image) fails them: nothing passes without
the tool having done its part.  Needs no source tree; works in a scratch
directory under $TMPDIR (or /dev/shm) that it removes afterwards.

Key derivation is kept cheap (1000 PBKDF2 iterations; QEMU's iter-time=10),
so the whole run takes about ten seconds on an idle two-core machine, most
of it QEMU calibrating PBKDF2 whenever qemu-img formats LUKS (about a
second of CPU, whatever iter-time says); that benchmark, which fails at
random on a busy machine ("Unable to get accurate CPU usage"), is retried.

This module runs the cases and reports on them (a table, JSON, JUnit
XML); the cases are in ``selftest_cases*.py``, and the tools, scratch
directory and secrets they share in ``selftest_context.py``.
"""

import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback

from . import selftest_cases_formats, selftest_cases_luks2  # noqa: F401  (they register their cases)
from .selftest_cases import CASES, case
from .selftest_context import (BINARY, COMMAND_TIMEOUT, ITERATIONS, PACKAGES, PASSPHRASE, QEMU_FLAKE,
                               QEMU_ITER_TIME, QEMU_RETRIES, SECOND, THIRD, CaseFailed, CaseSkipped, Context,
                               MachineLacks, MiB, Tool)

__all__ = ["PASS", "FAIL", "SKIP", "MiB", "ITERATIONS", "QEMU_ITER_TIME", "QEMU_FLAKE", "QEMU_RETRIES",
           "COMMAND_TIMEOUT", "PACKAGES", "PASSPHRASE", "SECOND", "THIRD", "BINARY", "CaseFailed",
           "CaseSkipped", "Tool", "Context", "CASES", "case", "run_cases", "junit_xml", "main"]

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


def _backends():
    """(the backend records, or None when they cannot be had; the header line)."""
    import pyqcrypt
    try:
        from .backends import backend_versions, summary
        records = backend_versions()
        libs = summary(records)
    except Exception as exc:        # a broken build shows here, and fails every case
        records, libs = None, "backends unavailable (%s)" % exc
    return records, "pyqcrypt %s (Python %s; %s)" % (pyqcrypt.__version__, platform.python_version(), libs)


def run_cases(tools, strict=False, workdir=None, keep=False, only=None):
    """Run every case; returns the list of result dicts."""
    base = workdir or (None if os.environ.get("TMPDIR") or not os.access("/dev/shm", os.W_OK)
                       else "/dev/shm")
    scratch = tempfile.mkdtemp(prefix="pyqcrypt-selftest-", dir=base)
    results = []
    try:
        ctx = Context(scratch, tools, strict)
        for name, needs, summary, fn in CASES:
            if only and not any(re.search(p, name) for p in only):
                continue
            start = time.monotonic()
            try:
                detail, status = fn(ctx) or "", PASS
            except CaseSkipped as exc:
                # --strict is about tools; a machine without loop devices
                # (a container) still just skips that case
                failing = strict and not isinstance(exc, MachineLacks)
                detail, status = str(exc), FAIL if failing else SKIP
                if failing:
                    detail = "skipped, and --strict counts that as a failure: %s" % detail
            except CaseFailed as exc:
                detail, status = str(exc), FAIL
            except Exception as exc:            # pyqcrypt's own error or a bug: a failure, with the cause
                detail, status = "%s: %s" % (type(exc).__name__, exc), FAIL
                if os.environ.get("PYQCRYPT_SELFTEST_DEBUG"):
                    traceback.print_exc()
            results.append({"case": name, "status": status, "detail": detail, "summary": summary,
                            "tools": [tools[t].label for t in needs],
                            "seconds": round(time.monotonic() - start, 3)})
    finally:
        if keep:
            print("pyqcrypt selftest: images kept in %s" % scratch, file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def _table(results, header, total):
    rows = [("CASE", "TOOLS", "RESULT", "TIME", "DETAIL")]
    for r in results:
        rows.append((r["case"], ", ".join(r["tools"]), r["status"], "%.2fs" % r["seconds"], r["detail"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [header, ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    counts = {s: sum(r["status"] == s for r in results) for s in (PASS, FAIL, SKIP)}
    lines += ["", "%d cases: %d passed, %d failed, %d skipped in %.1f s"
              % (len(results), counts[PASS], counts[FAIL], counts[SKIP], total)]
    return "\n".join(lines) + "\n"


def junit_xml(results, tools, pyqcrypt_line, total):
    from .junit import JunitCase, suite_xml
    props = [("pyqcrypt", pyqcrypt_line)] + [(t.name, t.version or t.problem or "") for t in tools.values()]
    cases = [JunitCase("pyqcrypt.selftest", r["case"], r["seconds"],
                       failure=r["detail"] if r["status"] == FAIL else None, failure_text=r["summary"],
                       skipped=r["detail"] if r["status"] == SKIP else None,
                       out="%s: %s (%s)" % (r["summary"], r["detail"], ", ".join(r["tools"])))
             for r in results]
    return suite_xml("pyqcrypt selftest", cases, total, props)


def main(qemu_img=None, qemu_io=None, cryptsetup=None, strict=False, junit=None, as_json=False,
         keep=False, only=None, out=None):
    """The command: returns the exit status (0 only when nothing failed)."""
    out = out or sys.stdout
    start = time.monotonic()
    tools = {}
    for name, path in (("qemu-img", qemu_img), ("qemu-io", qemu_io), ("cryptsetup", cryptsetup)):
        tools[name] = Tool(name, path, explicit=path is not None)
    records, line = _backends()
    results = run_cases(tools, strict=strict, keep=keep, only=only)
    total = time.monotonic() - start
    failed = any(r["status"] == FAIL for r in results)
    if junit:
        from .junit import write_report
        write_report(junit, junit_xml(results, tools, line, total))
    if as_json:
        json.dump({"pyqcrypt": line, "backends": None if records is None else {b.key: b.as_dict() for b in records},
                   "tools": [t.as_dict() for t in tools.values()], "cases": results,
                   "passed": sum(r["status"] == PASS for r in results),
                   "failed": sum(r["status"] == FAIL for r in results),
                   "skipped": sum(r["status"] == SKIP for r in results),
                   "seconds": round(total, 3), "ok": not failed}, out, indent=2)
        out.write("\n")
    else:
        header = "pyqcrypt selftest: %s\ntools: %s" % (
            line, "; ".join("%s%s" % (t.label, " (%s)" % t.path if t.version else ": " + t.problem)
                            for t in tools.values()))
        out.write(_table(results, header, total))
        if not results:
            out.write("no case matched\n")
    return 1 if failed or not results else 0
