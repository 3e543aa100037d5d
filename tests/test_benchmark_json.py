# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt benchmark``: the text table is byte for byte what it was
before the command moved to its own module (measurements replaced by fixed
numbers), and ``--output json`` holds the same measurements as one object,
unavailable ciphers with their reason."""

import io
import json
import subprocess
import sys

import pytest

import pyqcrypt.crypto.benchmark as bench
from pyqcrypt.cli import build_parser

ROWS = [("aes-xts-plain64", 512, 3.5 * (1 << 20), 4.25 * (1 << 20), None, "openssl"),
        ("cast6-xts-plain64", 512, None, None, "no backend has cast6", None)]
TEXT_ALL = (
    "# Tests are approximate using memory only (no storage IO).\n"
    "PBKDF2-sha1         1234567 iterations per second for 256-bit key\n"
    "PBKDF2-sha256       1234568 iterations per second for 256-bit key\n"
    "PBKDF2-sha512       1234569 iterations per second for 256-bit key\n"
    "#             Algorithm |       Key |      Encryption |      Decryption | Backend\n"
    "        aes-xts-plain64      512b          3.5 MiB/s          4.2 MiB/s   openssl\n"
    "      cast6-xts-plain64      512b   N/A (no backend has cast6)\n")
TEXT_ONE = (
    "# Tests are approximate using memory only (no storage IO).\n"
    "PBKDF2-sha1         1234567 iterations per second for 256-bit key\n"
    "#             Algorithm |       Key |      Encryption |      Decryption | Backend (2 threads)\n"
    "        aes-xts-plain64      512b          3.5 MiB/s          4.2 MiB/s   openssl\n"
    "      cast6-xts-plain64      512b   N/A (no backend has cast6)\n")
ONE = ["--threads", "2", "-c", "aes-xts-plain64", "-s", "512", "--hash", "sha1"]


@pytest.fixture
def fixed(monkeypatch):
    """Measurements replaced by fixed numbers; the arguments each got."""
    seen = {}

    def pbkdf2(hashes):
        seen["hashes"] = list(hashes)
        return [(h, 1234567 + i) for i, h in enumerate(hashes)]

    def ciphers(specs, seconds, threads):
        seen["ciphers"], seen["seconds"], seen["threads"] = list(specs), seconds, threads
        return ROWS
    monkeypatch.setattr(bench, "pbkdf2_results", pbkdf2)
    monkeypatch.setattr(bench, "cipher_results", ciphers)
    return seen


def _run(monkeypatch, *argv):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    args = build_parser().parse_args(["benchmark", *argv])
    assert args.func(args) == 0
    return out.getvalue()


@pytest.mark.parametrize("argv, expected", [([], TEXT_ALL), (ONE, TEXT_ONE)])
def test_text_table_unchanged(monkeypatch, fixed, argv, expected):
    assert _run(monkeypatch, *argv) == expected


def test_json_holds_the_same_measurements(monkeypatch, fixed):
    got = json.loads(_run(monkeypatch, "--output", "json", *ONE[:2], "--time", "0.25"))
    assert got == {
        "pbkdf2": [{"hash": h, "iterations_per_second": 1234567 + i, "key_bits": 256}
                   for i, h in enumerate(("sha1", "sha256", "sha512"))],
        "ciphers": [{"cipher": "aes-xts-plain64", "key_bits": 512, "encrypt_mib_s": 3.5,
                     "decrypt_mib_s": 4.25, "backend": "openssl"},
                    {"cipher": "cast6-xts-plain64", "key_bits": 512, "error": "no backend has cast6"}]}
    assert (fixed["seconds"], fixed["threads"]) == (0.25, 2)
    assert fixed["ciphers"] == list(bench.CIPHERS)


def test_json_measured_for_real():
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "benchmark", "--output", "json",
                           "-c", "aes-xts-plain64", "-s", "256", "--hash", "sha256", "--time", "0.02"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert [p["hash"] for p in got["pbkdf2"]] == ["sha256"] and got["pbkdf2"][0]["iterations_per_second"] > 0
    (row,) = got["ciphers"]
    assert (row["cipher"], row["key_bits"]) == ("aes-xts-plain64", 256)
    assert row["encrypt_mib_s"] > 0 and row["decrypt_mib_s"] > 0 and row["backend"]
