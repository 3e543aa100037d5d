# SPDX-License-Identifier: LGPL-2.1-or-later
"""The LUKS1 header parser treats every field as untrusted.

Field-by-field corruptions each give a FormatError naming the field, and
random mutations of real headers (from cryptsetup, qemu-img and pyqcrypt)
give a parsed header or a pyqcrypt.Error: never a crash, a hang or a large
allocation.  Parse -> pack is the identity on every header that parses.
"""

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyqcrypt
from pyqcrypt import luks
from pyqcrypt.luks.header import HEADER_SIZE, LuksHeader
from pyqcrypt.luks.device import create_volume

from conftest import cs_format, parse_luks1, qemu_img, qemu_secret, scratch_dir, tool

_REAL = {}


def _ours():
    if "ours" not in _REAL:
        import shutil
        d = scratch_dir()
        try:
            vol = os.path.join(d, "v.luks")
            create_volume(vol, 4096, b"pw", iterations=1000)
            with luks.open_area(vol, writable=True) as area:
                _, mk = luks.unlock(area, b"pw")
                with mk:
                    luks.add_key(area, mk, b"pw2", slot=6, iterations=1000)
            with open(vol, "rb") as fh:
                _REAL["ours"] = (fh.read(4096 * 512), 4096 * 512)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return _REAL["ours"]


def _patch(data, offset, raw):
    return data[:offset] + raw + data[offset + len(raw):]


def test_round_trip_is_identity():
    data, length = _ours()
    hdr = LuksHeader.parse(data, length)
    assert hdr.pack() == data[:HEADER_SIZE]


@pytest.mark.parametrize("offset,raw,field", [
    (0, b"LUKX", "magic"),
    (6, struct.pack(">H", 2), "version"),
    (6, struct.pack(">H", 7), "version"),
    (8, b"a" * 32, "cipher-name"),
    (40, b"x" * 32, "cipher-mode"),
    (72, b"\xff\xfe" + b"\0" * 30, "hash-spec"),
    (8, b"\0" * 32, "cipher-name"),
    (168, b"u" * 40, "uuid"),
    (108, struct.pack(">I", 0), "key-bytes"),
    (108, struct.pack(">I", 100000), "key-bytes"),
    (164, struct.pack(">I", 0), "mk-digest-iter"),
    (208, struct.pack(">I", 0x12345678), "keyslot 0 active"),
    (212, struct.pack(">I", 0), "keyslot 0 iterations"),
    (248, struct.pack(">I", 1), "keyslot 0 key-material-offset"),       # overlaps header
    (248, struct.pack(">I", 4000), "keyslot 0 key-material-offset"),    # into payload
    (248 + 48, struct.pack(">I", 10), "keyslot 1 key-material-offset"),  # overlaps slot 0
    (252, struct.pack(">I", 0), "keyslot 0 stripes"),
    (252, struct.pack(">I", 0xFFFFFFFF), "keyslot 0 stripes"),
    (104, struct.pack(">I", 100), "keyslot 0 key-material-offset"),     # payload before keys
])
def test_bad_field_named(offset, raw, field):
    data, length = _ours()
    with pytest.raises(pyqcrypt.FormatError) as info:
        LuksHeader.parse(_patch(data, offset, raw), length)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)


def test_truncated_and_region_bounds():
    data, length = _ours()
    with pytest.raises(pyqcrypt.FormatError, match="truncated"):
        LuksHeader.parse(data[:300], length)
    with pytest.raises(pyqcrypt.FormatError, match="magic"):
        LuksHeader.parse(b"", length)
    with pytest.raises(pyqcrypt.FormatError, match="past the"):
        LuksHeader.parse(data, 100 * 512)


def test_luks2_named(workdir):
    cs = tool("cryptsetup")
    vol = os.path.join(workdir, "l2.img")
    with open(vol, "wb") as fh:
        fh.truncate(32 << 20)
    with open(vol + ".key", "wb") as fh:
        fh.write(b"pw")
    import subprocess
    subprocess.run([cs, "luksFormat", "--type", "luks2", "-q", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", "--key-file", vol + ".key", vol], check=True)
    with pytest.raises(pyqcrypt.FormatError, match="LUKS2"):
        luks.open_area(vol)


def test_not_luks_file(workdir):
    path = os.path.join(workdir, "zeros")
    with open(path, "wb") as fh:
        fh.write(bytes(1 << 20))
    with pytest.raises(pyqcrypt.FormatError, match="not a LUKS header"):
        luks.open_area(path)
    with open(path, "wb") as fh:
        fh.write(b"LUKS\xba\xbe\0\1")
    with pytest.raises(pyqcrypt.FormatError, match="truncated"):
        luks.open_area(path)


@pytest.fixture(scope="module")
def real_headers(tmp_path_factory):
    """Headers from cryptsetup, qemu-img and pyqcrypt (592 bytes + region length)."""
    d = str(tmp_path_factory.mktemp("hdrs"))
    data, length = _ours()
    out = [(data[:HEADER_SIZE], length)]
    try:
        vol = cs_format(d, "cs.luks", b"pw", "aes-cbc-essiv:sha256", 256, "sha1")
        with open(vol, "rb") as fh:
            data = fh.read(HEADER_SIZE)
        out.append((data, parse_luks1(data)["payload_offset"] * 512))   # the tool's own layout
        vol = os.path.join(d, "q.luks")
        qemu_img("create", "-q", "-f", "luks", "--object", qemu_secret(d, b"pw"), "-o",
                 "key-secret=sec0,iter-time=10", vol, "64K")
        with open(vol, "rb") as fh:
            data = fh.read(HEADER_SIZE)
        out.append((data, parse_luks1(data)["payload_offset"] * 512))
    except BaseException as exc:          # peers missing: mutate our own only
        if not isinstance(exc, pytest.skip.Exception):
            raise
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), edits=st.lists(st.tuples(st.integers(0, HEADER_SIZE - 1),
                                                         st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, HEADER_SIZE)))
def test_mutated_real_headers(real_headers, which, edits, cut):
    data, length = real_headers[which % len(real_headers)]
    buf = bytearray(data[:HEADER_SIZE])
    for off, val in edits:
        buf[off] = val
    if cut is not None:
        buf = buf[:cut]
    try:
        hdr = LuksHeader.parse(bytes(buf), length)
    except pyqcrypt.Error:
        return
    text = luks.dump_text(hdr, "x")
    assert text.startswith("LUKS header information for x")
    # pack writes canonical NUL padding: it is idempotent, and exact on
    # every byte outside the string fields' tails.
    assert LuksHeader.parse(hdr.pack(), length) == hdr
    # The cipher fields give a spec that says the same, or UnsupportedCipher
    # (naming what is wrong), never another error.
    try:
        spec = hdr.spec
    except pyqcrypt.UnsupportedCipher as exc:
        assert str(exc)
    else:
        assert spec.cipher == hdr.cipher_name.strip().lower()
        assert hdr.cipher_mode.strip().lower().startswith(spec.mode)
        assert spec.key_bytes == hdr.key_bytes
