# SPDX-License-Identifier: LGPL-2.1-or-later
"""header-backup / header-restore on qcow2-luks images, raw LUKS1 volumes
and detached headers, checked with qemu-img, qemu-io and cryptsetup.

The qcow2 case restores into the image's FDE clusters (never at byte 0 of
the file); a backup whose layout does not match the target is refused,
leaving the target byte-identical, as cryptsetup refuses it.
"""

import hashlib
import os
import struct
import subprocess
import sys

import pytest

from conftest import (cs_accepts, cs_format, parse_luks1, qemu_img, qemu_io, qemu_io_refused,
                      qemu_secret, run, tool, write_file)

PW = b"restore test passphrase"
PW_NEW = b"a changed passphrase"
EXT_FDE = 0x0537BE77

pytestmark = pytest.mark.interop


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + [str(a) for a in args],
                          capture_output=True, text=True)


def _ok(proc):
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


def _refused(proc, *words):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyqcrypt: "), proc.stderr
    for w in words:
        assert w in lines[0], proc.stderr
    return lines[0]


def _digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _fde(path):
    """(offset, length) from the qcow2 FDE header extension, parsed here
    independently of pyqcrypt."""
    with open(path, "rb") as fh:
        data = fh.read(65536)
    assert data[:4] == b"QFI\xfb" and struct.unpack_from(">I", data, 4)[0] == 3
    pos = struct.unpack_from(">I", data, 100)[0]
    while True:
        kind, length = struct.unpack_from(">II", data, pos)
        assert kind != 0, "no FDE extension"
        if kind == EXT_FDE:
            return struct.unpack_from(">QQ", data, pos + 8)
        pos += 8 + (length + 7) // 8 * 8


def _opts(path, sid="sec0"):
    return "driver=qcow2,file.filename=%s,encrypt.key-secret=%s" % (path, sid)


def _qcow2_luks(workdir, name="x.qcow2", cipher_alg="aes-256"):
    """A qcow2-luks image made by qemu-img, with a pattern written by qemu-io."""
    path = os.path.join(workdir, name)
    obj = qemu_secret(workdir, PW)
    qemu_img("create", "-q", "-f", "qcow2", "--object", obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,"
             "encrypt.cipher-alg=%s" % cipher_alg, path, "4M")
    qemu_io(_opts(path), "write -P 0x5a 0 65536", "write -P 0xa5 1048576 4096", objects=[obj])
    return path


def _qemu_reads_data(workdir, path, pw=PW):
    obj = qemu_secret(workdir, pw, "chk")
    qemu_io(_opts(path, "chk"), "read -P 0x5a 0 65536", "read -P 0xa5 1048576 4096",
            objects=[obj])
    proc = qemu_img("check", "--object", obj, "--image-opts", _opts(path, "chk"))
    assert b"No errors were found on the image." in proc.stdout
    info = run([tool("qemu-img"), "info", "--output", "json", path], text=True).stdout
    assert '"format": "qcow2"' in info and '"virtual-size": 4194304' in info, info


def _damage_slot0(path):
    off, _ = _fde(path)
    with open(path, "r+b") as fh:
        fh.seek(off)
        hdr = parse_luks1(fh.read(592))
        fh.seek(off + hdr["slots"][0]["km_offset"] * 512)
        fh.write(os.urandom(4096))


def _damage_magic(path):
    off, _ = _fde(path)
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\0" * 6)


@pytest.mark.parametrize("damage", ["change-key", "amend", "keyslot", "magic"])
def test_restore_into_qcow2_fde_region(workdir, damage):
    path = _qcow2_luks(workdir)
    bak = os.path.join(workdir, "x.hdr")
    _ok(_pyq("header-backup", "--header-backup-file", bak, path))
    with open(path, "rb") as fh:
        original = fh.read()
    off, length = _fde(path)
    # The backup is the FDE region, byte for byte (not the file's start).
    assert open(bak, "rb").read() == original[off:off + os.path.getsize(bak)]
    new_key = write_file(os.path.join(workdir, "new.key"), PW_NEW)
    old_key = write_file(os.path.join(workdir, "old.key"), PW)
    if damage == "change-key":
        _ok(_pyq("change-key", path, "--key-file", old_key, "--new-key-file", new_key,
                 "--pbkdf-force-iterations", "1000"))
    elif damage == "amend":
        # qemu-img itself swaps the passphrase: add PW_NEW, drop PW.
        objs = ["--object", qemu_secret(workdir, PW, "s0"), "--object",
                qemu_secret(workdir, PW_NEW, "s1")]
        qemu_img("amend", *objs, "--image-opts", _opts(path, "s0"), "-o",
                 "encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=10")
        qemu_img("amend", *objs, "--image-opts", _opts(path, "s0"), "-o",
                 "encrypt.state=inactive,encrypt.old-secret=s0")
    elif damage == "keyslot":
        _damage_slot0(path)
    else:
        _damage_magic(path)
    qemu_io_refused(_opts(path, "old"), "read 0 512", objects=[qemu_secret(workdir, PW, "old")])
    _ok(_pyq("header-restore", "-q", "--header-backup-file", bak, path))
    with open(path, "rb") as fh:
        restored = fh.read()
    # The qcow2 header cluster and everything outside the FDE region are
    # untouched; the region is the original again.
    assert restored[:65536] == original[:65536]
    assert restored[:off] == original[:off] and restored[off + length:] == original[off + length:]
    assert restored == original
    _qemu_reads_data(workdir, path)
    if damage in ("change-key", "amend"):
        qemu_io_refused(_opts(path, "new"), "read 0 512",
                        objects=[qemu_secret(workdir, PW_NEW, "new")])


def test_restore_into_qcow2_refuses_other_layouts(workdir):
    path = _qcow2_luks(workdir)
    # A raw cryptsetup volume: payload at 4096 sectors, not QEMU's 4040.
    vol = cs_format(workdir, "cs.luks", PW)
    cs_bak = os.path.join(workdir, "cs.hdr")
    run([tool("cryptsetup"), "luksHeaderBackup", vol, "--header-backup-file", cs_bak])
    # A qcow2-luks image with a 256-bit key (aes-128 in XTS).
    small = _qcow2_luks(workdir, "small.qcow2", cipher_alg="aes-128")
    small_bak = os.path.join(workdir, "small.hdr")
    _ok(_pyq("header-backup", "--header-backup-file", small_bak, small))
    before = _digest(path)
    for bak in (cs_bak, small_bak):
        _refused(_pyq("header-restore", "-q", "--header-backup-file", bak, path),
                 "does not match", path, "restore refused")
        assert _digest(path) == before
    # Even with its LUKS header gone (nothing to compare with), a backup
    # for another layout does not go into the FDE region.
    _damage_magic(path)
    before = _digest(path)
    for bak in (cs_bak, small_bak):
        _refused(_pyq("header-restore", "-q", "--header-backup-file", bak, path), "restore refused")
        assert _digest(path) == before
    # A qcow2 image without encryption has no region to restore into.
    plain = os.path.join(workdir, "plain.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", plain, "1M")
    before = _digest(plain)
    _refused(_pyq("header-restore", "-q", "--header-backup-file", small_bak, plain), "LUKS")
    assert _digest(plain) == before


@pytest.mark.parametrize("differ", ["key-size", "payload-offset"])
def test_restore_raw_mismatch_refused_like_cryptsetup(workdir, differ):
    cs = tool("cryptsetup")
    src = cs_format(workdir, "a.luks", PW)
    if differ == "key-size":
        dst = cs_format(workdir, "b.luks", PW, bits=256)
    else:
        dst = cs_format(workdir, "b.luks", PW, extra=["--align-payload", "8192"])
    bak = os.path.join(workdir, "a.hdr")
    _ok(_pyq("header-backup", "--header-backup-file", bak, src))
    before = _digest(dst)
    proc = subprocess.run([cs, "luksHeaderRestore", "-q", "--header-backup-file", bak, dst],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and _digest(dst) == before, proc.stderr   # cryptsetup refuses
    _refused(_pyq("header-restore", "-q", "--header-backup-file", bak, dst),
             "does not match", "restore refused")
    assert _digest(dst) == before
    assert cs_accepts(dst, PW, workdir)


def test_restore_raw_after_erase(workdir):
    vol = cs_format(workdir, "v.luks", PW)
    bak = os.path.join(workdir, "v.hdr")
    _ok(_pyq("header-backup", "--header-backup-file", bak, vol))
    before = _digest(vol)
    _ok(_pyq("erase", "-q", vol))
    assert not cs_accepts(vol, PW, workdir)
    _ok(_pyq("header-restore", "-q", "--header-backup-file", bak, vol))
    assert cs_accepts(vol, PW, workdir)
    # cryptsetup restores the same bytes from the same backup.
    ours = open(vol, "rb").read()
    _ok(_pyq("erase", "-q", vol))
    run([tool("cryptsetup"), "luksHeaderRestore", "-q", "--header-backup-file", bak, vol])
    assert open(vol, "rb").read() == ours
    assert _digest(vol) == before


def test_restore_detached_header(workdir):
    hdr = os.path.join(workdir, "v.hdr")
    vol = cs_format(workdir, "v.img", PW, header=hdr)
    payload = _digest(vol)
    bak = os.path.join(workdir, "backup.hdr")
    _ok(_pyq("header-backup", "--header", hdr, "--header-backup-file", bak, vol))
    theirs = os.path.join(workdir, "theirs.hdr")
    run([tool("cryptsetup"), "luksHeaderBackup", vol, "--header", hdr,
         "--header-backup-file", theirs])
    assert _digest(bak) == _digest(theirs)
    _ok(_pyq("erase", "-q", "--header", hdr, vol))
    assert not cs_accepts(vol, PW, workdir, header=hdr)
    _ok(_pyq("header-restore", "-q", "--header", hdr, "--header-backup-file", bak, vol))
    assert cs_accepts(vol, PW, workdir, header=hdr)
    assert _digest(vol) == payload              # the payload device is never written
