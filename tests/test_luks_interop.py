# SPDX-License-Identifier: LGPL-2.1-or-later
"""The LUKS1 engine against cryptsetup and qemu-img, comparing bytes.

* Volumes we make: cryptsetup's luksDump equals ours, cryptsetup accepts
  our passphrases (attached and detached), qemu's luks driver reads our
  data, and cryptsetup's own keyslot tools work on them.
* Volumes they make (a matrix of ciphers, modes, hashes and key sizes): we
  unlock them, dump them identically, recover the same master key as
  ``luksDump --dump-volume-key`` and read what qemu-io wrote.
"""

import os
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt import luks
from pyqcrypt.luks.device import create_volume, format_device

from conftest import cs_accepts, cs_format, qemu_img, qemu_io, qemu_secret, run, tool, write_file

pytestmark = pytest.mark.interop

PW = b"first \x00binary\xff passphrase"
PW2 = b"second passphrase"
PW3 = b"third"


def _dump_matches(vol, header=None):
    cs = tool("cryptsetup")
    args = [cs, "luksDump"] + (["--header", header] if header else []) + [vol]
    theirs = run(args).stdout.decode()
    with luks.open_area(vol, header=header) as area:
        ours = luks.dump_text(area.header, header or vol)
    assert ours == theirs
    return ours


def _read_all(vol, pw, header=None):
    with pyqcrypt.open(vol, passphrase=pw, header=header) as img:
        return img.read(0, img.size)


# ---------------------------------------------------------------- ours, read by them

@pytest.mark.parametrize("cipher,bits,hash_name", [
    ("aes-xts-plain64", 512, "sha256"), ("aes-xts-plain64", 256, "sha1"),
    ("aes-cbc-essiv:sha256", 256, "sha512"), ("aes-cbc-essiv:sha256", 128, "sha256"),
    ("aes-cbc-plain64", 256, "sha256"), ("aes-cbc-plain", 128, "sha1"),
])
def test_our_volume_in_cryptsetup_and_qemu(workdir, cipher, bits, hash_name):
    vol = os.path.join(workdir, "ours.luks")
    hdr = create_volume(vol, 1 << 20, PW, cipher, bits, hash_name=hash_name, iterations=1000,
                        allow_insecure=True)        # cbc-plain* are weak, but must interoperate
    assert hdr.payload_offset % 2048 == 0            # cryptsetup's alignment
    _dump_matches(vol)
    assert cs_accepts(vol, PW, workdir)
    assert not cs_accepts(vol, b"wrong", workdir)
    data = os.urandom(1 << 20)
    with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
        img.write(0, data[:100000])
        img.write(100000, data[100000:])
        img.flush()
    # qemu needs a UTF-8 secret: give the volume one more, UTF-8 passphrase.
    with luks.open_area(vol, writable=True) as area:
        _, mk = luks.unlock(area, PW)
        with mk:
            luks.add_key(area, mk, "qemu-pw \u00e9".encode(), iterations=1000)
    out = os.path.join(workdir, "out.raw")
    qemu_img("convert", "--object", qemu_secret(workdir, "qemu-pw \u00e9".encode()),
             "--image-opts", "driver=luks,file.filename=%s,key-secret=sec0" % vol, "-O", "raw", out)
    with open(out, "rb") as fh:
        assert fh.read() == data


def test_our_detached_header_in_cryptsetup(workdir):
    vol, hdr_path = os.path.join(workdir, "data.img"), os.path.join(workdir, "hdr.img")
    create_volume(vol, 2 << 20, PW, header=hdr_path, iterations=1000)
    assert os.path.getsize(vol) == 2 << 20
    # As long as cryptsetup's own detached header for the same key size
    # (exactly the key material), measured, not assumed.
    theirs = os.path.join(workdir, "cs.hdr")
    cs_format(workdir, "cs-data.img", PW, bits=512, size=2 << 20, header=theirs)
    assert os.path.getsize(hdr_path) == os.path.getsize(theirs)
    _dump_matches(vol, header=hdr_path)
    assert cs_accepts(vol, PW, workdir, header=hdr_path)
    data = os.urandom(4096)
    with pyqcrypt.open(vol, passphrase=PW, header=hdr_path, writable=True) as img:
        assert img.size == 2 << 20
        img.write(512 * 7, data)
    assert _read_all(vol, PW, hdr_path)[512 * 7:512 * 15] == data


def test_format_existing_file_keeps_size(workdir):
    vol = write_file(os.path.join(workdir, "existing.img"), os.urandom(3 << 20))
    format_device(vol, PW, iterations=1000)
    assert os.path.getsize(vol) == 3 << 20
    _dump_matches(vol)
    assert cs_accepts(vol, PW, workdir)
    with pyqcrypt.open(vol, passphrase=PW) as img:
        assert img.size == (3 << 20) - 4096 * 512


def test_cryptsetup_keyslot_tools_on_our_volume(workdir):
    cs = tool("cryptsetup")
    vol = os.path.join(workdir, "ours.luks")
    create_volume(vol, 1 << 20, PW, iterations=1000)
    k1, k2 = write_file(os.path.join(workdir, "k1"), PW), write_file(os.path.join(workdir, "k2"), PW2)
    run([cs, "luksAddKey", "-q", "--pbkdf-force-iterations", "1000", "--key-file", k1, vol, k2])
    with luks.open_area(vol) as area:
        assert luks.unlock(area, PW2)[0] == 1
    run([cs, "luksKillSlot", "-q", vol, "0"])
    with luks.open_area(vol) as area:
        with pytest.raises(pyqcrypt.WrongPassphrase):
            luks.unlock(area, PW)
        assert luks.unlock(area, PW2)[0] == 1
    _dump_matches(vol)


def test_keyslot_changes_seen_by_cryptsetup(workdir):
    vol = cs_format(workdir, "cs.luks", PW)
    with luks.open_area(vol, writable=True) as area:
        _, mk = luks.unlock(area, PW)
        with mk:
            assert luks.add_key(area, mk, PW2, slot=5, iterations=1000) == 5
    assert cs_accepts(vol, PW2, workdir, slot=5)
    _dump_matches(vol)
    with luks.open_area(vol, writable=True) as area:
        old, new = luks.change_key(area, PW2, PW3, iterations=1000)
    assert (old, new) == (5, 1)
    assert cs_accepts(vol, PW3, workdir) and not cs_accepts(vol, PW2, workdir)
    with luks.open_area(vol, writable=True) as area:
        assert luks.remove_key(area, PW3) == 1
    assert not cs_accepts(vol, PW3, workdir) and cs_accepts(vol, PW, workdir)
    _dump_matches(vol)
    with luks.open_area(vol, writable=True) as area:
        luks.erase(area)
    assert not cs_accepts(vol, PW, workdir)
    dump = _dump_matches(vol)
    assert "ENABLED" not in dump


def test_removed_slot_material_is_gone(workdir):
    """After remove, the slot's old material is not on disk any more."""
    vol = cs_format(workdir, "cs.luks", PW)
    with luks.open_area(vol, writable=True) as area:
        _, mk = luks.unlock(area, PW)
        with mk:
            luks.add_key(area, mk, PW2, slot=2, iterations=1000)
        start, end = area.material_area(2)
    before = open(vol, "rb").read()[start:end]
    with luks.open_area(vol, writable=True) as area:
        luks.remove_key(area, PW2)
    after = open(vol, "rb").read()[start:end]
    assert before != after and after != bytes(len(after))


def test_header_backup_matches_cryptsetup_and_restores(workdir):
    cs = tool("cryptsetup")
    vol = cs_format(workdir, "cs.luks", PW)
    theirs, ours = os.path.join(workdir, "theirs.bak"), os.path.join(workdir, "ours.bak")
    run([cs, "luksHeaderBackup", vol, "--header-backup-file", theirs])
    with luks.open_area(vol) as area:
        luks.header_backup(area, ours)
        with pytest.raises(pyqcrypt.Error, match="already exists"):
            luks.header_backup(area, ours)
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    with luks.open_area(vol, writable=True) as area:
        luks.erase(area)
    assert not cs_accepts(vol, PW, workdir)
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "header-restore",
                           "-q", "--header-backup-file", ours, vol], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert cs_accepts(vol, PW, workdir)
    # A backup of a differently laid-out volume is refused.
    other = cs_format(workdir, "other.luks", PW, cipher="aes-cbc-essiv:sha256", bits=128)
    other_bak = os.path.join(workdir, "other.bak")
    with luks.open_area(other) as area:
        luks.header_backup(area, other_bak)
    with luks.open_area(vol) as current:
        from pyqcrypt.storage import Storage
        with Storage(vol, writable=True) as st:
            with pytest.raises(pyqcrypt.Error, match="does not match"):
                luks.header_restore(luks.device_region(st), other_bak, current)


# ---------------------------------------------------------------- theirs, read by us

CS_MATRIX = [
    ("aes-xts-plain64", 512, "sha256"), ("aes-xts-plain64", 256, "sha1"),
    ("aes-xts-plain64", 512, "sha512"), ("aes-cbc-essiv:sha256", 256, "sha256"),
    ("aes-cbc-essiv:sha256", 128, "sha1"), ("aes-cbc-plain", 256, "sha256"),
    ("aes-cbc-plain64", 128, "sha512"), ("aes-ecb", 256, "sha256"),
    ("aes-cbc-essiv:sha256", 192, "sha256"),     # 96000 bytes of key material
]


@pytest.mark.parametrize("cipher,bits,hash_name", CS_MATRIX, ids=lambda v: str(v))
def test_cryptsetup_matrix(workdir, cipher, bits, hash_name):
    cs = tool("cryptsetup")
    vol = cs_format(workdir, "cs.luks", PW, cipher, bits, hash_name)
    _dump_matches(vol)
    keyfile = os.path.join(workdir, "cs.luks.key")
    theirs = run([cs, "luksDump", "--dump-volume-key", "-q", "--key-file", keyfile, vol]).stdout.decode()
    with luks.open_area(vol) as area:
        slot, mk = luks.unlock(area, PW)
        with mk:
            ours = luks.dump_volume_key_text(area.header, vol, mk.reveal())
    assert slot == 0 and ours == theirs
    # cryptsetup has no userspace payload writer here; our own write and
    # read must at least agree through the sector layer.
    with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
        img.write(12345, b"pyqcrypt" * 100)
    assert _read_all(vol, PW)[12345:12345 + 800] == b"pyqcrypt" * 100


QEMU_MATRIX = [
    "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256",
    "cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha1",
    "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,ivgen-hash-alg=sha256",
    "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha512",
    "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain,hash-alg=sha256",
    "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain64,hash-alg=sha1",
    "cipher-alg=aes-256,cipher-mode=ecb,hash-alg=sha256",
]


@pytest.mark.parametrize("opts", QEMU_MATRIX)
def test_qemu_matrix(workdir, opts):
    vol = os.path.join(workdir, "q.luks")
    pw = "qemu pass \u00e9".encode()
    obj = qemu_secret(workdir, pw)
    qemu_img("create", "-q", "-f", "luks", "--object", obj, "-o", "key-secret=sec0,iter-time=10," + opts,
             vol, "1M")
    image = "driver=luks,file.filename=%s,key-secret=sec0" % vol
    qemu_io(image, "write -P 0x3c 3000 70000", objects=[obj])
    _dump_matches(vol)
    with luks.open_area(vol) as area:
        mode = area.header.cipher_mode
    data = _read_all(vol, pw)
    assert data[3000:73000] == b"\x3c" * 70000     # unwritten sectors decrypt to noise
    # We write into QEMU's volume; qemu-io reads our bytes back.
    with pyqcrypt.open(vol, passphrase=pw, writable=True) as img:
        img.write(200000, b"\xa5" * 5000)
    qemu_io(image, "read -P 0xa5 200000 5000", "read -P 0x3c 3000 70000", objects=[obj])
    # QEMU's cipher-mode string: MODE-IVGEN, with ":HASH" whenever
    # ivgen-hash-alg is given, even for plain64 (the quirk we must read).
    o = dict(kv.split("=") for kv in opts.split(","))
    want = "%s-%s" % (o["cipher-mode"], o.get("ivgen-alg", "plain64"))
    if "ivgen-hash-alg" in o:
        want += ":" + o["ivgen-hash-alg"]
    assert mode == want, (opts, mode)


def test_keyslot_qemu_cannot_read_is_named(workdir):
    """cast6 volumes (the kernel has cast6; neither OpenSSL nor libgcrypt
    does) dump, but opening them names the missing cipher."""
    vol = os.path.join(workdir, "s.luks")
    create_volume(vol, 1 << 20, PW, iterations=1000)
    with open(vol, "r+b") as fh:
        fh.seek(8)
        fh.write(b"cast6".ljust(32, b"\0"))
    with luks.open_area(vol) as area:
        luks.dump_text(area.header, vol)
        with pytest.raises(pyqcrypt.UnsupportedCipher, match="cast6"):
            luks.unlock(area, PW)


@pytest.mark.parametrize("stripes", [1, 2, 100, 1000, 4000])
def test_any_stripe_count_opens(workdir, stripes):
    """The on-disk format allows any stripe count; cryptsetup insists on
    4000 (it calls other counts invalid), QEMU writes 4000.  We open all."""
    from pyqcrypt.luks.format import format_region, plan_layout
    from pyqcrypt.storage import Region, Storage
    vol = write_file(os.path.join(workdir, "s.luks"), bytes(4 << 20))
    layout = plan_layout(64, stripes=stripes)
    with Storage(vol, writable=True) as st:
        hdr, mk = format_region(Region(st, 0, layout.area_bytes), "aes-xts-plain64", PW,
                                layout=layout, iterations=1000)
        mk.wipe()
    assert hdr.slots[0].stripes == stripes
    with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
        img.write(0, b"x" * 512)
    assert _read_all(vol, PW)[:512] == b"x" * 512
    cs = tool("cryptsetup")
    proc = subprocess.run([cs, "luksDump", vol], capture_output=True)
    assert (proc.returncode == 0) == (stripes == 4000)
