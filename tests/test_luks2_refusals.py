# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 volumes pyqcrypt must refuse, and hostile LUKS2 headers.

Refused in words (``pyqcrypt convert`` re-encrypting and --keep-ciphertext:
exit 1, one ``pyqcrypt:`` line, nothing written; ``pyqcrypt.open``: a
pyqcrypt.Error): a re-encryption or an encryption in progress (made by
``cryptsetup reencrypt --init-only``) and headers edited here (both copies,
checksums recomputed) to carry integrity, an unknown mandatory requirement,
a second segment, segment flags, linear, OPAL and unknown segment types.
Where libcryptsetup still loads the edited header (``cryptsetup luksDump``
exits 0), the refusal is pyqcrypt's own and its message names the reason.

Hostile headers (random byte edits of the binary headers and the JSON, with
and without valid checksums, and structural JSON edits) give metadata or a
pyqcrypt.Error from ``read_metadata`` and ``pyqcrypt.open``: never another
exception, never a hang.
"""

import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyqcrypt
from pyqcrypt.luks.luks2_meta import read_metadata

from conftest import run, scratch_dir, tool, write_file
from luks2util import MiB, PW, checksum, kdf_args, luksdump_ok, make_luks2, read_json, write_json

# ---- volumes pyqcrypt refuses ------------------------------------------------------

# The pyqcrypt under test (an installed one too), never whatever is on PATH.
PYQCRYPT = [sys.executable, "-m", "pyqcrypt"]


def _reencrypt_in_progress(workdir):
    v = make_luks2(workdir)
    run([tool("cryptsetup"), "reencrypt", "--init-only", "-q", "--key-file", v.keyfile]
        + kdf_args("pbkdf2") + [v.vol])
    return v.vol, v.keyfile


def _encrypt_in_progress(workdir):
    vol = write_file(os.path.join(workdir, "plain.img"), os.urandom(8 * MiB))
    keyfile = write_file(vol + ".key", PW)
    run([tool("cryptsetup"), "reencrypt", "--encrypt", "--init-only", "--type", "luks2", "-q",
         "--reduce-device-size", "4M", "--key-file", keyfile] + kdf_args("pbkdf2") + [vol])
    return vol, keyfile


def _second_segment(doc):
    s0 = doc["segments"]["0"]
    s1 = dict(s0, offset=str(int(s0["offset"]) + MiB))
    s0["size"] = str(MiB)
    doc["segments"]["1"] = s1
    doc["digests"]["0"]["segments"].append("1")


def _set(*path_value):
    *path, value = path_value

    def edit(doc):
        obj = doc
        for k in path[:-1]:
            obj = obj.setdefault(k, {})
        obj[path[-1]] = value
    return edit


# (name, edit of the JSON document, does libcryptsetup load it, words of pyqcrypt's refusal)
MUTATIONS = [
    ("integrity", _set("segments", "0", "integrity", {
        "type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}),
     True, "authenticated encryption"),
    ("requirement", _set("config", "requirements", "mandatory", ["some-future-flag"]), True,
     "some-future-flag"),
    ("second-segment", _second_segment, True, "2 data segments"),
    ("flag-backup-final", _set("segments", "0", "flags", ["backup-final"]), False, None),
    ("flag-unknown", _set("segments", "0", "flags", ["some-future-flag"]), True, "flags"),
    ("type-unknown", _set("segments", "0", "type", "some-future-type"), True, "some-future-type"),
    ("type-linear", _set("segments", "0", "type", "linear"), True, "plaintext (linear)"),
    ("type-hw-opal", _set("segments", "0", "type", "hw-opal-crypt"), True, "OPAL"),
]


def _mutated(edit):
    def make(workdir):
        v = make_luks2(workdir)
        doc = read_json(v.vol)
        edit(doc)
        write_json(v.vol, doc)
        return v.vol, v.keyfile
    return make


REFUSALS = [pytest.param(_reencrypt_in_progress, True, "reencrypt", id="reencrypt-in-progress"),
            pytest.param(_encrypt_in_progress, True, "reencrypt", id="encrypt-in-progress")] + [
    pytest.param(_mutated(edit), loads, words, id=name) for name, edit, loads, words in MUTATIONS]


def _digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _assert_clean_refusal(proc, words=None):
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, err)
    assert err.startswith("pyqcrypt: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "warning" not in err, err
    if words:
        assert words in err, err
    return err


@pytest.mark.interop
@pytest.mark.parametrize("make,loads,words", REFUSALS)
def test_refused(workdir, make, loads, words):
    vol, keyfile = make(workdir)
    # where libcryptsetup loads the header, the refusal below is pyqcrypt's own
    assert luksdump_ok(vol) == loads
    before_files, before = sorted(os.listdir(workdir)), _digest(vol)
    with pytest.raises(pyqcrypt.Error) as exc:
        pyqcrypt.open(vol, passphrase=PW).close()
    if loads and words:
        assert words in str(exc.value)
    out = os.path.join(workdir, "out.qcow2")
    src = ["--object", "secret,id=s,file=%s" % keyfile, "--image-opts",
           "driver=luks,file.filename=%s,key-secret=s" % vol, "-O", "qcow2"]
    for args in (src + ["-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", out],
                 ["--keep-ciphertext"] + src + ["-o", "encrypt.iter-time=10", out]):
        proc = subprocess.run(PYQCRYPT + ["convert"] + args, capture_output=True)
        _assert_clean_refusal(proc, words if loads else None)
        assert sorted(os.listdir(workdir)) == before_files
    for args in (["-O", "raw", out + ".raw"],
                 ["-O", "luks", "-o", "key-secret=s,iter-time=10", out + ".luks"]):
        proc = subprocess.run(PYQCRYPT + ["convert"] + src[:-2] + args, capture_output=True)
        _assert_clean_refusal(proc, words if loads else None)
    assert sorted(os.listdir(workdir)) == before_files
    assert _digest(vol) == before


# ---- hostile headers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    """A small detached-header LUKS2 volume (128 KiB metadata copies, so a
    100000-byte JSON fits): (header bytes, data path, scratch dir)."""
    d = scratch_dir("pyqcrypt-luks2-hostile-")
    v = make_luks2(d, detached=True, size=MiB, extra=["--luks2-metadata-size", "128k"])
    with open(v.header, "rb") as fh:
        data = fh.read()
    yield data, v.vol, d
    shutil.rmtree(d, ignore_errors=True)


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    def alarm(signum, frame):
        raise Hang("no answer within %d s" % seconds)
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _outcomes(header_bytes, data_path, header_path):
    """What read_metadata and pyqcrypt.open make of *header_bytes*: for
    each, None (accepted) or the pyqcrypt.Error; any other exception
    propagates."""
    results = []
    with time_limit(20):
        try:
            read_metadata(lambda off, n: header_bytes[off:off + n], header_path)
            results.append(None)
        except pyqcrypt.Error as exc:
            results.append(exc)
        write_file(header_path, header_bytes)
        try:
            with pyqcrypt.open(data_path, passphrase=PW, header=header_path) as img:
                img.read(0, min(img.size, 8192))
            results.append(None)
        except pyqcrypt.Error as exc:
            results.append(exc)
    return results


def _hdr_size(data):
    return struct.unpack_from(">Q", data, 8)[0]


def _fix_checksums(data, hdr_size):
    data = bytearray(data)
    for base in (0, hdr_size):
        copy_ = data[base:base + hdr_size]
        alg = copy_[72:104].split(b"\0", 1)[0]
        if alg.decode("ascii", "replace") in ("sha1", "sha256", "sha512"):
            data[base + 448:base + 512] = checksum(copy_).ljust(64, b"\0")
    return bytes(data)


def _with_json(data, doc_text):
    """*data* with *doc_text* as the JSON area of both copies (checksums fixed)."""
    hs = _hdr_size(data)
    out = bytearray(data)
    area = hs - 4096
    text = doc_text[:area]
    for base in (0, hs):
        out[base + 4096:base + hs] = text + bytes(area - len(text))
    return _fix_checksums(out, hs)


DELETE, RENAME = object(), object()
KEYS = st.one_of(st.sampled_from(["0", "1", "31", "32", "-1", "00", "\u00b2", "\u0663", "1" * 5000,
                                  "x", ""]), st.text(max_size=6))
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(["0", "512", "4096", "dynamic", "crypt", "linear", "luks2", "pbkdf2",
                     "aes-xts-plain64", "aes-cbc-essiv:sha256", "99999999999999999999",
                     "18446744073709551615", "9223372036854775808", "\u00b2", "-1", "1e3", "0x10",
                     "1" * 5000, "backup-final", "online-reencrypt-v2"]))
VALUES = st.recursive(LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(KEYS, c, max_size=4),
                      max_leaves=8)
PATHS = [(), ("segments",), ("segments", "0"), ("segments", "0", "type"), ("segments", "0", "offset"),
         ("segments", "0", "size"), ("segments", "0", "iv_tweak"), ("segments", "0", "sector_size"),
         ("segments", "0", "encryption"), ("segments", "0", "flags"), ("segments", "0", "integrity"),
         ("segments", None), ("keyslots",), ("keyslots", "0"), ("keyslots", None),
         ("keyslots", "0", "kdf"), ("keyslots", "0", "type"), ("keyslots", "0", "key_size"),
         ("digests",), ("digests", "0", "segments"), ("digests", "0", "keyslots"), ("config",),
         ("config", "requirements"), ("config", "requirements", "mandatory"),
         ("config", "keyslots_size"), ("config", "flags"), ("tokens",), ("tokens", None)]


@st.composite
def json_edits(draw):
    """(path, value) edits of the JSON document; a None in a path is a new key."""
    edits = []
    if draw(st.integers(0, 3)) == 0:            # an existing id renamed
        edits.append((RENAME, draw(st.sampled_from(["keyslots", "segments", "digests"])), draw(KEYS)))
    for _ in range(draw(st.integers(1, 3))):
        path = tuple(draw(KEYS) if p is None else p for p in draw(st.sampled_from(PATHS)))
        edits.append((path, draw(st.one_of(VALUES, st.just(DELETE)))))
    return edits


def _apply(doc, path, value, new_key=None):
    if path is RENAME:
        section = doc.get(value) if isinstance(doc, dict) else None
        if isinstance(section, dict) and section:
            section[new_key] = section.pop(sorted(section)[0])
        return doc
    if not path:
        return {} if value is DELETE else value
    obj = doc
    for k in path[:-1]:
        if not isinstance(obj, dict) or k not in obj:
            return doc
        obj = obj[k]
    if isinstance(obj, dict):
        if value is DELETE:
            obj.pop(path[-1], None)
        else:
            obj[path[-1]] = value
    return doc


BYTE_EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)


@st.composite
def header_mutations(draw, original):
    """Mutated header bytes: raw edits (checksums left wrong, or fixed),
    binary-header field edits with fixed checksums, or JSON edits."""
    hs = _hdr_size(original)
    doc = json.loads(original[4096:hs].split(b"\0", 1)[0])
    text_len = len(original[4096:hs].split(b"\0", 1)[0])
    kind = draw(st.sampled_from(["raw", "raw-fixed", "binary-fixed", "json-bytes", "json"]))
    if kind == "json":
        new = copy.deepcopy(doc)
        for edit in draw(json_edits()):
            new = _apply(new, *edit)
        try:
            text = json.dumps(new, separators=(",", ":")).encode()
        except ValueError:                      # a float NaN etc. still dumps; be safe
            text = b"{}"
        return _with_json(original, text)
    data = bytearray(original)
    for pos, byte in draw(BYTE_EDITS):
        if kind in ("raw", "raw-fixed"):
            where = pos % (2 * hs)
        elif kind == "binary-fixed":
            where = (pos % 512) + (hs if pos & 1 << 19 else 0)
        else:                                   # inside the JSON text of one or both copies
            where = 4096 + pos % (text_len + 1) + (hs if pos & 1 << 19 else 0)
        data[where] = byte
    if kind == "raw":
        return bytes(data)
    return _fix_checksums(data, hs)


def test_hostile_headers(small):
    original, data_path, d = small
    header_path = os.path.join(d, "mutated.hdr")

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated=header_mutations(original))
    def prop(mutated):
        _outcomes(mutated, data_path, header_path)

    prop()


def test_unmutated_header_opens(small):
    original, data_path, d = small
    assert _outcomes(original, data_path, os.path.join(d, "same.hdr")) == [None, None]


def _json_case(text):
    return lambda data: _with_json(data, text)


def _doc_case(*path_value):
    def make(data):
        hs = _hdr_size(data)
        doc = json.loads(data[4096:hs].split(b"\0", 1)[0])
        _set(*path_value)(doc)
        return _with_json(data, json.dumps(doc).encode())
    return make


def _rename_key(section, new):
    def make(data):
        hs = _hdr_size(data)
        doc = json.loads(data[4096:hs].split(b"\0", 1)[0])
        doc[section][new] = doc[section].pop("0")
        return _with_json(data, json.dumps(doc).encode())
    return make


def _bad_hdr_size(data):
    hs = _hdr_size(data)
    out = bytearray(data)
    for base in (0, hs):
        out[base + 8:base + 16] = struct.pack(">Q", 20480)
    return _fix_checksums(out, hs)


@pytest.mark.parametrize("make", [
    pytest.param(_json_case(b"[" * 100000), id="nested-arrays"),
    pytest.param(_json_case(b'{"keyslots":' + b"[" * 50000 + b"]" * 50000 + b"}"),
                 id="nested-in-object"),
    pytest.param(_json_case(b'{"a":' * 20000 + b"1" + b"}" * 20000), id="nested-objects"),
    pytest.param(_bad_hdr_size, id="hdr_size-20480"),
    pytest.param(_doc_case("segments", "0", "offset", "99999999999999999999"), id="huge-offset"),
    pytest.param(_doc_case("segments", "0", "size", "99999999999999999999"), id="huge-size"),
    pytest.param(_doc_case("segments", "0", "iv_tweak", "99999999999999999999"), id="huge-iv_tweak"),
    pytest.param(_doc_case("segments", "0", "offset", 2097152), id="offset-not-a-string"),
    pytest.param(_doc_case("segments", "0", "sector_size", True), id="sector_size-true"),
    pytest.param(_doc_case("segments", "0", "sector_size", "4096"), id="sector_size-string"),
    pytest.param(_doc_case("segments", "0", "sector_size", 8192), id="sector_size-8192"),
    pytest.param(_rename_key("keyslots", "\u00b2"), id="keyslot-id-superscript-two"),
    pytest.param(_rename_key("segments", "\u00b2"), id="segment-id-superscript-two"),
    pytest.param(_rename_key("keyslots", "1" * 5000), id="keyslot-id-5000-digits"),
    pytest.param(_rename_key("segments", "1" * 5000), id="segment-id-5000-digits"),
])
def test_hostile_json_refused(small, make):
    original, data_path, d = small
    results = _outcomes(make(original), data_path, os.path.join(d, "edge.hdr"))
    assert all(isinstance(r, pyqcrypt.Error) for r in results), results
