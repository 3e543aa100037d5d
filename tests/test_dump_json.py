# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt dump`` in JSON: ``--dump-json-metadata`` prints exactly what
``cryptsetup luksDump --dump-json-metadata`` prints (fresh LUKS2, two
keyslots, a token, 4096-byte sectors, a detached header) and refuses LUKS1
as cryptsetup does; ``--output json`` holds the values cryptsetup's
luksDump (LUKS1, LUKS2) and qemu-img info (a qcow2-luks image) show."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import cs_format, qemu_img, tool, write_file

PW, PW2 = b"json-one", b"json-two"
LUKS2 = ("--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *args], capture_output=True,
                          stdin=subprocess.DEVNULL)


def _cs(*args, check=False):
    proc = subprocess.run([tool("cryptsetup"), *args], capture_output=True, stdin=subprocess.DEVNULL)
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def _luks2(workdir, case):
    """(device args for both tools, the file holding the header) of one kind of LUKS2 volume."""
    if case == "detached":
        hdr = os.path.join(workdir, "hdr")
        with open(hdr, "wb") as fh:
            fh.truncate(16 << 20)
        vol = cs_format(workdir, "v", PW, header=hdr, extra=LUKS2)
        return ["--header", hdr, vol], hdr
    extra = LUKS2 + (("--sector-size", "4096") if case == "sector4096" else ())
    vol = cs_format(workdir, "v", PW, size=24 << 20, extra=extra)
    key2 = write_file(os.path.join(workdir, "k2"), PW2)
    if case in ("two-keyslots", "token"):
        _cs("luksAddKey", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "-d",
            vol + ".key", vol, key2, check=True)
    if case == "token":
        tok = write_file(os.path.join(workdir, "tok.json"),
                         b'{"type":"pyqcrypt-test","keyslots":["1"],"note":"a \\"quoted\\" / value"}')
        _cs("token", "import", "--json-file", tok, "--key-slot", "1", vol, check=True)
    return [vol], vol


@pytest.mark.parametrize("case", ["fresh", "two-keyslots", "token", "sector4096", "detached"])
def test_dump_json_metadata_is_cryptsetups(workdir, case):
    dev, _ = _luks2(workdir, case)
    theirs = _cs("luksDump", "--dump-json-metadata", *dev, check=True)
    for verb in ("dump", "luksDump"):
        ours = _pyq(verb, "--dump-json-metadata", *dev)
        assert (ours.returncode, ours.stdout) == (0, theirs.stdout), ours.stderr


@pytest.mark.parametrize("case", ["token", "detached"])
def test_output_json_luks2(workdir, case):
    dev, where = _luks2(workdir, case)
    ours = _pyq("dump", "--output", "json", *dev)
    assert ours.returncode == 0, ours.stderr
    got = json.loads(ours.stdout)
    assert got["metadata"] == json.loads(_cs("luksDump", "--dump-json-metadata", where).stdout)
    text = _cs("luksDump", where).stdout.decode()
    assert got["version"] == 2
    assert got["uuid"] == _cs("luksUUID", where).stdout.decode().strip()
    assert "Epoch:         \t%d\n" % got["epoch"] in text
    assert "Metadata area: \t%d [bytes]\n" % got["metadata_area"] in text
    assert "Keyslots area: \t%d [bytes]\n" % got["keyslots_area"] in text


def _luks1_fields_from_text(text):
    """The values cryptsetup's LUKS1 luksDump prints, keyed as pyqcrypt's JSON keys them."""
    def value(label):
        return re.search(r"^%s:\s*\t(.*)$" % re.escape(label), text, re.M).group(1).strip()

    def hexblock(label):
        m = re.search(r"%s:\s*\t((?:[0-9a-f ]+\n(?:\s*\t(?=[0-9a-f]))?)+)" % re.escape(label), text)
        return "".join(m.group(1).split())
    out = {"version": int(value("Version")), "cipher_name": value("Cipher name"),
           "cipher_mode": value("Cipher mode"), "hash_spec": value("Hash spec"),
           "payload_offset": int(value("Payload offset")), "mk_bits": int(value("MK bits")),
           "mk_digest": value("MK digest").replace(" ", ""), "mk_salt": hexblock("MK salt"),
           "mk_iterations": int(value("MK iterations")), "uuid": value("UUID"), "keyslots": []}
    for n, state, body in re.findall(r"^Key Slot (\d): (ENABLED|DISABLED)\n((?:\t.*\n)*)", text, re.M):
        slot = {"slot": int(n), "state": state.lower()}
        if state == "ENABLED":
            salt = re.search(r"Salt:\s*\t((?:[0-9a-f ]+\n\t?\s*\t?)+)", body).group(1)
            slot.update(iterations=int(re.search(r"Iterations:\s*\t(\d+)", body).group(1)),
                        salt="".join(salt.split()),
                        key_material_offset=int(re.search(r"Key material offset:\t(\d+)", body).group(1)),
                        stripes=int(re.search(r"AF stripes:\s*\t(\d+)", body).group(1)))
        out["keyslots"].append(slot)
    return out


def test_output_json_luks1_holds_what_luksdump_prints(workdir):
    vol = cs_format(workdir, "v1", PW)
    key2 = write_file(os.path.join(workdir, "k2"), PW2)
    _cs("luksAddKey", "--pbkdf-force-iterations", "1000", "-S", "3", "-d", vol + ".key", vol, key2,
        check=True)
    ours = _pyq("luksDump", "--output", "json", vol)
    assert ours.returncode == 0, ours.stderr
    got = json.loads(ours.stdout)
    assert got == _luks1_fields_from_text(_cs("luksDump", vol).stdout.decode())
    assert [s["state"] for s in got["keyslots"]] == ["enabled", "disabled", "disabled", "enabled"] + \
        ["disabled"] * 4


def test_dump_json_metadata_refuses_luks1_as_cryptsetup(workdir):
    vol = cs_format(workdir, "v1", PW)
    missing = os.path.join(workdir, "missing")
    for dev in (vol, missing):
        theirs, ours = _cs("luksDump", "--dump-json-metadata", dev), _pyq("luksDump", "--dump-json-metadata", dev)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), dev
    assert _pyq("luksDump", "--dump-json-metadata", vol).stderr == _cs("luksDump", "--dump-json-metadata",
                                                                        vol).stderr


def test_output_json_qcow2_luks_is_qemus_header(workdir):
    img = os.path.join(workdir, "img.qcow2")
    key = write_file(os.path.join(workdir, "pw"), PW)
    qemu_img("create", "-f", "qcow2", "--object", "secret,id=s0,file=%s" % key, "-o",
             "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", img, "1M")
    enc = json.loads(qemu_img("info", "--output", "json", img).stdout)["format-specific"]["data"]["encrypt"]
    ours = _pyq("dump", "--output", "json", img)
    assert ours.returncode == 0, ours.stderr
    got = json.loads(ours.stdout)
    assert got["uuid"] == enc["uuid"]
    assert got["payload_offset"] * 512 == enc["payload-offset"]
    assert got["mk_iterations"] == enc["master-key-iters"]
    assert (got["cipher_name"], got["hash_spec"]) == (enc["cipher-alg"].split("-")[0], enc["hash-alg"])
    assert [(s["state"] == "enabled", s.get("iterations"), s.get("stripes"))
            for s in got["keyslots"]] == \
        [(s["active"], s.get("iters"), s.get("stripes")) for s in enc["slots"]]


def test_json_never_prints_the_volume_key(workdir):
    vol = cs_format(workdir, "v1", PW)
    for extra in (["--output", "json"], ["--dump-json-metadata"]):
        proc = _pyq("dump", "--dump-volume-key", "-q", "--key-file", vol + ".key", *extra, vol)
        assert proc.returncode == 1 and proc.stdout == b"", proc
