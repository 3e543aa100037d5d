# SPDX-License-Identifier: LGPL-2.1-or-later
"""Conversion, checked by qemu-img and cryptsetup reading the results.

Keep-ciphertext: cryptsetup- and qemu-made LUKS1 volumes (several specs,
attached and detached) -> qcow2-luks read by qemu-img with every keyslot's
passphrase -> back to LUKS1 read by cryptsetup and qemu-img; LUKS2 sources
(pbkdf2 and argon2id keyslots) with their passphrase.  Re-encrypting:
across the format matrix, with qemu-img check clean and sparse sources
staying sparse.
"""

import os
import subprocess
import sys

import pytest

import pyqcrypt

from conftest import cs_accepts, cs_format, qemu_img, qemu_secret, run, tool, write_file

pytestmark = pytest.mark.interop

PW1, PW2 = b"first pass", b"second pass"
SIZE = 6 << 20


def _fill_luks(workdir, vol, pw, header=None):
    """Random data written through qemu-img's luks driver (or, for a
    detached header, which qemu 7.2 cannot open, through pyqcrypt)."""
    data = os.urandom(SIZE)
    if header:
        with pyqcrypt.open(vol, passphrase=pw, header=header, writable=True) as img:
            img.write(0, data)
        return data
    src = write_file(os.path.join(workdir, "fill.raw"), data)
    qemu_img("convert", "-n", "-f", "raw", "--object", qemu_secret(workdir, pw, "fill"),
             "--target-image-opts", src, "driver=luks,file.filename=%s,key-secret=fill" % vol)
    return data


def _qemu_read(workdir, path, pw, sid, driver="qcow2"):
    """What qemu-img reads from an encrypted qcow2 or LUKS image."""
    key = "encrypt.key-secret" if driver == "qcow2" else "key-secret"
    out = os.path.join(workdir, "read-%s-%s.raw" % (driver, sid))
    qemu_img("convert", "--object", qemu_secret(workdir, pw, sid), "--image-opts",
             "driver=%s,file.filename=%s,%s=%s" % (driver, path, key, sid), "-O", "raw", out)
    with open(out, "rb") as fh:
        return fh.read()


def _qemu_read_qcow2(workdir, path, pw, sid):
    return _qemu_read(workdir, path, pw, sid, "qcow2")


def _qemu_read_luks(workdir, path, pw, sid):
    return _qemu_read(workdir, path, pw, sid, "luks")


@pytest.mark.parametrize("cipher,bits", [("aes-xts-plain64", 512), ("aes-cbc-essiv:sha256", 256),
                                         ("aes-xts-plain64", 256), ("aes-cbc-plain64", 128)])
def test_cryptsetup_luks1_round_trip(workdir, cipher, bits):
    vol = cs_format(workdir, "vol.img", PW1, cipher, bits, size=SIZE + (2 << 20))
    keyfile = os.path.join(workdir, "vol.img.key")
    k2 = write_file(os.path.join(workdir, "k2"), PW2)
    run([tool("cryptsetup"), "luksAddKey", "-q", "--pbkdf-force-iterations", "1000",
         "--key-file", keyfile, vol, k2])
    data = _fill_luks(workdir, vol, PW1)
    dst = os.path.join(workdir, "vol.qcow2")
    pyqcrypt.convert(vol, dst, keep_ciphertext=True)         # no passphrase
    for n, pw in enumerate((PW1, PW2)):
        assert _qemu_read_qcow2(workdir, dst, pw, "s%d" % n)[:SIZE] == data
    # The FDE region is the source's header area, byte for byte.
    from pyqcrypt.qcow2.open import read_header
    from pyqcrypt.storage import Storage
    with Storage(dst) as st:
        off, length = read_header(st).fde
        region = st.pread(off, length)
    assert region == open(vol, "rb").read(length)
    # And back to a single-file LUKS1 volume.
    back = os.path.join(workdir, "back.luks")
    pyqcrypt.convert(dst, back, dst_format="luks", keep_ciphertext=True)
    assert cs_accepts(back, PW1, workdir) and cs_accepts(back, PW2, workdir)
    assert _qemu_read_luks(workdir, back, PW2, "b")[:SIZE] == data
    assert open(back, "rb").read() == open(vol, "rb").read()[:os.path.getsize(back)]


def test_qemu_luks1_and_detached_header(workdir):
    vol = os.path.join(workdir, "q.luks")
    qemu_img("create", "-q", "-f", "luks", "--object", qemu_secret(workdir, PW1, "c"), "-o",
             "key-secret=c,iter-time=10,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv",
             vol, SIZE)
    data = _fill_luks(workdir, vol, PW1)
    dst = os.path.join(workdir, "q.qcow2")
    pyqcrypt.convert(vol, dst, keep_ciphertext=True, data_file=os.path.join(workdir, "q.data"))
    assert _qemu_read_qcow2(workdir, dst, PW1, "r")[:SIZE] == data
    # qcow2 -> detached LUKS header; the data file itself is the payload.
    hdr = os.path.join(workdir, "q.hdr")
    data_before = open(os.path.join(workdir, "q.data"), "rb").read()
    pyqcrypt.convert(dst, hdr, dst_format="luks", keep_ciphertext=True, dst_header=hdr)
    assert open(os.path.join(workdir, "q.data"), "rb").read() == data_before    # untouched
    assert cs_accepts(os.path.join(workdir, "q.data"), PW1, workdir, header=hdr)
    with pyqcrypt.open(os.path.join(workdir, "q.data"), passphrase=PW1, header=hdr) as img:
        assert img.read(0, SIZE) == data


def test_detached_source_and_existing_data_file(workdir):
    """A detached-header LUKS volume becomes qcow2-luks around the payload
    device itself: nothing copied."""
    payload = write_file(os.path.join(workdir, "payload.img"), bytes(SIZE))
    hdr = os.path.join(workdir, "src.hdr")
    cs_format(workdir, "payload.img", PW1, header=hdr, size=SIZE)
    data = _fill_luks(workdir, payload, PW1, header=hdr)
    dst = os.path.join(workdir, "d.qcow2")
    pyqcrypt.convert(payload, dst, keep_ciphertext=True, src_header=hdr, data_file=payload,
                     data_file_existing=True)
    assert not os.path.exists(dst + ".data")
    assert _qemu_read_qcow2(workdir, dst, PW1, "d") == data
    qemu_img("check", "--object", qemu_secret(workdir, PW1, "k"), "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=k" % dst)


def test_single_file_qcow2_luks_refused_with_reason(workdir):
    src = os.path.join(workdir, "s.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "--object", qemu_secret(workdir, PW1), "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", src, "1M")
    with pytest.raises(pyqcrypt.Error, match="IVs from host offsets"):
        pyqcrypt.convert(src, os.path.join(workdir, "x.luks"), dst_format="luks", keep_ciphertext=True)
    assert not os.path.exists(os.path.join(workdir, "x.luks"))


@pytest.mark.parametrize("kind", ["pbkdf2", "argon2id"])
def test_luks2_source_with_passphrase(workdir, kind):
    cs = tool("cryptsetup")
    vol = cs_format(workdir, "l2.img", PW1, size=SIZE + (2 << 20))
    data = _fill_luks(workdir, vol, PW1)
    keyfile = os.path.join(workdir, "l2.img.key")
    run([cs, "convert", "-q", "--type", "luks2", vol])
    if kind == "argon2id":
        run([cs, "luksConvertKey", "-q", "--pbkdf", "argon2id", "--pbkdf-memory", "32",
             "--pbkdf-force-iterations", "4", "--key-file", keyfile, vol])
    assert open(vol, "rb").read(8)[6:8] == b"\x00\x02"
    dst = os.path.join(workdir, "l2.qcow2")
    with pytest.raises(pyqcrypt.Error, match="passphrase"):
        pyqcrypt.convert(vol, dst, keep_ciphertext=True)
    with pytest.raises(pyqcrypt.WrongPassphrase):
        pyqcrypt.convert(vol, dst, keep_ciphertext=True, src_passphrase=b"wrong")
    pyqcrypt.convert(vol, dst, keep_ciphertext=True, src_passphrase=PW1)
    assert _qemu_read_qcow2(workdir, dst, PW1, "l2")[:SIZE] == data


MATRIX = [
    # (source kind, destination format)
    ("raw", "qcow2-luks"), ("raw", "luks"), ("raw", "qcow2"),
    ("luks", "raw"), ("luks", "qcow2-luks"),
    ("qcow2-luks", "raw"), ("qcow2-luks", "luks"), ("qcow2-luks", "qcow2"),
    ("qcow2", "qcow2-luks"), ("qcow2-aes", "qcow2-luks"),
]


def _make_source(workdir, kind, data):
    raw = write_file(os.path.join(workdir, "src.raw"), data)
    if kind == "raw":
        return raw, None, {}
    path = os.path.join(workdir, "src." + kind)
    if kind == "luks":
        pyqcrypt.create(path, len(data), "luks", passphrase=PW1, iterations=1000)
    else:
        enc = {"qcow2-luks": "luks", "qcow2-aes": "aes", "qcow2": None}[kind]
        pyqcrypt.create(path, len(data), "qcow2", passphrase=PW1 if enc else None,
                        encrypt_format=enc, iterations=1000, allow_insecure=True)
    with pyqcrypt.open(path, passphrase=PW1 if kind != "qcow2" else None, writable=True) as img:
        for off in range(0, len(data), 1 << 20):
            chunk = data[off:off + (1 << 20)]
            # Raw LUKS has no holes: its zeros must be written (encrypted).
            if any(chunk) or kind == "luks":
                img.write(off, chunk)
    return path, PW1 if kind != "qcow2" else None, {}


@pytest.mark.parametrize("src_kind,dst_kind", MATRIX, ids=lambda v: str(v))
def test_reencrypting_matrix(workdir, src_kind, dst_kind):
    # 2 MiB of data, 4 MiB hole, 2 MiB of data: sparse destinations stay sparse.
    data = os.urandom(2 << 20) + bytes(4 << 20) + os.urandom(2 << 20)
    src, src_pw, _ = _make_source(workdir, src_kind, data)
    dst = os.path.join(workdir, "dst.out")
    fmt = {"qcow2-luks": "qcow2", "qcow2": "qcow2", "luks": "luks", "raw": "raw"}[dst_kind]
    dst_pw = PW2 if dst_kind in ("qcow2-luks", "luks") else None
    pyqcrypt.convert(src, dst, dst_format=fmt, src_passphrase=src_pw, dst_passphrase=dst_pw,
                     iterations=1000)
    if dst_kind == "raw":
        got = open(dst, "rb").read()
    elif dst_kind == "luks":
        got = _qemu_read_luks(workdir, dst, PW2, "m")
    elif dst_kind == "qcow2":
        out = os.path.join(workdir, "m.raw")
        qemu_img("convert", "-f", "qcow2", dst, "-O", "raw", out)
        got = open(out, "rb").read()
        qemu_img("check", dst)
    else:
        got = _qemu_read_qcow2(workdir, dst, PW2, "m")
        qemu_img("check", "--object", qemu_secret(workdir, PW2, "c"), "--image-opts",
                 "driver=qcow2,file.filename=%s,encrypt.key-secret=c" % dst)
    assert got[:len(data)] == data
    if fmt in ("qcow2", "raw"):
        # Sparse: the 4 MiB hole takes no space (allowing the 2 MiB LUKS
        # header clusters and metadata of an encrypted qcow2).
        allocated = os.stat(dst).st_blocks * 512
        assert allocated < len(data) - (4 << 20) + (2 << 20) + (512 << 10), allocated


def test_cli_convert_keep_and_progress(workdir):
    vol = cs_format(workdir, "c.img", PW1, size=SIZE + (2 << 20))
    data = _fill_luks(workdir, vol, PW1)
    dst = os.path.join(workdir, "c.qcow2")
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "-p", "--keep-ciphertext",
                           "-O", "qcow2", vol, dst], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "(100.00/100%)" in proc.stdout
    assert _qemu_read_qcow2(workdir, dst, PW1, "cli")[:SIZE] == data
    # A failed convert leaves nothing behind.
    bad = os.path.join(workdir, "bad.qcow2")
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "--object",
                           "secret,id=s,data=wrong", "--image-opts",
                           "driver=luks,file.filename=%s,key-secret=s" % vol, "-O", "qcow2", bad],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and not os.path.exists(bad)


@pytest.mark.parametrize("driver", ["luks", "qcow2", "raw"])
def test_target_image_opts_writes_through_the_targets_header(workdir, driver):
    """qemu-img convert -n --target-image-opts: the existing target (made by
    qemu-img) is written through its own header, which stays as it was;
    qemu-img reads back the source's bytes."""
    src_data = os.urandom(SIZE - 3 * 4096) + bytes(3 * 4096)     # ends in zeros over old data
    src = write_file(os.path.join(workdir, "src.raw"), src_data)
    obj = qemu_secret(workdir, PW1, "t")
    target = os.path.join(workdir, "t." + driver)
    if driver == "raw":
        write_file(target, os.urandom(SIZE + 4096))
        opts = "driver=raw,file.filename=%s" % target
    else:
        key = "key-secret" if driver == "luks" else "encrypt.key-secret"
        enc = "" if driver == "luks" else "encrypt.format=luks,"
        qemu_img("create", "-q", "-f", driver, "--object", obj, "-o",
                 "%s%s=t,%siter-time=10" % (enc, key, "" if driver == "luks" else "encrypt."),
                 target, str(SIZE))
        opts = "driver=%s,file.filename=%s,%s=t" % (driver, target, key)
        qemu_img("convert", "-n", "--object", obj, "--target-image-opts", "-f", "raw",
                 write_file(os.path.join(workdir, "noise.raw"), os.urandom(SIZE)), opts)
    with open(target, "rb") as fh:
        head = fh.read(4096)
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "-n", "--verify", "-f", "raw",
                           "--object", obj, src, "--target-image-opts", opts],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with open(target, "rb") as fh:
        if driver == "raw":                                      # the target is larger
            assert fh.read(len(src_data)) == src_data
            return
        assert fh.read(4096) == head                             # the header is untouched
    cmp = qemu_img("compare", "--object", obj, "--image-opts",
                   "driver=raw,file.filename=%s" % src, opts, check=False)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_luks2_dump_info_and_4k_sector_refusal(workdir):
    cs = tool("cryptsetup")
    vol = write_file(os.path.join(workdir, "l2.img"), bytes(32 << 20))
    key = write_file(os.path.join(workdir, "k"), PW1)
    run([cs, "luksFormat", "-q", "--type", "luks2", "--sector-size", "4096", "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000", "--key-file", key, vol])
    ours = subprocess.run([sys.executable, "-m", "pyqcrypt", "dump", vol], capture_output=True).stdout
    assert ours == run([cs, "luksDump", vol]).stdout
    from pyqcrypt.info_report import image_info
    info = image_info(vol)
    assert info["format"] == "luks2" and info["format-specific"]["data"]["sector-size"] == 4096
    with pytest.raises(pyqcrypt.Error, match="4096-byte encryption sectors"):
        pyqcrypt.convert(vol, os.path.join(workdir, "x.qcow2"), keep_ciphertext=True, src_passphrase=PW1)
    assert not os.path.exists(os.path.join(workdir, "x.qcow2"))
