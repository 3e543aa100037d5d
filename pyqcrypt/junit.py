# SPDX-License-Identifier: LGPL-2.1-or-later
"""JUnit XML reports, as CI systems read them: one ``<testsuite>`` inside
``<testsuites>``, one ``<testcase>`` per case with a ``<failure>``,
``<skipped>`` or ``<system-out>`` element, and the file written
atomically (a CI job that reads it never sees half a report).  Used by
``pyqcrypt selftest`` and ``pyqcrypt verify``."""

import os
import secrets
from xml.etree import ElementTree


class JunitCase:
    """One ``<testcase>``: *classname*, *name*, *seconds*, and at most one
    of *failure* (its message; *failure_text* goes inside it), *skipped*
    (its message) or *out* (the system-out text of a case that passed)."""

    __slots__ = ("classname", "name", "seconds", "failure", "failure_text", "skipped", "out")

    def __init__(self, classname, name, seconds, failure=None, failure_text=None, skipped=None, out=None):
        self.classname, self.name, self.seconds = classname, name, seconds
        self.failure, self.failure_text, self.skipped, self.out = failure, failure_text, skipped, out


def suite_xml(suite_name, cases, seconds, properties=()):
    """The XML text (no declaration) of a suite of JunitCase *cases* that
    took *seconds*, with the (name, value) *properties*."""
    suite = ElementTree.Element("testsuite", {
        "name": suite_name, "tests": str(len(cases)),
        "failures": str(sum(c.failure is not None for c in cases)), "errors": "0",
        "skipped": str(sum(c.skipped is not None and c.failure is None for c in cases)),
        "time": "%.3f" % seconds})
    if properties:
        props = ElementTree.SubElement(suite, "properties")
        for name, value in properties:
            ElementTree.SubElement(props, "property", {"name": name, "value": value})
    for case in cases:
        tc = ElementTree.SubElement(suite, "testcase", {"classname": case.classname, "name": case.name,
                                                        "time": "%.3f" % case.seconds})
        if case.failure is not None:
            ElementTree.SubElement(tc, "failure", {"message": case.failure}).text = case.failure_text
        elif case.skipped is not None:
            ElementTree.SubElement(tc, "skipped", {"message": case.skipped})
        elif case.out is not None:
            ElementTree.SubElement(tc, "system-out").text = case.out
    suites = ElementTree.Element("testsuites")
    suites.append(suite)
    return ElementTree.tostring(suites, encoding="unicode")


def write_report(path, xml_text):
    """Write *xml_text* with its XML declaration to *path* atomically: a
    new file beside it (mode 0666 less the umask), synced, then renamed
    over *path*."""
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.%s.tmp" % (base, secrets.token_hex(4)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write('<?xml version="1.0" encoding="UTF-8"?>\n' + xml_text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
