# SPDX-License-Identifier: LGPL-2.1-or-later
"""serpent, twofish and cast5 volumes against QEMU and cryptsetup.

* QEMU makes LUKS volumes (its iotest-149 ciphers: serpent/twofish xts-plain64
  and cbc-essiv, cast5) and writes random data through its luks driver;
  pyqcrypt reads them byte for byte the same as ``qemu-img convert`` does.
* pyqcrypt makes serpent/twofish qcow2-luks images and raw LUKS volumes;
  qemu-io reads our pattern back, qemu-img compare agrees, and cryptsetup's
  luksDump prints the header as ours does.  (``cryptsetup --test-passphrase``
  cannot check serpent/twofish/LRW keyslots on these machines: cryptsetup
  decrypts them through the kernel's crypto API, and without AF_ALG or
  device-mapper it stops with "Cannot initialize device-mapper".  For AES
  volumes the other interop tests use it.)
"""

import os

import pytest

import pyqcrypt
from pyqcrypt import luks
from pyqcrypt._native import have_gcrypt
from pyqcrypt.crypto import CipherSpec
from pyqcrypt.luks.device import create_volume
from pyqcrypt.qcow2.create import create_qcow2

from conftest import qemu_img, qemu_io, qemu_secret, run, tool, write_file


def _cryptsetup_dump_matches(vol, cipher_name, cipher_mode):
    theirs = run([tool("cryptsetup"), "luksDump", vol]).stdout.decode()
    with luks.open_area(vol) as area:
        assert luks.dump_text(area.header, vol) == theirs
    assert "Cipher name:   \t%s\n" % cipher_name in theirs, theirs
    assert "Cipher mode:   \t%s\n" % cipher_mode in theirs, theirs

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(not have_gcrypt(), reason="pyqcrypt built without libgcrypt")]

PW = "gcrypt pass \u00e9".encode()

QEMU_MADE = [
    ("cipher-alg=serpent-256,cipher-mode=xts,ivgen-alg=plain64", "serpent-xts-plain64", 512),
    ("cipher-alg=serpent-128,cipher-mode=xts,ivgen-alg=plain64", "serpent-xts-plain64", 256),
    ("cipher-alg=twofish-256,cipher-mode=xts,ivgen-alg=plain64", "twofish-xts-plain64", 512),
    ("cipher-alg=twofish-128,cipher-mode=xts,ivgen-alg=plain64", "twofish-xts-plain64", 256),
    ("cipher-alg=serpent-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256",
     "serpent-cbc-essiv:sha256", 256),
    ("cipher-alg=twofish-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256",
     "twofish-cbc-essiv:sha256", 256),
    ("cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5",
     "serpent-cbc-essiv:md5", 128),
    ("cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=plain64", "cast5-cbc-plain64", 128),
    ("cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5",
     "cast5-cbc-essiv:md5", 128),
]


@pytest.mark.parametrize("opts,spec,bits", QEMU_MADE,
                         ids=[o.split(",")[0][11:] + "-" + s.split("-", 1)[1]
                              for o, s, _ in QEMU_MADE])
def test_qemu_made_volume_reads_byte_for_byte(workdir, opts, spec, bits):
    size = 1 << 20
    vol = os.path.join(workdir, "q.luks")
    obj = qemu_secret(workdir, PW)
    qemu_img("create", "-q", "-f", "luks", "--object", obj,
             "-o", "key-secret=sec0,iter-time=10," + opts, vol, size)
    plain = os.urandom(size)
    src = write_file(os.path.join(workdir, "plain.raw"), plain)
    image = "driver=luks,file.filename=%s,key-secret=sec0" % vol
    qemu_img("convert", "-n", "-f", "raw", "--object", obj, "--target-image-opts", src, image)
    # QEMU's own reading of its volume.
    theirs = os.path.join(workdir, "theirs.raw")
    qemu_img("convert", "-O", "raw", "--object", obj, "--image-opts", image, theirs)
    with open(theirs, "rb") as fh:
        assert fh.read() == plain
    with pyqcrypt.open(vol, passphrase=PW) as img:
        assert img.size == size
        ours = img.read(0, size)
    assert ours == plain
    with luks.open_area(vol) as area:
        hdr = area.header
        assert (hdr.cipher_name, hdr.key_bytes * 8) == (spec.split("-")[0], bits)
    # And we write into QEMU's volume; qemu-io reads it back.
    with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
        img.write(123456, b"\x5a" * 7000)
    qemu_io(image, "read -P 0x5a 123456 7000", objects=[obj])


OURS = [("serpent-xts-plain64", 512), ("twofish-xts-plain64", 256),
        ("serpent-cbc-essiv:sha256", 256), ("twofish-xts-plain64", 384)]


@pytest.mark.parametrize("spec,bits", OURS[:3])
def test_our_qcow2_luks_read_by_qemu(workdir, spec, bits):
    path = os.path.join(workdir, "ours.qcow2")
    size = 4 << 20
    create_qcow2(path, size, encrypt_format="luks", passphrase=PW,
                 spec=CipherSpec.parse(spec, bits), iterations=1000)
    data = bytearray(os.urandom(size))
    data[65536:65536 + 300000] = b"\xc7" * 300000
    with pyqcrypt.open(path, passphrase=PW, writable=True) as img:
        img.write(0, bytes(data))
        img.flush()
    obj = qemu_secret(workdir, PW)
    image = "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % path
    qemu_io(image, "read -P 0xc7 65536 300000", objects=[obj])
    raw = write_file(os.path.join(workdir, "want.raw"), bytes(data))
    qemu_img("compare", "--object", obj, "--image-opts", image,
             "driver=raw,file.filename=%s" % raw)
    info = qemu_img("info", "--object", obj, "--image-opts", image).stdout.decode()
    assert spec.split("-")[0] in info


@pytest.mark.parametrize("spec,bits", [OURS[0], OURS[1], OURS[3]])
def test_our_raw_luks_read_by_qemu_and_cryptsetup(workdir, spec, bits):
    vol = os.path.join(workdir, "ours.luks")
    size = 2 << 20
    create_volume(vol, size, PW, CipherSpec.parse(spec, bits), iterations=1000)
    data = os.urandom(size)
    with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
        img.write(0, data)
        img.write(4096, b"\x3e" * 50000)
    name, _, mode = spec.partition("-")
    _cryptsetup_dump_matches(vol, name, mode)
    obj = qemu_secret(workdir, PW)
    image = "driver=luks,file.filename=%s,key-secret=sec0" % vol
    qemu_io(image, "read -P 0x3e 4096 50000", objects=[obj])
    want = write_file(os.path.join(workdir, "want.raw"),
                      data[:4096] + b"\x3e" * 50000 + data[54096:])
    qemu_img("compare", "--object", obj, "--image-opts", image,
             "driver=raw,file.filename=%s" % want)


def test_lrw_volume_roundtrip_and_cryptsetup(workdir):
    # Creating LRW needs the opt-in; cryptsetup reads our aes-lrw header.
    vol = os.path.join(workdir, "lrw.luks")
    spec = CipherSpec.parse("aes-lrw-plain64", 256)
    with pytest.raises(pyqcrypt.Error, match="allow-insecure"):
        create_volume(vol, 1 << 20, PW, spec, iterations=1000)
    with pytest.warns(UserWarning, match="LRW"):
        create_volume(vol, 1 << 20, PW, spec, iterations=1000, allow_insecure=True)
    data = os.urandom(1 << 20)
    with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
        img.write(0, data)
    with pyqcrypt.open(vol, passphrase=PW) as img:
        assert img.read(0, 1 << 20) == data
    _cryptsetup_dump_matches(vol, "aes", "lrw-plain64")


@pytest.mark.parametrize("fmt,opts", [
    ("luks", "key-secret=sec0,iter-time=10,cipher-alg=serpent-256,cipher-mode=xts,ivgen-alg=plain64"),
    ("qcow2", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,"
              "encrypt.cipher-alg=twofish-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
              "encrypt.ivgen-hash-alg=sha256"),
])
def test_cli_convert_to_serpent_and_twofish(workdir, fmt, opts):
    import subprocess
    import sys
    src = write_file(os.path.join(workdir, "src.raw"), os.urandom(3 << 20))
    dst = os.path.join(workdir, "dst." + fmt)
    obj = qemu_secret(workdir, PW)
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "--object", obj, "-f", "raw",
                           src, "-O", fmt, "-o", opts, dst], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    key = "key-secret" if fmt == "luks" else "encrypt.key-secret"
    image = "driver=%s,file.filename=%s,%s=sec0" % (fmt, dst, key)
    qemu_img("compare", "--object", obj, "--image-opts", image, "driver=raw,file.filename=%s" % src)
    info = qemu_img("info", "--object", obj, "--image-opts", image).stdout.decode()
    assert ("serpent" if fmt == "luks" else "twofish") in info, info
