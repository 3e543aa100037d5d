# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 images against qemu-img and qemu-io, comparing bytes.

Ours are checked by ``qemu-img check``, described identically by ``qemu-img
info``, and read back by qemu-io; qemu's are read and written by us and then
checked by qemu again.
"""

import json
import os
import subprocess
import time

import pytest

import pyqcrypt
from pyqcrypt.qcow2 import create_qcow2

from conftest import cs_accepts, qemu_img, qemu_io, qemu_io_refused, qemu_secret, run, tool, write_file

pytestmark = pytest.mark.interop

PW = "qcow2 pass \u00e9".encode()
GiB = 1 << 30


def _image_opts(path, secret_id="sec0", encrypted=True):
    opts = "driver=qcow2,file.filename=%s" % path
    return opts + (",encrypt.key-secret=%s" % secret_id if encrypted else "")


def _qemu_check(path, obj=None, encrypted=False):
    args = [tool("qemu-img"), "check", "--output=json"]
    if encrypted:
        args += ["--object", obj, "--image-opts", _image_opts(path)]
    else:
        args += [path]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _qemu_io(path, cmds, obj=None, encrypted=False):
    if encrypted:
        return qemu_io(_image_opts(path), *cmds, objects=[obj]).stdout
    return qemu_io(path, *cmds, fmt="qcow2").stdout


# Scattered writes: unaligned, crossing clusters and L2 boundaries, past 4 GiB.
def _writes(cs, size):
    """Non-overlapping spots: unaligned, crossing clusters and an L2
    boundary (where it lies inside the image), past 4 GiB."""
    l2_span = cs * (cs // 8)
    spots = [(0, 1), (cs + 511, 3000), (8 * cs - 7, 20), (16 * cs + 100, 2 * cs + 5),
             (size - 4096, 4096)]
    if l2_span + 2000 < size - 4096 and l2_span - 1000 > 19 * cs:
        spots.append((l2_span - 1000, 3000))
    if size > 4 * GiB:
        spots.append((4 * GiB + 12345, 70000))
    spots.sort()
    assert all(a + n <= b for (a, n), (b, _) in zip(spots, spots[1:])), spots
    return [(off, n, 0x11 + 13 * i & 0xFF or 1) for i, (off, n) in enumerate(spots)]


CASES = [
    # (id, cluster size, refcount bits, encryption, data file, raw)
    ("64k-luks", 65536, 16, "luks", None, False),
    ("4k-luks-rc1", 4096, 1, "luks", None, False),
    ("512-plain-rc64", 512, 64, None, None, False),
    ("2M-luks", 2 << 20, 16, "luks", None, False),
    ("64k-plain", 65536, 16, None, None, False),
    ("64k-aes", 65536, 16, "aes", None, False),
    ("64k-luks-datafile-raw", 65536, 16, "luks", "d.raw", True),
    ("64k-luks-datafile", 65536, 16, "luks", "d.bin", False),
    ("4k-plain-datafile-raw", 4096, 16, None, "d.raw", True),
    ("64k-luks-cbc-essiv", 65536, 16, "luks:aes-cbc-essiv:sha256:256", None, False),
    ("64k-luks-xts128-rc8", 65536, 8, "luks:aes-xts-plain64:256", None, False),
    ("4k-luks-cbc-plain64-rc2", 4096, 2, "luks:aes-cbc-plain64:128", None, False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_our_images_in_qemu(workdir, case):
    name, cs, rbits, enc, data_file, raw = case
    path = os.path.join(workdir, "ours.qcow2")
    if data_file:
        data_file = os.path.join(workdir, data_file)    # qemu-img 7.2 resolves from the CWD
    size = 5 * GiB if cs >= 4096 and not raw else 64 << 20
    kwargs = dict(cluster_size=cs, refcount_bits=rbits, data_file=data_file, data_file_raw=raw)
    if enc:
        fmt, _, spec = enc.partition(":")
        if spec:
            from pyqcrypt.crypto import CipherSpec
            name, _, bits = spec.rpartition(":")
            kwargs["spec"] = CipherSpec.parse(name, int(bits))
        kwargs.update(encrypt_format=fmt, passphrase=PW, iterations=1000, allow_insecure=True)
    create_qcow2(path, size, **kwargs)
    obj = qemu_secret(workdir, PW)
    encrypted = enc is not None
    assert _qemu_check(path, obj, encrypted).get("corruptions", 0) == 0
    from pyqcrypt.info_report import image_info
    theirs = json.loads(run([tool("qemu-img"), "info", "--output=json", path]).stdout)
    assert image_info(path) == theirs
    writes = _writes(cs, size)
    with pyqcrypt.open(path, passphrase=PW if encrypted else None, writable=True) as img:
        for off, n, pat in writes:
            img.write(off, bytes([pat]) * n)
    check = _qemu_check(path, obj, encrypted)
    assert check.get("corruptions", 0) == 0 and check.get("leaks", 0) == 0, check
    _qemu_io(path, ["read -P 0x%x %d %d" % (pat, off, n) for off, n, pat in writes], obj, encrypted)
    with pyqcrypt.open(path, passphrase=PW if encrypted else None) as img:
        for off, n, pat in writes:
            assert img.read(off, n) == bytes([pat]) * n
        if not (raw and encrypted):      # mapped raw data: unwritten sectors decrypt to noise
            assert img.read(2 * 65536 + 7, 100) == bytes(100) or cs == 512


QEMU_CASES = [
    ("luks-default", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"),
    ("luks-cbc-essiv-4k", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,"
                          "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
                          "cluster_size=4096"),
    ("luks-datafile-raw", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,"
                          "data_file={dir}/qd.raw,data_file_raw=on"),
    ("plain-v2", "compat=0.10"),
    ("plain-rc8-512", "refcount_bits=8,cluster_size=512"),
    ("aes", "encrypt.format=aes,encrypt.key-secret=sec0"),
]


@pytest.mark.parametrize("case", QEMU_CASES, ids=[c[0] for c in QEMU_CASES])
def test_qemu_images_read_and_written_by_us(workdir, case):
    name, opts = case
    opts = opts.format(dir=workdir)
    path = os.path.join(workdir, "q.qcow2")
    obj = qemu_secret(workdir, PW)
    encrypted = "encrypt" in opts
    qemu_img("create", "-q", "-f", "qcow2", "--object", obj, "-o", opts, path, "200M")
    cmds = ["write -P 0x%x %d %d" % (0x40 + i, off, n)
            for i, (off, n) in enumerate([(0, 512), (70000, 200000), (100 << 20, 65536 * 3 + 17)])]
    _qemu_io(path, cmds, obj, encrypted)
    with pyqcrypt.open(path, passphrase=PW if encrypted else None, writable=True) as img:
        assert img.read(0, 512) == b"\x40" * 512
        assert img.read(70000, 200000) == b"\x41" * 200000
        assert img.read(100 << 20, 65536 * 3 + 17) == b"\x42" * (65536 * 3 + 17)
        if "data_file_raw" not in opts:   # mapped raw data: unwritten sectors decrypt to noise
            assert img.read(50 << 20, 4096) == bytes(4096)
        img.write(70100, b"\x99" * 1000)               # inside qemu's clusters
        img.write(150 << 20, b"\x77" * 300000)          # new clusters
    check = _qemu_check(path, obj, encrypted)
    assert check.get("corruptions", 0) == 0 and check.get("leaks", 0) == 0, check
    _qemu_io(path, ["read -P 0x99 70100 1000", "read -P 0x41 71100 1000",
                    "read -P 0x77 %d 300000" % (150 << 20)], obj, encrypted)


def test_compressed_clusters_read(workdir):
    src = write_file(os.path.join(workdir, "src.raw"), os.urandom(1 << 18) * 4 + bytes(1 << 20))
    comp = os.path.join(workdir, "c.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", src, comp)
    with pyqcrypt.open(comp) as img:
        assert img.read(0, img.size) == open(src, "rb").read()


def _fde(path):
    from pyqcrypt.qcow2.open import read_header
    from pyqcrypt.storage import Storage
    with Storage(path) as st:
        return read_header(st).fde


def test_fde_region_is_a_luks_detached_header(workdir):
    path = os.path.join(workdir, "r.qcow2")
    create_qcow2(path, 8 << 20, encrypt_format="luks", passphrase=PW, iterations=1000,
                 data_file=os.path.join(workdir, "r.raw"), data_file_raw=True)
    data = os.urandom(8 << 20)
    with pyqcrypt.open(path, passphrase=PW, writable=True) as img:
        img.write(0, data)
    off, length = _fde(path)
    # QEMU's layout for a 512-bit key: the FDE region of a qemu-img-made
    # image is as long, by qemu-img info's own account.
    theirs = os.path.join(workdir, "q.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "--object", qemu_secret(workdir, PW), "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", theirs, "8M")
    info = json.loads(qemu_img("info", "--output=json", theirs).stdout)
    assert length == info["format-specific"]["data"]["encrypt"]["payload-offset"]
    with open(path, "rb") as fh:
        fh.seek(off)
        region = fh.read(length)
    hdr = write_file(os.path.join(workdir, "region.hdr"), region)
    run([tool("cryptsetup"), "luksDump", hdr])
    raw = os.path.join(workdir, "r.raw")
    assert cs_accepts(raw, PW, workdir, header=hdr)
    # Region followed by the data file is a raw LUKS volume qemu can read.
    vol = write_file(os.path.join(workdir, "joined.luks"), region + open(raw, "rb").read())
    out = os.path.join(workdir, "joined.out")
    qemu_img("convert", "--object", qemu_secret(workdir, PW), "--image-opts",
             "driver=luks,file.filename=%s,key-secret=sec0" % vol, "-O", "raw", out)
    assert open(out, "rb").read() == data


def test_keyslots_on_qcow2_seen_by_qemu(workdir):
    from pyqcrypt import luks
    from pyqcrypt.image import open_luks_area
    path = os.path.join(workdir, "k.qcow2")
    obj0 = qemu_secret(workdir, PW, "sec0")
    qemu_img("create", "-q", "-f", "qcow2", "--object", obj0, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", path, "16M")
    qemu_io(_image_opts(path, "sec0"), "write -P 0x6b 5000 20000", objects=[obj0])
    with open_luks_area(path, writable=True) as area:
        _, mk = luks.unlock(area, PW)
        with mk:
            assert luks.add_key(area, mk, b"second", slot=2, iterations=1000) == 2
    obj1 = qemu_secret(workdir, b"second", "sec1")
    # QEMU unlocks the slot we added: it decrypts what it wrote with slot 0.
    qemu_io(_image_opts(path, "sec1"), "read -P 0x6b 5000 20000", objects=[obj1])
    # qemu-img amend removes the slot we added.
    qemu_img("amend", "--object", obj0, "--object", obj1, "--image-opts", _image_opts(path, "sec0"),
             "-o", "encrypt.state=inactive,encrypt.keyslot=2")
    with open_luks_area(path) as area:
        assert area.header.active_slots() == [0]
        with pytest.raises(pyqcrypt.WrongPassphrase):
            luks.unlock(area, b"second")
    qemu_io_refused(_image_opts(path, "sec1"), "read -P 0x6b 5000 20000", objects=[obj1])
    qemu_io(_image_opts(path, "sec0"), "read -P 0x6b 5000 20000", objects=[obj0])


def test_locking_against_qemu(workdir):
    path = os.path.join(workdir, "l.qcow2")
    create_qcow2(path, 16 << 20)
    holder = subprocess.Popen([tool("qemu-io"), "-f", "qcow2", "-c", "sleep 20000", path],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Wait (without touching the image) until qemu-io holds its locks.
        inode = ":%d " % os.stat(path).st_ino
        deadline = time.time() + 10
        while inode not in open("/proc/locks").read():
            assert holder.poll() is None and time.time() < deadline, "qemu-io never took its lock"
            time.sleep(0.05)
        with pytest.raises(pyqcrypt.Error) as info:
            pyqcrypt.open(path, writable=True)
        assert "in use" in str(info.value) and "lock" in str(info.value)
        with pytest.raises(pyqcrypt.Error, match="force-share"):
            pyqcrypt.open(path)                             # qemu-io holds write
        with pyqcrypt.open(path, force_share=True) as img:
            assert img.read(0, 512) == bytes(512)
    finally:
        holder.kill()
        holder.wait()
    # And QEMU is kept out while we hold the image for writing.
    with pyqcrypt.open(path, writable=True):
        proc = subprocess.run([tool("qemu-io"), "-f", "qcow2", "-c", "read 0 512", path],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and "lock" in proc.stderr
