# SPDX-License-Identifier: LGPL-2.1-or-later
"""The keyslot API (pyqcrypt.add_key, remove_key, change_key, kill_slot,
check_passphrase, erase, header_backup, header_restore, info) on
qcow2-luks images made by qemu-img and LUKS1/LUKS2 volumes made by
cryptsetup, attached and detached header.

Every result is judged by the real tools: cryptsetup --test-passphrase
(with --key-slot for the slot a function returns) on the LUKS volumes and
on the LUKS header copied out of a qcow2 image, and qemu-io reading the
pattern written at creation with the passphrase for qcow2.  A wrong
passphrase raises WrongPassphrase and leaves every byte as it was.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess

import pytest

import pyqcrypt
from conftest import cs_accepts, cs_format, qemu_img, qemu_io, qemu_secret, scratch_dir, tool

PW = "keyslot api passphrase"           # str: encoded as UTF-8
NEW = b"second passphrase"
THIRD = "d\u00e9j\u00e0 vu passphrase"
WRONG = b"not a passphrase of this volume"
FAST = 10                               # iter_time (ms) for new keyslots
KINDS = ["qcow2", "luks1", "luks1-detached", "luks2", "luks2-detached"]
EXT_FDE = 0x0537BE77

pytestmark = pytest.mark.interop


def _utf8(secret):
    return secret.encode() if isinstance(secret, str) else secret


class Volume:
    """One test image and the real tool's view of it."""

    def __init__(self, workdir, kind, qcow2_template=None):
        self.workdir, self.kind = workdir, kind
        self.header = os.path.join(workdir, "v.hdr") if kind.endswith("detached") else None
        if kind == "qcow2":
            self.path = os.path.join(workdir, "v.qcow2")
            if qcow2_template:
                shutil.copyfile(qcow2_template, self.path)
                return
            qemu_img("create", "-f", "qcow2", "--object", qemu_secret(workdir, _utf8(PW)), "-o",
                     "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
                     self.path, "4M")
            qemu_io(self._opts(), "write -P 0x5a 0 65536",
                    objects=[qemu_secret(workdir, _utf8(PW))])
        elif kind.startswith("luks1"):
            self.path = cs_format(workdir, "v.luks", _utf8(PW), header=self.header)
        else:
            self.path = cs_format(workdir, "v.luks", _utf8(PW), header=self.header,
                                  size=(4 if self.header else 24) << 20,
                                  extra=("--type", "luks2", "--pbkdf", "pbkdf2"))

    def _opts(self):
        return "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % self.path

    def _fde_copy(self):
        """The qcow2 image's LUKS header, copied into a file of its own
        (the FDE header extension parsed here, independently of pyqcrypt)."""
        with open(self.path, "rb") as fh:
            data = fh.read(65536)
            pos = struct.unpack_from(">I", data, 100)[0]
            while True:
                ext, length = struct.unpack_from(">II", data, pos)
                assert ext != 0, "no FDE header extension"
                if ext == EXT_FDE:
                    offset, size = struct.unpack_from(">QQ", data, pos + 8)
                    break
                pos += 8 + (length + 7) // 8 * 8
            fh.seek(offset)
            copy = os.path.join(self.workdir, "fde.bin")
            with open(copy, "wb") as out:
                out.write(fh.read(size))
        return copy

    def opens(self, secret, slot=None):
        """Whether the real tools open the image with *secret* (in *slot*)."""
        if self.kind != "qcow2":
            return cs_accepts(self.path, _utf8(secret), self.workdir, self.header, slot)
        proc = qemu_io(self._opts(), "read -P 0x5a 0 65536",
                       objects=[qemu_secret(self.workdir, _utf8(secret))], check=False)
        qemu_opens = proc.returncode == 0 and "read 65536/65536 bytes" in proc.stdout
        assert qemu_opens or "Pattern verification failed" not in proc.stdout
        in_slot = cs_accepts(self._fde_copy(), _utf8(secret), self.workdir, None, slot)
        assert qemu_opens == in_slot or slot is not None
        return qemu_opens and in_slot

    def digest(self):
        """A hash of every byte of the image and its header file."""
        h = hashlib.sha256()
        for name in (self.path, self.header):
            if name:
                with open(name, "rb") as fh:
                    h.update(fh.read())
        return h.hexdigest()


@pytest.fixture(scope="module")
def qcow2_template():
    """One qcow2-luks image made by qemu-img (with the pattern qemu-io
    wrote), copied for each test: qemu-img's key-derivation benchmark
    often has to be retried on a busy machine."""
    where = scratch_dir()
    try:
        yield Volume(where, "qcow2").path
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(params=KINDS)
def vol(request, workdir, qcow2_template):
    return Volume(workdir, request.param, qcow2_template)


def test_add_key_returns_the_slot_the_tools_open(vol):
    slot = pyqcrypt.add_key(vol.path, PW, NEW, header=vol.header, iter_time=FAST)
    assert slot == 1
    assert vol.opens(NEW, slot) and not vol.opens(NEW, 0)
    assert vol.opens(PW, 0)


def test_add_key_in_a_chosen_slot(vol):
    slot = pyqcrypt.add_key(vol.path, PW.encode(), THIRD, header=vol.header, slot=5,
                            iter_time=FAST)
    assert slot == 5
    assert vol.opens(THIRD, 5)
    with pytest.raises(pyqcrypt.Error, match="in use"):
        pyqcrypt.add_key(vol.path, PW, NEW, header=vol.header, slot=5, iter_time=FAST)


def test_remove_key_returns_the_removed_slot(vol):
    pyqcrypt.add_key(vol.path, PW, NEW, header=vol.header, iter_time=FAST)
    assert pyqcrypt.remove_key(vol.path, PW, header=vol.header) == 0
    assert not vol.opens(PW)
    assert vol.opens(NEW, 1)


def test_change_key_returns_the_new_slot(vol):
    slot = pyqcrypt.change_key(vol.path, PW, THIRD, header=vol.header, iter_time=FAST)
    assert slot == 1
    assert vol.opens(THIRD, slot)
    assert not vol.opens(PW)


def test_change_key_of_a_named_slot(vol):
    pyqcrypt.add_key(vol.path, PW, NEW, header=vol.header, iter_time=FAST)
    before = vol.digest()
    with pytest.raises(pyqcrypt.WrongPassphrase):
        pyqcrypt.change_key(vol.path, NEW, THIRD, header=vol.header, slot=0, iter_time=FAST)
    assert vol.digest() == before
    slot = pyqcrypt.change_key(vol.path, NEW, THIRD, header=vol.header, slot=1, iter_time=FAST)
    assert slot == 2 and vol.opens(THIRD, 2) and not vol.opens(NEW) and vol.opens(PW, 0)


def test_kill_slot_proves_access_with_another_slot(vol):
    pyqcrypt.add_key(vol.path, PW, NEW, header=vol.header, iter_time=FAST)
    before = vol.digest()
    # the slot's own passphrase proves nothing: it is about to stop working
    with pytest.raises(pyqcrypt.WrongPassphrase):
        pyqcrypt.kill_slot(vol.path, 1, passphrase=NEW, header=vol.header)
    assert vol.digest() == before
    pyqcrypt.kill_slot(vol.path, 1, passphrase=PW, header=vol.header)
    assert not vol.opens(NEW) and vol.opens(PW, 0)
    with pytest.raises(pyqcrypt.Error, match="not active"):
        pyqcrypt.kill_slot(vol.path, 1, header=vol.header)


def test_kill_the_last_slot_without_passphrase(vol):
    pyqcrypt.kill_slot(vol.path, 0, header=vol.header)
    assert not vol.opens(PW)


def test_check_passphrase_returns_the_slot(vol):
    assert pyqcrypt.check_passphrase(vol.path, PW, header=vol.header) == 0
    pyqcrypt.add_key(vol.path, PW, THIRD, header=vol.header, iter_time=FAST)
    assert pyqcrypt.check_passphrase(vol.path, THIRD.encode(), header=vol.header) == 1
    assert pyqcrypt.check_passphrase(vol.path, THIRD, header=vol.header, slot=1) == 1
    with pytest.raises(pyqcrypt.WrongPassphrase):
        pyqcrypt.check_passphrase(vol.path, THIRD, header=vol.header, slot=0)


def test_wrong_passphrase_changes_nothing(vol):
    before = vol.digest()
    calls = [lambda: pyqcrypt.add_key(vol.path, WRONG, NEW, header=vol.header, iter_time=FAST),
             lambda: pyqcrypt.remove_key(vol.path, WRONG, header=vol.header),
             lambda: pyqcrypt.change_key(vol.path, WRONG, NEW, header=vol.header, iter_time=FAST),
             lambda: pyqcrypt.check_passphrase(vol.path, WRONG, header=vol.header)]
    for call in calls:
        with pytest.raises(pyqcrypt.WrongPassphrase):
            call()
        assert vol.digest() == before
    assert vol.opens(PW, 0) and not vol.opens(NEW)


def test_erase(vol):
    pyqcrypt.add_key(vol.path, PW, NEW, header=vol.header, iter_time=FAST)
    pyqcrypt.erase(vol.path, header=vol.header)
    assert not vol.opens(PW) and not vol.opens(NEW)
    with pytest.raises(pyqcrypt.WrongPassphrase):
        pyqcrypt.check_passphrase(vol.path, PW, header=vol.header)


def test_header_backup_and_restore(vol):
    backup = os.path.join(vol.workdir, "backup.hdr")
    pyqcrypt.header_backup(vol.path, backup, header=vol.header)
    with pytest.raises(pyqcrypt.Error, match="exists"):
        pyqcrypt.header_backup(vol.path, backup, header=vol.header)
    pyqcrypt.change_key(vol.path, PW, NEW, header=vol.header, iter_time=FAST)
    assert not vol.opens(PW)
    pyqcrypt.header_restore(vol.path, backup, header=vol.header)
    assert vol.opens(PW, 0) and not vol.opens(NEW)


def _tool_uuid(vol):
    if vol.kind == "qcow2":
        out = qemu_img("info", "--output", "json", vol.path).stdout
        return json.loads(out)["format-specific"]["data"]["encrypt"]["uuid"]
    proc = subprocess.run([tool("cryptsetup"), "luksUUID", vol.header or vol.path],
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_info(vol):
    pyqcrypt.add_key(vol.path, PW, NEW, header=vol.header, slot=3, iter_time=FAST)
    about = pyqcrypt.info(vol.header or vol.path)
    assert about.keyslots == (0, 3)
    assert about.cipher == "aes-xts-plain64" and about.encrypted
    assert about.uuid == _tool_uuid(vol)
    assert about.format == {"qcow2": "qcow2", "luks1": "luks", "luks2": "luks2"}[vol.kind[:5]]
    assert about.encryption == ("luks" if vol.kind == "qcow2" else about.format)
    if vol.kind == "qcow2":
        assert (about.virtual_size, about.cluster_size) == (4 << 20, 65536)
    with pytest.raises(AttributeError):
        about.format = "raw"        # type: ignore[misc]  # frozen


def test_info_of_a_plain_qcow2_and_a_raw_file(workdir):
    base = os.path.join(workdir, "base.raw")
    qemu_img("create", "-f", "raw", base, "1M")
    top = os.path.join(workdir, "top.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top, "2M")
    about = pyqcrypt.info(top)
    assert (about.format, about.virtual_size, about.encrypted) == ("qcow2", 2 << 20, False)
    assert (about.backing_file, about.backing_format, about.backing_path) == ("base.raw", "raw", base)
    assert about.cipher is None and about.keyslots == ()
    assert pyqcrypt.info(base).format == "raw"


def test_qcow2_refuses_a_passphrase_qemu_cannot_use(workdir, qcow2_template):
    vol = Volume(workdir, "qcow2", qcow2_template)
    before = vol.digest()
    for call in (pyqcrypt.add_key, pyqcrypt.change_key):
        with pytest.raises(pyqcrypt.Error, match="UTF-8"):
            call(vol.path, PW, b"\xff\xfe", iter_time=FAST)
    assert vol.digest() == before


def test_a_passphrase_that_is_neither_bytes_nor_str(workdir):
    vol = Volume(workdir, "luks1")
    with pytest.raises(TypeError, match="bytes or str"):
        pyqcrypt.check_passphrase(vol.path, 1234)  # type: ignore[arg-type]


@pytest.mark.parametrize("iter_time", [0, -5, 1 << 40, 2.5, True])
def test_a_bad_iter_time_is_refused_before_anything_is_read(workdir, iter_time):
    missing = os.path.join(workdir, "no such file")
    for call in (pyqcrypt.add_key, pyqcrypt.change_key):
        with pytest.raises(pyqcrypt.Error, match="iter_time"):
            call(missing, PW, NEW, iter_time=iter_time)
