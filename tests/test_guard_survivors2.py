# SPDX-License-Identifier: LGPL-2.1-or-later
"""Tests for mutants the second ci/mutate.py run found surviving: each pins
a behaviour no other test in the mutated file's subset looked at (the
offsets qcow2 header errors name, LUKS1 format's write order and final
sync, LUKS2's secondary header copy, cleanup after failed backups and
opens, default key sizes, PBKDF2 calibration arithmetic, QEMU's secret
rules, Storage's short reads and chunked writes, and qcow2 writes over
snapshots, backing files and partly allocated ranges)."""

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

import pyqcrypt
from pyqcrypt import storage
from pyqcrypt.crypto import CipherSpec
from pyqcrypt.storage import Region, Storage, publication

from conftest import qemu_img, qemu_io, run, scratch_dir, tool, write_file

PW = b"survivor passphrase"


def _py(code, **kw):
    """Run *code* in a fresh interpreter (the pyqcrypt under test: the
    environment, PYTHONPATH included, is inherited)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, **kw)


# ---- 1. qcow2 header errors name the field's offset in the spec -------------------------

# QEMU docs/interop/qcow2.txt, "Header": byte offset of each field.
QCOW2_FIELD_OFFSETS = {
    "magic": 0, "version": 4, "backing_file_offset": 8, "backing_file_size": 16,
    "cluster_bits": 20, "size": 24, "crypt_method": 32, "l1_size": 36, "l1_table_offset": 40,
    "refcount_table_offset": 48, "refcount_table_clusters": 56, "nb_snapshots": 60,
    "snapshots_offset": 64, "incompatible_features": 72, "compatible_features": 80,
    "autoclear_features": 88, "refcount_order": 96, "header_length": 100,
    "compression_type": 104,
}


def _q(fmt, value):
    return struct.pack(fmt, value)


# (case, {file offset: new bytes}, the field the error must name).  The base
# image is qemu-img's 1 MiB qcow2 v3 with 64 KiB clusters: refcount table at
# 0x10000, its block at 0x20000, L1 (one entry) at 0x30000.
HEADER_DAMAGE = [
    ("bad-magic", {0: b"QFI\xfc"}, "magic"),
    ("version-4", {4: _q(">I", 4)}, "version"),
    ("backing-name-too-long", {8: _q(">Q", 1024), 16: _q(">I", 2000)}, "backing_file_offset"),
    ("backing-name-not-utf8", {8: _q(">Q", 1024), 16: _q(">I", 4), 1024: b"\xff\xfe\xfd\xfc"},
     "backing_file_offset"),
    ("cluster-bits-8", {20: _q(">I", 8)}, "cluster_bits"),
    ("absurd-size", {24: _q(">Q", 1 << 63)}, "size"),
    ("crypt-method-3", {32: _q(">I", 3)}, "crypt_method"),
    ("l1-size-huge", {36: _q(">I", 5 << 20)}, "l1_size"),
    ("l1-unaligned", {40: _q(">Q", 0x30200)}, "l1_table_offset"),
    ("l1-outside", {40: _q(">Q", 0xA0000)}, "l1_table_offset"),
    ("l1-on-refcount-table", {40: _q(">Q", 0x10000)}, "l1_table_offset"),
    ("reftable-unaligned", {48: _q(">Q", 0x10200)}, "refcount_table_offset"),
    ("reftable-on-header", {48: _q(">Q", 0)}, "refcount_table_offset"),
    ("reftable-clusters-0", {56: _q(">I", 0)}, "refcount_table_clusters"),
    ("too-many-snapshots", {60: _q(">I", 70000)}, "nb_snapshots"),
    ("snapshot-table-unaligned", {60: _q(">I", 1), 64: _q(">Q", 100)}, "snapshots_offset"),
    ("unknown-incompatible-bit", {72: _q(">Q", 1 << 5)}, "incompatible_features"),
    ("zlib-with-compression-bit", {72: _q(">Q", 1 << 3)}, "incompatible_features"),
    ("data-file-bit-without-name", {72: _q(">Q", 1 << 2)}, "incompatible_features"),
    ("data-file-raw-alone", {88: _q(">Q", 2)}, "autoclear_features"),
    ("refcount-order-7", {96: _q(">I", 7)}, "refcount_order"),
    ("header-length-105", {100: _q(">I", 105)}, "header_length"),
    ("header-length-past-data", {100: _q(">I", 1 << 20)}, "header_length"),
    ("compression-type-5", {104: b"\x05"}, "compression_type"),
]


@pytest.fixture(scope="module")
def qemu_qcow2():
    """The bytes of qemu-img's empty 1 MiB qcow2 image (64 KiB clusters)."""
    d = scratch_dir()
    try:
        path = os.path.join(d, "base.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", path, "1M")
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.interop
@pytest.mark.parametrize("case,patch,field", HEADER_DAMAGE, ids=[c[0] for c in HEADER_DAMAGE])
def test_qcow2_header_errors_name_the_spec_offset(workdir, qemu_qcow2, case, patch, field):
    data = bytearray(qemu_qcow2)
    for off, raw in patch.items():
        data[off:off + len(raw)] = raw
    path = write_file(os.path.join(workdir, "bad.qcow2"), bytes(data))
    with pytest.raises(pyqcrypt.FormatError) as exc:
        pyqcrypt.open(path, format="qcow2").close()
    assert exc.value.field == field, str(exc.value)
    assert exc.value.offset == QCOW2_FIELD_OFFSETS[field], str(exc.value)
    assert "at offset %d" % QCOW2_FIELD_OFFSETS[field] in str(exc.value)


@pytest.mark.interop
def test_snapshot_table_reader_names_nb_snapshots_offset(workdir, qemu_qcow2):
    """read_snapshots re-checks the count it is given (a header built or
    changed in memory never went through the parser's check)."""
    from pyqcrypt.qcow2.open import read_header
    from pyqcrypt.qcow2.snapshots import read_snapshots
    path = write_file(os.path.join(workdir, "s.qcow2"), qemu_qcow2)
    with Storage(path) as st:
        h = read_header(st)
        h.nb_snapshots, h.snapshots_offset = 70000, 0x10000
        with pytest.raises(pyqcrypt.FormatError) as exc:
            read_snapshots(st, h)
    assert (exc.value.field, exc.value.offset) == ("nb_snapshots", 60)


# ---- 2. LUKS1 format: area, key material, header, then one sync --------------------------

class _Crash(BaseException):
    """Simulated power loss (nothing catches a BaseException as an error)."""


def test_luks1_format_order_and_final_sync(workdir):
    """format_region's documented order, seen through the storage fault
    hook: the first write clears [0, first keyslot) of the region (the old
    header is gone even if the machine dies right after it), the header is
    the last write, and a sync follows it before format returns."""
    from pyqcrypt.luks.format import format_region, plan_layout
    base = 65536                                    # where a qcow2 FDE region starts
    layout = plan_layout(32, style="qemu")
    spec = CipherSpec.parse("aes-xts-plain64", 256)
    old = os.urandom(base) + b"LUKS\xba\xbe\x00\x01" + os.urandom(layout.area_bytes - 8)
    path = write_file(os.path.join(workdir, "fmt.img"), old)
    ops = []

    def record(kind, st, offset, length):
        ops.append((kind, offset, length))

    with Storage(path, writable=True) as st, storage.injected_faults(record):
        header, mk = format_region(Region(st, base, layout.area_bytes), spec, PW, layout=layout,
                                   style="qemu", iterations=1000)
        mk.wipe()
    first = layout.km_offsets[0] * 512
    assert ops[0] == ("write", base, first)
    assert ops[-2:] == [("write", base, len(header.pack())), ("sync", 0, 0)], ops[-3:]
    assert [op for op in ops if op[0] != "write"] == [("sync", 0, 0)]

    # Dying right after the first write: no trace of the old header.
    path2 = write_file(os.path.join(workdir, "fmt2.img"), old)
    writes = []

    def crash_after_first(kind, st, offset, length):
        if writes:
            raise _Crash()
        writes.append(offset)

    with Storage(path2, writable=True) as st, storage.injected_faults(crash_after_first):
        with pytest.raises(_Crash):
            format_region(Region(st, base, layout.area_bytes), spec, PW, layout=layout,
                          style="qemu", iterations=1000)
    with open(path2, "rb") as fh:
        data = fh.read()
    assert data[base:base + first] == bytes(first)
    assert data[:base] == old[:base] and data[base + first:] == old[base + first:]


# ---- 3. LUKS2: the secondary header copy; what is not LUKS2 ------------------------------

MiB = 1 << 20


@pytest.fixture(scope="module")
def luks2_volume():
    """(the bytes of a 20 MiB LUKS2 volume cryptsetup made, {payload
    offset: bytes written into it through pyqcrypt})."""
    d = scratch_dir()
    try:
        vol, key = os.path.join(d, "v.luks2"), write_file(os.path.join(d, "v.key"), PW)
        with open(vol, "wb") as fh:
            fh.truncate(20 * MiB)
        run([tool("cryptsetup"), "luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2",
             "--pbkdf-force-iterations", "1000", "-q", "--key-file", key, vol])
        written = {0: os.urandom(65536), 3 * MiB + 4096: os.urandom(8192)}
        with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
            for off, data in written.items():
                img.write(off, data)
        with open(vol, "rb") as fh:
            return fh.read(), written
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _hdr_size(data):
    return struct.unpack_from(">Q", data, 8)[0]


def _rechecksum(data, base):
    """Recompute the checksum of the header copy at *base* (after an edit
    the test wants the parser, not the checksum, to see)."""
    import hashlib
    size = _hdr_size(data) if base == 0 else struct.unpack_from(">Q", data, base + 8)[0]
    copy = bytearray(data[base:base + size])
    copy[448:512] = bytes(64)
    alg = bytes(copy[72:104]).split(b"\0", 1)[0].decode()
    data[base + 448:base + 448 + 64] = hashlib.new(alg, bytes(copy)).digest().ljust(64, b"\0")


def _damage_primary_binary(data):
    data[24] ^= 0xFF                                # the label: the checksum no longer matches


def _damage_primary_json(data):
    data[4096 + 1] ^= 0x20


def _primary_json_not_json(data):
    """Checksum right, JSON area unparsable: only the parser refuses it."""
    data[4096:4096 + 8] = b"{{{{{{{{"
    _rechecksum(data, 0)


def _primary_magic_gone(data):
    data[0:6] = bytes(6)


def _damage_secondary(data):
    base = _hdr_size(data)
    data[base + 4096 + 1] ^= 0x20


LUKS2_DAMAGE = {"primary-binary": _damage_primary_binary, "primary-json": _damage_primary_json,
                "primary-json-unparsable": _primary_json_not_json,
                "primary-magic": _primary_magic_gone, "secondary-json": _damage_secondary}


@pytest.mark.interop
@pytest.mark.parametrize("damage", sorted(LUKS2_DAMAGE))
def test_luks2_opens_from_the_surviving_header_copy(workdir, luks2_volume, damage):
    pristine, written = luks2_volume
    data = bytearray(pristine)
    LUKS2_DAMAGE[damage](data)
    # libcryptsetup, independently of pyqcrypt, still finds a valid copy (on
    # a copy of the file: it repairs the damaged header copy as it loads)
    run([tool("cryptsetup"), "luksDump", write_file(os.path.join(workdir, "c.luks2"), bytes(data))])
    vol = write_file(os.path.join(workdir, "d.luks2"), bytes(data))
    with pyqcrypt.open(vol, passphrase=PW, format="luks2") as img:
        assert img.size == 4 * MiB
        for off, want in written.items():
            assert img.read(off, len(want)) == want, (damage, off)


@pytest.mark.interop
@pytest.mark.parametrize("damage", sorted(LUKS2_DAMAGE))
def test_luks2_metadata_reader_takes_the_valid_copy(workdir, luks2_volume, damage):
    """pyqcrypt's own reader of the two copies (libcryptsetup repairs a
    damaged copy on disk when it loads the header, so only a read without
    it shows that the reader, too, falls back): the same metadata as from
    the pristine volume, and not a byte of the file changed."""
    from pyqcrypt.luks.luks2 import read_header_metadata
    pristine, written = luks2_volume
    good = write_file(os.path.join(workdir, "good.luks2"), pristine)
    data = bytearray(pristine)
    LUKS2_DAMAGE[damage](data)
    vol = write_file(os.path.join(workdir, "d.luks2"), bytes(data))
    with Storage(good) as st:
        want = read_header_metadata(st)
    with Storage(vol) as st:
        got = read_header_metadata(st)
    assert (got.uuid, got.seqid, got.hdr_size) == (want.uuid, want.seqid, want.hdr_size)
    seg, want_seg = got.data_segment(), want.data_segment()
    assert (seg.offset, seg.encryption, seg.sector_size) == (
        want_seg.offset, want_seg.encryption, want_seg.sector_size)
    with open(vol, "rb") as fh:
        assert fh.read() == bytes(data)


@pytest.mark.interop
@pytest.mark.parametrize("damage", ["primary-json", "secondary-json"])
def test_read_only_luks2_open_writes_nothing(workdir, luks2_volume, damage):
    """libcryptsetup's load repairs a damaged header copy in place when it
    can write the file; pyqcrypt's read-only commands hand it a copy of
    the header area instead, so open, info, dump and test-passphrase leave
    the volume as it was.  A writing verb (add-key) may repair it, as
    cryptsetup's do."""
    pristine, written = luks2_volume
    data = bytearray(pristine)
    LUKS2_DAMAGE[damage](data)
    vol = write_file(os.path.join(workdir, "ro.luks2"), bytes(data))
    with pyqcrypt.open(vol, passphrase=PW) as img:
        assert img.read(0, 65536) == written[0]
    key = write_file(os.path.join(workdir, "ro.key"), PW)
    for args in (["info", vol], ["dump", vol], ["test-passphrase", "--key-file", key, vol]):
        proc = subprocess.run([sys.executable, "-m", "pyqcrypt", *args], capture_output=True)
        assert proc.returncode == 0, (args, proc.stderr)
    with open(vol, "rb") as fh:
        assert fh.read() == bytes(data), "a read-only command changed the volume"


@pytest.mark.interop
def test_luks2_with_both_copies_damaged_is_refused(workdir, luks2_volume):
    pristine, written = luks2_volume
    data = bytearray(pristine)
    _damage_primary_json(data)
    _damage_secondary(data)
    vol = write_file(os.path.join(workdir, "dd.luks2"), bytes(data))
    from pyqcrypt.luks.luks2 import read_header_metadata
    with Storage(vol) as st, pytest.raises(pyqcrypt.FormatError):
        read_header_metadata(st)
    with pytest.raises(pyqcrypt.Error):
        pyqcrypt.open(vol, passphrase=PW, format="luks2").close()


@pytest.mark.parametrize("head", [b"LUKS\xba\xbe", b"LUKS\xba\xbe\x00"], ids=["magic-only", "7-bytes"])
def test_short_file_with_the_luks_magic_is_refused(workdir, head):
    """Fewer than the 8 bytes of magic and version: a clean pyqcrypt.Error
    (not a struct.error from reading a version that is not there)."""
    from pyqcrypt.luks.luks2 import luks_version
    path = write_file(os.path.join(workdir, "short.img"), head)
    assert luks_version(path) is None
    with pytest.raises(pyqcrypt.Error):
        pyqcrypt.open(path, passphrase=PW).close()


@pytest.mark.interop
def test_requirement_flags_libcryptsetup_reports_are_named(workdir, luks2_volume):
    """A header whose mandatory requirements change between pyqcrypt's read
    and libcryptsetup's: the refusal names libcryptsetup's flag in words
    (CRYPT_REQUIREMENT_OFFLINE_REENCRYPT is bit 0)."""
    from luks2util import read_json, write_json
    from pyqcrypt.luks import luks2
    pristine, written = luks2_volume
    plain = write_file(os.path.join(workdir, "plain.luks2"), pristine)
    changed = write_file(os.path.join(workdir, "changed.luks2"), pristine)
    doc = read_json(changed)
    doc["config"].setdefault("requirements", {})["mandatory"] = ["offline-reencrypt"]
    write_json(changed, doc)
    with Storage(plain) as st:
        meta = luks2.read_header_metadata(st)
    with luks2.luks2_device(changed) as (ffi, lib, cd):
        with pytest.raises(pyqcrypt.Error) as exc:
            luks2.checked_segment(meta, ffi, lib, cd)
    assert "offline re-encryption" in str(exc.value), str(exc.value)


# ---- 4. a failed LUKS2 header backup leaves no temporary behind --------------------------

@pytest.mark.interop
def test_failed_luks2_header_backup_leaves_nothing(workdir, luks2_volume):
    """libcryptsetup's write of the backup fails (RLIMIT_FSIZE: EFBIG
    after the first MiB; Python ignores SIGXFSZ): the error is reported
    and neither the backup nor its NAME.pyqcrypt-PID.tmp is left."""
    pristine, written = luks2_volume
    vol = write_file(os.path.join(workdir, "v.luks2"), pristine)
    before = sorted(os.listdir(workdir))

    proc = _py("""
        import resource
        import pyqcrypt
        from pyqcrypt.luks.luks2_keyslots import header_backup
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        try:
            header_backup(%r, %r)
        except pyqcrypt.Error as exc:
            print("failed:", exc)
        """ % (vol, os.path.join(workdir, "backup.img")))
    assert proc.returncode == 0, proc.stderr
    assert "failed: libcryptsetup cannot back up the header" in proc.stdout, proc.stdout
    assert sorted(os.listdir(workdir)) == before


# ---- 5. descriptors: a failed LUKS open, a failed LUKS1 backup, Storage.close ------------

def _open_fds():
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("content", [b"not a LUKS volume at all" * 100, b"LUKS\xba\xbe\x00\x01" + bytes(100),
                                     b"LUKS\xba\xbe"], ids=["not-luks", "truncated", "magic-only"])
def test_failed_luks_open_closes_its_file(workdir, content):
    path = write_file(os.path.join(workdir, "bad.luks"), content)
    for attempt in (lambda: pyqcrypt.luks.open_area(path),
                    lambda: pyqcrypt.luks.open_area(path, writable=True),
                    lambda: pyqcrypt.open(path, passphrase=PW, format="luks")):
        before = _open_fds()
        with pytest.raises(pyqcrypt.Error):
            attempt()
        assert _open_fds() == before


_FD0_PRELUDE = """
    import errno, os, sys
    import pyqcrypt
    def fd0_open():
        try:
            os.fstat(0)
            return True
        except OSError as exc:
            assert exc.errno == errno.EBADF
            return False
"""


def test_storage_close_closes_descriptor_zero(workdir):
    """A process started without stdin: the Storage gets descriptor 0,
    and close() must close it like any other."""
    path = write_file(os.path.join(workdir, "f.img"), bytes(4096))
    proc = _py(_FD0_PRELUDE + """
    from pyqcrypt.storage import Storage
    os.close(0)             # no stdin: the next descriptor opened is 0
    st = Storage(%r)
    assert st.fd == 0, st.fd
    st.close()
    print("fd0 open after close:", fd0_open())
    """ % path)
    assert proc.returncode == 0, proc.stderr
    assert "fd0 open after close: False" in proc.stdout, proc.stdout


def test_failed_luks1_backup_closes_descriptor_zero(workdir):
    """The LUKS1 backup file opened as descriptor 0 (no stdin) and the
    write fails (RLIMIT_FSIZE): the descriptor is closed, the partial file
    removed, and the error is a pyqcrypt StorageError."""
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, MiB, format="luks", passphrase=PW, iterations=1000)
    dest = os.path.join(workdir, "backup.img")
    proc = _py(_FD0_PRELUDE + """
    import resource
    from pyqcrypt import luks
    from pyqcrypt.luks.backup import header_backup
    area = luks.open_area(%r)
    dest = %r
    fds, real_open = [], os.open
    def recording_open(path, *args, **kw):
        fd = real_open(path, *args, **kw)
        if path == dest:
            fds.append(fd)
        return fd
    os.open = recording_open
    os.close(0)             # no stdin: the backup file gets descriptor 0
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    try:
        header_backup(area, dest)
    except pyqcrypt.StorageError as exc:
        print("failed:", exc)
    print("backup descriptors:", fds)
    print("fd0 open after the failure:", fd0_open())
    print("backup left:", os.path.exists(dest))
    """ % (vol, dest))
    assert proc.returncode == 0, proc.stderr
    assert "backup descriptors: [0]" in proc.stdout, proc.stdout
    assert "failed: writing the header backup" in proc.stdout, proc.stdout
    assert "fd0 open after the failure: False" in proc.stdout, proc.stdout
    assert "backup left: False" in proc.stdout, proc.stdout


# ---- 6. default key sizes of ciphers OpenSSL does not have -------------------------------

@pytest.mark.parametrize("spec,bits", [
    # cryptsetup's rule: 256 bits, twice that for XTS (two keys); LRW: a
    # 128-bit cipher key and the 128-bit tweak key.
    ("serpent-xts-plain64", 512), ("twofish-xts-plain64", 512),
    ("serpent-cbc-essiv:sha256", 256), ("twofish-cbc-plain64", 256),
    ("serpent-lrw-benbi", 256), ("cast6-cbc-plain", 256),
])
def test_default_key_size_of_non_openssl_ciphers(spec, bits):
    assert CipherSpec.parse(spec).key_bits == bits


# ---- 7. PBKDF2 calibration: how the trial count grows ------------------------------------

def test_calibration_quadruples_until_a_run_is_timeable(monkeypatch):
    """Runs under a millisecond are too short to time: the count is
    multiplied by 4 until one is not, then aimed at the target (10%
    over) and the measured rate returned."""
    import importlib
    mod = importlib.import_module("pyqcrypt.crypto.kdf")     # the package's pbkdf2 is the function
    tried = []

    def fake_run(hash_name, iterations, key_bytes, backend=None):
        tried.append(iterations)
        return iterations / 10_000_000              # 10 M iterations per CPU second

    monkeypatch.setattr(mod, "_timed_run", fake_run)
    assert mod.iterations_per_second("sha256", target_ms=20) == 10_000_000
    aimed = int(16000 * 20 / (16000 / 10_000_000 * 1000) * 1.1) + 1
    assert tried == [1000, 4000, 16000, aimed]


# ---- 8. SecretBuffer and QEMU's secret rules ---------------------------------------------

def test_process_is_undumpable_once_a_secret_exists():
    proc = _py("""
        import ctypes, os
        os.environ.pop("PYQCRYPT_ALLOW_CORE_DUMPS", None)
        libc = ctypes.CDLL(None, use_errno=True)
        PR_GET_DUMPABLE = 3
        before = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
        from pyqcrypt.crypto import SecretBuffer
        SecretBuffer.from_bytes(b"k").wipe()
        print(before, libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
    """, env={k: v for k, v in os.environ.items() if k != "PYQCRYPT_ALLOW_CORE_DUMPS"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "0"], proc.stdout


@pytest.mark.parametrize("data,ok", [
    (b"\xf4\x8f\xbf\xbf", True),                 # U+10FFFF, the last code point
    (b"\xf4\x7f\x80\x80", False),                # F4: second byte 80..8F, never below 80
    (b"\xf4\x90\x80\x80", False),                # above U+10FFFF
    (b"\xf0\x8f\xbf\xbf", False),                # F0: overlong below 90
])
def test_qemu_secret_rules_f0_f4(data, ok):
    from pyqcrypt.crypto.keybuf import qemu_can_use
    assert qemu_can_use(data) is ok


def test_empty_secret_buffers():
    from pyqcrypt.crypto import SecretBuffer
    with SecretBuffer.from_bytes(b"") as a, SecretBuffer(0) as b:
        assert len(a) == 0 and a.reveal() == b""
        assert a.equals(b) and a.equals(b"") and not a.equals(b"x")
        with pytest.raises(pyqcrypt.Error):
            a.byte(0)


# ---- 9. Storage -----------------------------------------------------------------------------

def test_negative_reads_are_refused_before_the_kernel(workdir):
    """A negative offset or length is a caller's mistake, refused as such
    (a plain pyqcrypt.Error), not passed to pread (EINVAL, ValueError)."""
    path = write_file(os.path.join(workdir, "f.img"), bytes(8192))
    with Storage(path) as st:
        for offset, length in ((-512, 512), (0, -1), (-1, -1)):
            with pytest.raises(pyqcrypt.Error) as exc:
                st.pread(offset, length)
            assert type(exc.value) is pyqcrypt.Error, repr(exc.value)


def test_short_preads_continue_where_they_stopped(workdir, monkeypatch):
    data = os.urandom(100000)
    path = write_file(os.path.join(workdir, "f.img"), data)
    real = os.pread

    def short_pread(fd, n, offset):
        return real(fd, min(n, 777), offset)

    with Storage(path) as st:
        monkeypatch.setattr(os, "pread", short_pread)
        got = st.pread(5000, 20000)
        monkeypatch.setattr(os, "pread", real)
    assert got == data[5000:25000]


def test_block_device_data_runs_are_the_whole_range(workdir):
    """No SEEK_DATA/SEEK_HOLE on a block device: everything counts as data,
    from the start of the range asked about."""
    path = write_file(os.path.join(workdir, "f.img"), b"")
    with Storage(path) as st:
        st.is_block_device = True           # what a loop device's Storage says
        assert list(st.data_runs(4096, 10000)) == [(0, 10000)]
        assert list(st.data_runs(4096, 0)) == []


def test_copy_through_the_buffer_moves_at_most_4_mib_a_call(workdir):
    """Where the kernel cannot copy (copy_file_range refused, block
    devices), each call moves at most 4 MiB through a buffer of that size."""
    src_data = os.urandom(9 * MiB)
    src_path = write_file(os.path.join(workdir, "src"), src_data)
    dst_path = os.path.join(workdir, "dst")
    with Storage(src_path) as src, Storage(dst_path, writable=True, create=True) as dst:
        src._no_copy_range = True
        done, calls = 0, []
        while done < len(src_data):
            n = dst.copy_range_from(src, done, done, len(src_data) - done)
            calls.append(n)
            done += n
        assert calls == [4 * MiB, 4 * MiB, MiB]
        assert len(dst._bounce) == 4 * MiB
    with open(dst_path, "rb") as fh:
        assert fh.read() == src_data


def test_zero_fill_writes_4_mib_chunks_in_place(workdir):
    from pyqcrypt.storage import zero_fill
    calls = []
    zero_fill(lambda off, data: calls.append((off, len(data))), 5 * MiB, 9 * MiB + 512)
    assert calls == [(5 * MiB, 4 * MiB), (9 * MiB, 4 * MiB), (13 * MiB, MiB + 512)]
    data = os.urandom(16 * MiB)
    path = write_file(os.path.join(workdir, "z.img"), data)
    with Storage(path, writable=True) as st:
        zero_fill(st.pwrite, 5 * MiB, 9 * MiB + 512)
    with open(path, "rb") as fh:
        got = fh.read()
    assert got[:5 * MiB] == data[:5 * MiB]
    assert got[5 * MiB:14 * MiB + 512] == bytes(9 * MiB + 512)
    assert got[14 * MiB + 512:] == data[14 * MiB + 512:]


def test_rename_noreplace_is_one_atomic_rename(workdir, monkeypatch):
    """With renameat2 (glibc >= 2.28, Linux >= 3.15): one rename, never
    link + unlink (a crash between the two would leave both names)."""
    from pyqcrypt.storage.publication import _libc_renameat2, rename_noreplace
    if _libc_renameat2() is None:
        pytest.skip("this libc has no renameat2")
    src = write_file(os.path.join(workdir, "a.tmp"), b"new")
    dst = os.path.join(workdir, "a")

    def no_link(*args):
        raise AssertionError("os.link called")

    monkeypatch.setattr(os, "link", no_link)
    rename_noreplace(src, dst)
    assert os.listdir(workdir) == ["a"]


def test_rename_noreplace_without_renameat2(workdir, monkeypatch):
    """Where libc lacks renameat2: link, then unlink the old name; an
    existing destination is never replaced."""
    from pyqcrypt.storage.publication import _renameat2_noreplace, rename_noreplace
    monkeypatch.setattr(publication, "_libc_renameat2", lambda: None)
    src = write_file(os.path.join(workdir, "a.tmp"), b"new")
    dst = os.path.join(workdir, "a")
    assert _renameat2_noreplace(src, dst) is False
    rename_noreplace(src, dst)
    assert os.listdir(workdir) == ["a"]
    with open(dst, "rb") as fh:
        assert fh.read() == b"new"
    src = write_file(os.path.join(workdir, "b.tmp"), b"other")
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert sorted(os.listdir(workdir)) == ["a", "b.tmp"]


# ---- 10. qcow2 writes, checked by QEMU -------------------------------------------------------

def _qemu_check_clean(path):
    proc = subprocess.run([tool("qemu-img"), "check", "--output=json", path], capture_output=True,
                          text=True)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    report = json.loads(proc.stdout)
    assert not report.get("corruptions") and not report.get("leaks"), report
    return report


def _qemu_raw(workdir, path, name="out.raw"):
    out = os.path.join(workdir, name)
    qemu_img("convert", "-f", "qcow2", "-O", "raw", path, out)
    with open(out, "rb") as fh:
        return fh.read()


@pytest.mark.interop
@pytest.mark.parametrize("bits", [8, 16, 64])
def test_refcounts_of_byte_wide_entries_stay_exact(workdir, bits):
    """512-byte clusters, so writing 1 MiB needs many new refcount blocks
    (each counting itself) and discarding frees clusters one refcount at a
    time: qemu-img check must find every refcount exact, and qemu-img read
    back what was written."""
    path = os.path.join(workdir, "r.qcow2")
    pyqcrypt.create(path, 2 * MiB, format="qcow2", cluster_size=512, refcount_bits=bits)
    data = bytearray(os.urandom(MiB))
    with pyqcrypt.open(path, writable=True) as img:
        img.write(0, data)
        img.flush()
        img.discard(64 * 512, 32 * 512)
        data[64 * 512:96 * 512] = bytes(32 * 512)
        img.write(MiB + 512, b"\x5a" * 4096)
    _qemu_check_clean(path)
    raw = _qemu_raw(workdir, path)
    assert raw[:MiB] == data
    assert raw[MiB:MiB + 512 + 4096] == bytes(512) + b"\x5a" * 4096


@pytest.mark.interop
def test_luks_in_a_v2_header_is_never_written(workdir):
    """QEMU puts LUKS only in v3 images; a v2 header claiming it opens for
    reading but is refused for writing (and left untouched)."""
    path = os.path.join(workdir, "v3.qcow2")
    pyqcrypt.create(path, MiB, format="qcow2", passphrase=PW, iterations=1000)
    with pyqcrypt.open(path, passphrase=PW, writable=True) as img:
        img.write(0, b"\x11" * 4096)
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    hlen = struct.unpack_from(">I", data, 100)[0]
    cs = 1 << struct.unpack_from(">I", data, 20)[0]
    exts = bytes(data[hlen:cs])
    data[72:cs] = (exts + bytes(hlen - 72))[:cs - 72]     # the extensions follow the 72-byte v2 header
    data[4:8] = struct.pack(">I", 2)
    v2 = write_file(os.path.join(workdir, "v2.qcow2"), bytes(data))
    with pyqcrypt.open(v2, passphrase=PW) as img:
        assert img.read(0, 4096) == b"\x11" * 4096
    with pytest.raises(pyqcrypt.FormatError, match="v2"):
        pyqcrypt.open(v2, passphrase=PW, writable=True).close()
    with open(v2, "rb") as fh:
        assert fh.read() == bytes(data)


@pytest.mark.interop
def test_partial_writes_over_snapshot_clusters_keep_the_rest(workdir):
    """Clusters an internal snapshot shares are copied before a write:
    the new cluster holds the old bytes around the new ones, whether the
    write starts at the cluster's start or inside it."""
    path = os.path.join(workdir, "s.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    qemu_io(path, "write -P 0xaa 0 192k", fmt="qcow2")
    qemu_img("snapshot", "-c", "s1", path)
    with pyqcrypt.open(path, writable=True) as img:
        img.write(0, b"\x55" * 512)                     # at the start of a shared cluster
        img.write(65536 + 1024, b"\x66" * 512)          # inside one
        img.write(131072, b"\x77" * 65536)              # a whole one
    qemu_io(path, "read -P 0x55 0 512", "read -P 0xaa 512 65024", "read -P 0xaa 65536 1024",
            "read -P 0x66 66560 512", "read -P 0xaa 67072 64000", "read -P 0x77 131072 65536",
            fmt="qcow2")
    _qemu_check_clean(path)
    snap = os.path.join(workdir, "snap.raw")
    qemu_img("convert", "-l", "snapshot.name=s1", "-f", "qcow2", "-O", "raw", path, snap)
    with open(snap, "rb") as fh:
        assert fh.read(196608) == b"\xaa" * 196608


@pytest.mark.interop
def test_partial_writes_over_a_backing_file(workdir):
    """A partial write into a cluster the overlay does not have copies the
    rest from the backing file; into a zero cluster, the rest stays zero
    (it hides the backing file's data), as QEMU does."""
    base = os.path.join(workdir, "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "1M")
    qemu_io(base, "write -P 0xaa 0 256k", fmt="qcow2")
    top = os.path.join(workdir, "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io(top, "write -z 65536 65536", fmt="qcow2")    # a zero cluster over the backing data
    with pyqcrypt.open(top, writable=True) as img:
        img.write(1024, b"\x55" * 512)
        img.write(65536 + 1024, b"\x66" * 512)
    qemu_io(top, "read -P 0xaa 0 1024", "read -P 0x55 1024 512", "read -P 0xaa 1536 64000",
            "read -P 0 65536 1024", "read -P 0x66 66560 512", "read -P 0 67072 64000",
            "read -P 0xaa 131072 131072", fmt="qcow2")
    _qemu_check_clean(top)


@pytest.mark.interop
def test_plan_write_over_a_partly_allocated_range(workdir):
    """The conversion pipeline's plan_write over clusters [0, 4) when
    cluster 0 is already there: the fresh run [1, 4) is mapped, nothing
    past it."""
    from pyqcrypt.pipeline import write_pieces
    path = os.path.join(workdir, "p.qcow2")
    pyqcrypt.create(path, MiB, format="qcow2", cluster_size=65536)
    new = os.urandom(4 * 65536)
    with pyqcrypt.image.open_image(path, writable=True) as img:
        img.write(0, b"\x01" * 65536)
        img.flush()
        pieces = img.plan_write(0, bytearray(new))
        assert pieces is not None
        write_pieces(pieces)
        img.flush()
    _qemu_check_clean(path)
    raw = _qemu_raw(workdir, path)
    assert raw[:4 * 65536] == new
    assert raw[4 * 65536:] == bytes(MiB - 4 * 65536)
    proc = qemu_img("map", "--output=json", "-f", "qcow2", path)
    mapped = [e for e in json.loads(proc.stdout) if e["data"]]
    assert sum(e["length"] for e in mapped) == 4 * 65536, mapped


def test_a_wrong_length_master_key_copy_is_wiped(monkeypatch):
    """format_region given plain bytes of the wrong length as the master
    key refuses them, and the secure copy it made of them is wiped before
    the error leaves (it was left to the garbage collector)."""
    from pyqcrypt.crypto import keybuf
    from pyqcrypt.luks import format as luks_format
    from pyqcrypt.storage import MemoryStorage, Region
    made = []
    real = keybuf.SecretBuffer.from_bytes.__func__

    def record(cls, data):
        buf = real(cls, data)
        made.append(buf)
        return buf
    monkeypatch.setattr(keybuf.SecretBuffer, "from_bytes", classmethod(record))
    region = Region(MemoryStorage(4 << 20), 0, 4 << 20)
    with pytest.raises(pyqcrypt.Error, match="master key is 128 bits"):
        luks_format.format_region(region, "aes-xts-plain64", b"pw", master_key=bytes(16),
                                  iterations=1000)
    assert made and all(buf.wiped for buf in made)
