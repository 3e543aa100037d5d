# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt selftest``: passes with the real tools, and cannot pass
without them: a missing tool skips (fails with --strict), a broken or lying
one fails every case it takes part in."""

import json
import os
import re
import stat
import subprocess
import sys
from xml.etree import ElementTree

import pytest

from conftest import tool

# the cases of selftest_cases_luks2.py and selftest_cases_formats.py
LUKS2_CASES = {"luks2-512-byte-sectors", "luks2-4096-byte-sectors", "detached-headers"}
FORMAT_CASES = {"serpent-and-twofish", "qcow2-data-file-on-block-device", "qcow2-zstd"}
QEMU_CASES = {"luks1-ours-read-by-qemu", "luks1-theirs-read-by-us", "qcow2-luks-ours-read-by-qemu",
              "qcow2-luks-theirs-read-by-us", "luks1-keyslot-added-by-us", "qcow2-luks-keyslot-added-by-qemu",
              "qcow2-luks-keyslot-added-by-us", "keep-ciphertext-round-trip"} | LUKS2_CASES | FORMAT_CASES
CRYPTSETUP_CASES = {"luks1-ours-opened-by-cryptsetup", "luks1-theirs-read-by-us",
                    "luks1-keyslot-added-by-cryptsetup", "luks1-keyslot-added-by-us",
                    "keep-ciphertext-round-trip", "serpent-and-twofish"} | LUKS2_CASES


def selftest(*args, env=None):
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "selftest", *args], capture_output=True,
                          text=True, env=env, timeout=300)
    return proc


def results(proc):
    doc = json.loads(proc.stdout)
    return doc, {c["case"]: c for c in doc["cases"]}


def fake(path, body):
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


@pytest.fixture
def tools():
    return {name: tool(name) for name in ("qemu-img", "qemu-io", "cryptsetup")}


def test_everything_passes_with_the_real_tools(tools, tmp_path):
    junit = tmp_path / "selftest.xml"
    proc = selftest("--json", "--strict", "--junit", str(junit))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc, cases = results(proc)
    assert set(cases) == QEMU_CASES | CRYPTSETUP_CASES
    assert all(c["status"] == "PASS" for c in cases.values()), cases
    assert doc["ok"] and doc["failed"] == 0 and doc["passed"] == len(cases)
    assert doc["seconds"] < 180                   # a hang guard: ~10 s here on a quiet machine
    versions = {t["name"]: t["version"] for t in doc["tools"]}
    assert all(versions.values()), versions
    for name in ("OpenSSL", "libcryptsetup", "libgcrypt", "Nettle", "libzstd"):   # the header names each
        assert re.search(r"\b%s \d+\.\d+" % name, doc["pyqcrypt"]), doc["pyqcrypt"]
    assert list(doc["backends"]) == ["openssl", "libcryptsetup", "libgcrypt", "nettle", "libzstd"]
    assert all(b["built"] and b["version"] for b in doc["backends"].values()), doc["backends"]
    for name in ("luks2-512-byte-sectors", "luks2-4096-byte-sectors"):
        assert "reproduced byte for byte" in cases[name]["detail"], cases[name]
    assert re.fullmatch(r"serpent by (cryptsetup|qemu-img), twofish by (cryptsetup|qemu-img); .*",
                        cases["serpent-and-twofish"]["detail"]), cases["serpent-and-twofish"]
    assert "loop device" in cases["qcow2-data-file-on-block-device"]["detail"]
    assert "zstd-compressed" in cases["qcow2-zstd"]["detail"]
    suite = ElementTree.parse(str(junit)).getroot().find("testsuite")
    assert suite.get("tests") == str(len(cases)) and suite.get("failures") == "0"
    assert {tc.get("name") for tc in suite.iter("testcase")} == set(cases)


def test_table(tools):
    proc = selftest("--case", "^luks1-ours")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("pyqcrypt selftest: pyqcrypt ")
    assert any(line.startswith("luks1-ours-read-by-qemu ") and " PASS " in line for line in lines)
    assert lines[-1].startswith("2 cases: 2 passed, 0 failed, 0 skipped")


def test_missing_tools_skip_with_the_reason_and_fail_when_strict(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))        # no qemu-img, no qemu-io on PATH
    proc = selftest("--json", "--cryptsetup", fake(tmp_path / "cs", "exit 1\n"), env=env)
    doc, cases = results(proc)
    assert proc.returncode == 1                 # the broken cryptsetup given explicitly fails
    for name in QEMU_CASES - CRYPTSETUP_CASES:
        assert cases[name]["status"] == "SKIP", cases[name]
        assert "qemu-img not found on PATH (Debian package qemu-utils)" in cases[name]["detail"] or \
            "qemu-io not found on PATH" in cases[name]["detail"]
    for name in CRYPTSETUP_CASES:
        assert cases[name]["status"] in ("FAIL", "SKIP") and cases[name]["detail"], cases[name]
    only_qemu = sorted(QEMU_CASES - CRYPTSETUP_CASES)
    proc = selftest("--json", *sum((["--case", "^%s$" % n] for n in only_qemu), []), env=env)
    assert proc.returncode == 0, proc.stdout      # skips alone do not fail...
    proc = selftest("--json", "--strict", *sum((["--case", "^%s$" % n] for n in only_qemu), []), env=env)
    doc, cases = results(proc)
    assert proc.returncode == 1 and {c["status"] for c in cases.values()} == {"FAIL"}   # ...unless --strict


def test_a_broken_tool_fails_its_cases(tools, tmp_path):
    proc = selftest("--json", "--qemu-img", fake(tmp_path / "qemu-img", "echo 'segfault' >&2; exit 139\n"))
    doc, cases = results(proc)
    assert proc.returncode == 1
    for name in QEMU_CASES:
        assert cases[name]["status"] == "FAIL" and "qemu-img is broken" in cases[name]["detail"], cases[name]
    for name in CRYPTSETUP_CASES - QEMU_CASES:
        assert cases[name]["status"] == "PASS", cases[name]


def test_a_lying_cryptsetup_fails(tools, tmp_path):
    """A cryptsetup that prints a version and claims success for everything."""
    liar = fake(tmp_path / "cryptsetup", 'case "$1" in --version) echo "cryptsetup 9.9.9";; esac\nexit 0\n')
    proc = selftest("--json", "--cryptsetup", liar)
    doc, cases = results(proc)
    assert proc.returncode == 1
    for name in CRYPTSETUP_CASES:
        assert cases[name]["status"] == "FAIL", cases[name]
    assert "accepts a wrong passphrase" in cases["luks1-ours-opened-by-cryptsetup"]["detail"]


def test_a_qemu_img_that_misreads_fails(tools, tmp_path):
    """qemu-img whose raw output has one byte changed: every comparison
    through it must notice."""
    body = ('"%s" "$@" || exit $?\n'
            'case " $* " in *" -O raw "*) for last; do :; done\n'
            '  printf X | dd of="$last" bs=1 seek=100 conv=notrunc status=none;; esac\n' % tools["qemu-img"])
    proc = selftest("--json", "--qemu-img", fake(tmp_path / "qemu-img", body))
    doc, cases = results(proc)
    assert proc.returncode == 1
    readers = {"luks1-ours-read-by-qemu", "qcow2-luks-ours-read-by-qemu", "luks1-keyslot-added-by-us",
               "qcow2-luks-keyslot-added-by-us", "keep-ciphertext-round-trip"} | LUKS2_CASES | FORMAT_CASES
    for name in readers:
        assert cases[name]["status"] == "FAIL" and "differ from offset 100" in cases[name]["detail"], cases[name]


def test_no_loop_devices_is_a_named_skip(tools, monkeypatch):
    """Without root there are no loop devices: the block-device case skips
    saying so (under --strict too: strict is about tools, and a CI job in
    a container has no loop devices), and attaches nothing."""
    from pyqcrypt import selftest, selftest_cases_formats
    from pyqcrypt.selftest_context import Tool
    monkeypatch.setattr(selftest_cases_formats.os, "geteuid", lambda: 1000)
    found = {n: Tool(n) for n in tools}
    for strict, status in ((False, "SKIP"), (True, "SKIP")):
        [result] = selftest.run_cases(found, strict=strict, only=["^qcow2-data-file-on-block-device$"])
        assert result["status"] == status and "no loop devices: they need root" in result["detail"], result
