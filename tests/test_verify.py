# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt verify`` (issue 24) on a real set: cryptsetup LUKS2 volumes
(4096- and 512-byte sectors, three keyslots of which one was killed),
LUKS1 and LUKS2 volumes with detached headers, their qcow2-luks conversions by
``pyqcrypt convert -O qcow2``, and a keep-ciphertext pair.  Every check
passes on the set as made; then each is made to fail once (a revoked or
wrong passphrase, a flipped payload byte, a leaked cluster, a tool that
answers otherwise) and the failure is read back from the JSON report and
the JUnit file.  A broken checks file is a one-line error."""

import json
import os
import shutil
import struct
import subprocess
import sys
from xml.etree import ElementTree

import pytest

from conftest import cs_format, run, scratch_dir, tool, write_file

pytestmark = pytest.mark.interop

PW, OTHER, OLD = "main passphrase \u00e9".encode(), b"second passphrase", b"revoked passphrase"
SECRETS = (PW, OTHER, OLD)
COST = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
FLIP = (1 << 20) + 1000         # a payload byte flipped in the failure cases
LUKS2 = ("--type", "luks2", "--pbkdf", "pbkdf2")


def pyq(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + [str(a) for a in args],
                          capture_output=True, cwd=cwd)


def _fill(path, header=None):
    import pyqcrypt
    data = os.urandom(1 << 20)
    with pyqcrypt.open(path, passphrase=PW, header=header, writable=True) as img:
        img.write(0, data)
        img.write(1 << 20, data[:8192])
        img.write(3 << 20, data[:65536])


def _to_qcow2(d, src, dst):
    main = os.path.join(d, "main.key")
    proc = pyq("convert", "--object", "secret,id=s,file=" + main, "--image-opts",
               "driver=luks,file.filename=%s,key-secret=s" % os.path.join(d, src), "-O", "qcow2",
               "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", os.path.join(d, dst))
    assert proc.returncode == 0, proc.stderr


def _build(d):
    cs = tool("cryptsetup")
    main, other, old = (write_file(os.path.join(d, n), pw) for n, pw in
                        (("main.key", PW), ("other.key", OTHER), ("old.key", OLD)))
    v2 = cs_format(d, "v2.luks", PW, size=24 << 20, extra=LUKS2 + ("--sector-size", "4096"))
    run([cs, "luksAddKey", "-q", "--key-file", main] + list(COST) + [v2, other])
    run([cs, "luksAddKey", "-q", "--key-file", main, "--key-slot", "2"] + list(COST) + [v2, old])
    run([cs, "luksKillSlot", "-q", v2, "2"])                  # old.key: revoked
    cs_format(d, "v2s.luks", PW, size=24 << 20, extra=LUKS2 + ("--sector-size", "512"))
    cs_format(d, "v1.luks", PW, size=8 << 20)
    cs_format(d, "d.luks", PW, size=8 << 20, header=os.path.join(d, "d.hdr"))
    cs_format(d, "d2.luks", PW, size=8 << 20, header=os.path.join(d, "d2.hdr"), extra=LUKS2)
    for name in ("v2.luks", "v2s.luks", "v1.luks"):
        _fill(os.path.join(d, name))
    _fill(os.path.join(d, "d.luks"), header=os.path.join(d, "d.hdr"))
    _to_qcow2(d, "v2.luks", "q2.qcow2")
    _to_qcow2(d, "v2s.luks", "q2s.qcow2")
    proc = pyq("convert", "--keep-ciphertext", "-O", "qcow2", os.path.join(d, "v1.luks"),
               os.path.join(d, "k1.qcow2"))
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def real_set():
    d = scratch_dir()
    try:
        _build(d)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def images(real_set, workdir):
    """A copy of the set this test may damage; the checks file is in its
    ci/ directory, naming the images relative to itself."""
    shutil.copytree(real_set, workdir, dirs_exist_ok=True)
    os.mkdir(os.path.join(workdir, "ci"))
    return workdir


def _image(image, key, **more):
    return dict(image="../" + image, key=key, **more)


CHECKS = {
    "keys": {"main": "../main.key", "other": "../other.key", "old": "../old.key"},
    "passphrase": [_image("v2.luks", "main", slot=0), _image("v2.luks", "other", slot=1),
                   _image("v2.luks", "old", opens=False), _image("v2s.luks", "main"),
                   _image("d.luks", "main", header="../d.hdr"), _image("d2.luks", "main", header="../d2.hdr"),
                   _image("q2.qcow2", "main")],
    "check": [_image("q2.qcow2", "main"), _image("k1.qcow2", "main")],
    "same-data": [{"images": ["../v2.luks", "../q2.qcow2"], "key": "main"},
                  {"images": ["../v2s.luks", "../q2s.qcow2"], "keys": ["main", "main"]},
                  {"images": ["../v1.luks", "../k1.qcow2"], "key": "main"}],
    "same-ciphertext": [{"images": ["../v1.luks", "../k1.qcow2"]}, {"images": ["../k1.qcow2", "../v1.luks"]}],
}


def _toml(checks):
    """*checks* written as a TOML checks file, as a user would write it."""
    lines = ["# the images' checks; key files only, never a passphrase", "[keys]"]
    lines += ["%s = %s" % (name, json.dumps(path)) for name, path in checks["keys"].items()]
    for kind in ("passphrase", "check", "same-data", "same-ciphertext"):
        for table in checks[kind]:
            lines += ["", "[[%s]]" % kind]
            lines += ["%s = %s" % (key, json.dumps(value)) for key, value in table.items()]
    return "\n".join(lines) + "\n"


def verify(d, *args, checks=None):
    """Run verify with a JUnit file: (exit status, JSON report, stderr,
    the parsed testsuite element, the raw outputs)."""
    junit = os.path.join(d, "verify.xml")
    if os.path.exists(junit):
        os.unlink(junit)
    proc = pyq("verify", "--json", "--junit", junit, *(["--checks", checks] if checks else []), *args)
    report = json.loads(proc.stdout) if proc.stdout else None
    suite = None
    raw = proc.stdout + proc.stderr
    if os.path.exists(junit):
        with open(junit, "rb") as fh:
            raw += fh.read()
        suite = ElementTree.parse(junit).getroot().find("testsuite")
    for secret in SECRETS:
        assert secret not in raw
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]      # the JUnit file was renamed in place
    return proc.returncode, report, proc.stderr.decode(), suite


def _failures(report, suite):
    """{(kind, name): detail} of the failed checks, the same in JSON and JUnit."""
    failed = {(c["kind"], c["name"]): c["detail"] for c in report["checks"] if not c["passed"]}
    junit = {(tc.get("classname"), tc.get("name")): tc.find("failure").get("message")
             for tc in suite.findall("testcase") if tc.find("failure") is not None}
    assert junit == failed
    assert suite.get("failures") == str(len(failed))
    return failed


@pytest.mark.parametrize("form", ["toml", "json"])
def test_every_check_passes_on_the_real_set(images, form):
    path = os.path.join(images, "ci", "checks." + form)
    text = _toml(CHECKS) if form == "toml" else json.dumps(CHECKS)
    write_file(path, text.encode())
    rc, report, err, suite = verify(images, checks=path)
    if form == "toml" and sys.version_info < (3, 11):      # no tomllib: JSON only, and it says so
        assert rc == 1 and "needs Python 3.11" in err
        return
    assert rc == 0, (err, report)
    assert report["passed"] is True and len(report["checks"]) == 14
    assert [c["kind"] for c in report["checks"]].count("passphrase") == 7
    assert all(c["passed"] and c["seconds"] >= 0 for c in report["checks"]), report
    details = {c["name"]: c["detail"] for c in report["checks"]}
    assert details["../v2.luks opens with key other"] == "keyslot 1 opens (pyqcrypt and cryptsetup)"
    assert details["../v2.luks refuses key old"] == "refused by pyqcrypt and cryptsetup"
    assert details["../q2.qcow2 opens with key main"] == "keyslot 0 opens (pyqcrypt and qemu-img)"
    assert suite.get("name") == "pyqcrypt verify" and suite.get("tests") == "14"
    assert suite.get("failures") == "0"
    assert {tc.get("classname") for tc in suite.findall("testcase")} == {
        "passphrase", "check", "same-data", "same-ciphertext"}


def test_inline_checks_and_table(images):
    os.chdir(images)
    proc = pyq("verify", "--opens", "v2.luks", "main.key", "--refuses", "v2s.luks", "other.key",
               "--key-file", "main.key", "--check", "q2s.qcow2", "--same-data", "v2s.luks", "q2s.qcow2",
               "--same-ciphertext", "k1.qcow2", "v1.luks")
    out = proc.stdout.decode()
    assert proc.returncode == 0, (out, proc.stderr)
    lines = out.splitlines()
    assert len(lines) == 6 and all(line.startswith("PASS  ") for line in lines[:5]), out
    assert lines[-1].startswith("5 checks: 5 passed, 0 failed")


def test_wrong_and_revoked_passphrases_fail(images):
    os.chdir(images)
    rc, report, err, suite = verify(images, "--opens", "v2.luks", "old.key", "--refuses", "v2.luks",
                                    "other.key", "--opens", "v1.luks", "main.key", "--opens", "q2.qcow2", "old.key")
    assert rc == 1, err
    failed = _failures(report, suite)
    assert failed == {
        ("passphrase", "v2.luks opens with key old.key"):
            "no keyslot opens with the key (pyqcrypt and cryptsetup refuse it)",
        ("passphrase", "v2.luks refuses key other.key"):
            "the key must be refused, but pyqcrypt and cryptsetup open keyslot 1 with it",
        ("passphrase", "q2.qcow2 opens with key old.key"):
            "no keyslot opens with the key (pyqcrypt and qemu-img refuse it)"}


def test_wrong_slot_fails(images):
    path = os.path.join(images, "ci", "checks.json")
    write_file(path, json.dumps({"keys": {"other": "../other.key"},
                                 "passphrase": [{"image": "../v2.luks", "key": "other", "slot": 0}]}).encode())
    rc, report, err, suite = verify(images, checks=path)
    assert rc == 1
    assert _failures(report, suite) == {("passphrase", "../v2.luks opens with key other"):
                                        "the key opens keyslot 1, not keyslot 0 (pyqcrypt and cryptsetup)"}


def _flip(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))


def _payload_offset(path):
    from pyqcrypt.compare_ciphertext import _side
    side = _side(path, False)
    side.close()
    return side.start


def test_flipped_payload_byte_fails_same_data_and_same_ciphertext(images):
    os.chdir(images)
    for vol in ("v1.luks", "v2.luks"):
        _flip(vol, _payload_offset(vol) + FLIP)
    rc, report, err, suite = verify(images, "--key-file", "main.key", "--same-data", "v1.luks", "k1.qcow2",
                                    "--same-data", "q2.qcow2", "v2.luks", "--same-ciphertext", "v1.luks",
                                    "k1.qcow2", "--same-data", "v2s.luks", "q2s.qcow2")
    assert rc == 1, err
    failed = _failures(report, suite)
    # XTS garbles the flipped byte's 16-byte block only; the plaintext is
    # reported from the 512-byte sector holding it (4096-byte sectors too)
    assert failed == {("same-data", "v1.luks = k1.qcow2"): "Content mismatch at offset %d!" % (FLIP - FLIP % 512),
                      ("same-data", "q2.qcow2 = v2.luks"): "Content mismatch at offset %d!" % (FLIP - FLIP % 512),
                      ("same-ciphertext", "v1.luks = k1.qcow2"): "Content mismatch at offset %d!" % FLIP}


def _leak_a_cluster(path):
    """Append a cluster and give it a reference: a leak, the data unchanged."""
    with open(path, "r+b") as fh:
        head = fh.read(104)
        cluster_bits, = struct.unpack_from(">I", head, 20)
        table, = struct.unpack_from(">Q", head, 48)
        assert struct.unpack_from(">I", head, 96)[0] == 4          # 16-bit refcounts
        size = 1 << cluster_bits
        end = fh.seek(0, 2)
        fh.truncate(end + size)
        fh.seek(table)
        block, = struct.unpack(">Q", fh.read(8))
        index = end // size
        assert index < size // 2                                      # in the first refcount block
        fh.seek(block + 2 * index)
        fh.write(struct.pack(">H", 1))


def test_leaked_cluster_fails_check_with_both_tools_numbers(images):
    os.chdir(images)
    _leak_a_cluster("q2.qcow2")
    rc, report, err, suite = verify(images, "--key-file", "main.key", "--check", "q2.qcow2",
                                    "--same-data", "v2.luks", "q2.qcow2")
    assert rc == 1, err
    assert _failures(report, suite) == {("check", "q2.qcow2"): (
        "qemu-img check exited 3: 1 leaked clusters, 0 corruptions, 0 check errors; "
        "pyqcrypt check exited 3: 1 leaked clusters, 0 corruptions, 0 check errors")}


def _fake_tool(d, name, script):
    path = os.path.join(d, name)
    write_file(path, ("#!/bin/sh\ncat >/dev/null\n" + script).encode())
    os.chmod(path, 0o755)
    return path


def test_disagreeing_tools_fail_naming_both_answers(images):
    os.chdir(images)
    cs = _fake_tool(images, "fake-cryptsetup", "echo 'Key slot 5 unlocked.'\nexit 0\n")
    qi = _fake_tool(images, "fake-qemu-img", "echo '{\"check-errors\": 0, \"leaks\": 2}'\nexit 3\n")
    rc, report, err, suite = verify(images, "--cryptsetup", cs, "--qemu-img", qi, "--opens", "v2.luks",
                                    "main.key", "--refuses", "v1.luks", "other.key", "--key-file", "main.key",
                                    "--check", "q2.qcow2", "--refuses", "q2.qcow2", "other.key")
    assert rc == 1, err
    assert _failures(report, suite) == {
        ("passphrase", "v2.luks opens with key main.key"):
            "pyqcrypt and cryptsetup disagree: pyqcrypt opens keyslot 0, cryptsetup opens keyslot 5",
        ("passphrase", "v1.luks refuses key other.key"):
            "pyqcrypt and cryptsetup disagree: pyqcrypt refuses, cryptsetup opens keyslot 5",
        ("check", "q2.qcow2"):
            "the tools disagree: qemu-img check exited 3: 2 leaked clusters, 0 corruptions, 0 check errors; "
            "pyqcrypt check exited 0: 0 leaked clusters, 0 corruptions, 0 check errors",
        ("passphrase", "q2.qcow2 refuses key other.key"):
            "pyqcrypt and qemu-img disagree: pyqcrypt refuses, qemu-img opens"}


@pytest.mark.parametrize("data,words", [
    ({"keys": {}, "passphrases": []}, "unknown key 'passphrases'"),
    ({"check": [{"image": "../v1.luks", "imgae": "x"}]}, "check[0]: unknown key 'imgae'"),
    ({"keys": {"k": "../main.key"}, "passphrase": [{"image": "../v2.luks", "key": "k", "slot": "0"}]},
     "passphrase[0].slot: must be a keyslot number"),
    ({"keys": {"k": "../main.key"}, "passphrase": [{"image": "../v2.luks", "key": "k", "slot": True}]},
     "passphrase[0].slot: must be a keyslot number"),           # not keyslot 1
    ({"keys": {"k": "../nosuch.key"}}, "keys.k: no such key file"),
    ({"same-data": [{"images": ["../v2.luks", "../nosuch.qcow2"]}]}, "same-data[0].images[1]: no such file"),
    ({"same-data": [{"images": ["../v2.luks"]}]}, "same-data[0].images: must be a list of two"),
    ({"passphrase": [{"image": "../v2.luks", "key": "main"}]}, "passphrase[0].key: must name a key file"),
    ({"passphrase": [{"image": "../v2.luks"}]}, "passphrase[0]: key is missing"),
    ({"check": {"image": "../q2.qcow2"}}, "check: must be a list of tables"),
    ({"passphrase": [{"image": "../v2.luks", "key": "k", "opens": "no"}], "keys": {"k": "../main.key"}},
     "passphrase[0].opens: must be true or false"),
    ("[[check]\nimage = 1\n", "not valid TOML"),
    ("{\"check\": [", "not valid JSON"),
])
def test_bad_checks_file_is_a_one_line_error(images, data, words):
    name = "checks.toml" if isinstance(data, str) and data.startswith("[") else "checks.json"
    path = write_file(os.path.join(images, "ci", name),
                      (data if isinstance(data, str) else json.dumps(data)).encode())
    junit = write_file(os.path.join(images, "verify.xml"), b"<testsuites/>")   # last run's report
    proc = pyq("verify", "--checks", path, "--junit", junit)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and proc.stdout == b"", err
    assert err.startswith("pyqcrypt: %s: " % path) and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    # the JUnit file now says so: one failed case, instead of last run's report
    cases = ElementTree.parse(junit).getroot().find("testsuite").findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [("setup", path)]
    assert cases[0].find("failure").get("message") == err[len("pyqcrypt: "):].rstrip("\n")


def test_toml_without_tomllib_says_so(images):
    path = write_file(os.path.join(images, "ci", "checks.toml"), _toml(CHECKS).encode())
    code = ("import sys; sys.modules['tomllib'] = None; from pyqcrypt.cli import main; "
            "sys.exit(main(['verify', '--checks', %r]))" % path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "reading TOML needs Python 3.11 or later (tomllib)" in proc.stderr and "JSON" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_nothing_to_verify_and_missing_inline_file(images):
    proc = pyq("verify")
    assert proc.returncode == 1 and b"nothing to verify" in proc.stderr
    proc = pyq("verify", "--same-data", os.path.join(images, "v1.luks"), os.path.join(images, "nosuch"))
    assert proc.returncode == 1 and proc.stderr.decode().startswith("pyqcrypt: --same-data: no such file")


def test_key_override_replaces_the_files_key(images):
    path = write_file(os.path.join(images, "ci", "checks.json"), json.dumps(
        {"keys": {"main": "../old.key"}, "passphrase": [{"image": "../v1.luks", "key": "main"}]}).encode())
    rc, report, err, suite = verify(images, checks=path)
    assert rc == 1 and report["checks"][0]["detail"].startswith("no keyslot opens"), report
    rc, report, err, suite = verify(images, "--key", "main=" + os.path.join(images, "main.key"), checks=path)
    assert rc == 0 and report["checks"][0]["detail"] == "keyslot 0 opens (pyqcrypt and cryptsetup)", report
    # the file's key file need not exist when --key replaces it (a CI secret)
    path = write_file(os.path.join(images, "ci", "checks2.json"), json.dumps(
        {"keys": {"main": "../absent.key"}, "passphrase": [{"image": "../v1.luks", "key": "main"}]}).encode())
    rc, report, err, suite = verify(images, "--key", "main=" + os.path.join(images, "main.key"), checks=path)
    assert rc == 0, (report, err)
    proc = pyq("verify", "--key", "main=" + os.path.join(images, "main.key"))
    assert proc.returncode == 1 and b"give --checks FILE" in proc.stderr


def test_a_passphrase_where_a_key_file_belongs_is_not_repeated(images):
    """The usual mistake: the passphrase itself instead of its file's name."""
    said = "hunter2 correct horse"
    path = write_file(os.path.join(images, "ci", "checks.json"), json.dumps({"keys": {"main": said}}).encode())
    for args in (["--checks", path], ["--opens", os.path.join(images, "v1.luks"), said],
                 ["--checks", path, "--key", "main=" + said],
                 ["--key-file", said, "--check", os.path.join(images, "q2.qcow2")]):
        proc = pyq("verify", *args)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "no such key file" in err and said not in err, (args, err)
