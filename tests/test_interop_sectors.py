# SPDX-License-Identifier: LGPL-2.1-or-later
"""Sector encryption agrees with the peers, byte for byte.

* qemu-img formats a raw LUKS1 volume, qemu-img/qemu-io write data through
  its luks driver, and our PBKDF2 + AF merge + sector routine decrypt it.
* cryptsetup's own LUKS1 compatibility images (binary key file, whirlpool,
  essiv:wp256, serpent, twofish, aes-lrw) all unlock and decrypt to the
  FAT12 filesystem with UUID DEAD-BABE; those OpenSSL lacks go through
  libgcrypt.

Both decrypt on each path of the C sector loop (the provider called
directly, and the EVP fallback).
"""

import glob
import os
import shutil
import subprocess
import tarfile

import pytest

import pyqcrypt
from pyqcrypt.crypto import CipherSpec, SectorCipher

from conftest import (INTEROP_DIR, SECTOR_PATHS, forced_sector_path, luks1_master_key,
                      qemu_img, qemu_io)

pytestmark = pytest.mark.interop

PASSPHRASE = b"correct horse \xc3\xa9 battery"     # UTF-8, as QEMU requires


def _secret_file(workdir):
    path = os.path.join(workdir, "secret")
    with open(path, "wb") as fh:
        fh.write(PASSPHRASE)
    return path


def _decrypt_payload(vol, mk, hdr, length):
    spec = CipherSpec.from_luks(hdr["cipher_name"], hdr["cipher_mode"], hdr["key_bytes"])
    with open(vol, "rb") as fh:
        fh.seek(hdr["payload_offset"] * 512)
        data = bytearray(fh.read(length))
    with SectorCipher(spec, mk) as cipher:
        cipher.decrypt(data, 0)           # raw LUKS: payload-relative sectors
    return bytes(data)


@pytest.mark.parametrize("opts", [
    "",                                                              # aes-256-xts-plain64
    "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256",
    "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain64,hash-alg=sha512",
    "cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain,hash-alg=sha1",
    # No aes-192: qemu-img 7.2 asserts on its 96000 bytes of key material;
    # test_af.py covers that size with a cryptsetup-made volume.
], ids=["xts-plain64", "cbc-essiv", "cbc-plain64-sha512", "xts-plain-sha1"])
def test_qemu_written_luks_decrypts(workdir, opts):
    secret = _secret_file(workdir)
    vol = os.path.join(workdir, "vol.luks")
    size = 2 << 20
    obj = "secret,id=sec0,file=%s" % secret
    create_opts = "key-secret=sec0,iter-time=10" + ("," + opts if opts else "")
    qemu_img("create", "-q", "-f", "luks", "--object", obj, "-o", create_opts, vol, size)
    plain = os.urandom(size)
    src = os.path.join(workdir, "plain.raw")
    with open(src, "wb") as fh:
        fh.write(plain)
    image = "driver=luks,file.filename=%s,key-secret=sec0" % vol
    qemu_img("convert", "-n", "-f", "raw", "--object", obj, "--target-image-opts", src, image)
    # And a few unaligned qemu-io writes on top.
    expect = bytearray(plain)
    for off, length, pat in [(1536, 4096, 0x5A), (size - 512, 512, 0xC3), (70000, 3000, 0x11)]:
        qemu_io(image, "write -P 0x%x %d %d" % (pat, off, length), objects=[obj])
        expect[off:off + length] = bytes([pat]) * length
    hdr, mk, _ = luks1_master_key(vol, PASSPHRASE)
    for path in SECTOR_PATHS:           # one qemu-made volume, both paths
        with forced_sector_path(path):
            assert _decrypt_payload(vol, mk, hdr, size) == bytes(expect), path


def _unpack_interop(dest):
    archive = os.path.join(INTEROP_DIR, "cryptsetup-luks1-images.tar.xz")
    if not os.path.exists(archive):
        pytest.skip("cryptsetup's LUKS1 images are not beside the project (%s)" % archive)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
    return glob.glob(os.path.join(dest, "*", "keyfile1"))[0]


@pytest.mark.usefixtures("sector_path")
def test_cryptsetup_compat_images(workdir):
    keyfile = _unpack_interop(workdir)
    with open(keyfile, "rb") as fh:
        key = fh.read()
    assert b"\0" in key or any(b > 0x7F for b in key)      # truly binary
    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    assert os.path.exists(blkid), "blkid (util-linux) is needed to read the volumes' UUID"
    opened, backends = [], {}
    images = sorted(glob.glob(os.path.join(os.path.dirname(keyfile), "*.img")))
    assert len(images) == 12, images
    for img in images:
        name = os.path.basename(img)
        hdr, mk, slot = luks1_master_key(img, key)
        spec = CipherSpec.from_luks(hdr["cipher_name"], hdr["cipher_mode"], hdr["key_bytes"])
        backends[name] = spec.check().backend
        payload = _decrypt_payload(img, mk, hdr, os.path.getsize(img) - hdr["payload_offset"] * 512)
        out = os.path.join(workdir, name + ".dec")
        with open(out, "wb") as fh:
            fh.write(payload)
        uuid = subprocess.run([blkid, "-p", "-o", "value", "-s", "UUID", out],
                              capture_output=True, text=True).stdout.strip()
        assert uuid == "DEAD-BABE", name
        # And the same through pyqcrypt's own LUKS engine, keyfile as passphrase.
        with pyqcrypt.open(img, passphrase=key) as vol:
            assert vol.read(0, len(payload)) == payload, name
        opened.append(name)
    assert len(opened) == 12, opened
    gcrypt_served = sorted(n for n, b in backends.items() if b == "libgcrypt")
    assert gcrypt_served == sorted(n for n in opened if "serpent" in n or "twofish" in n or "lrw" in n)
    assert len(gcrypt_served) == 7
