# SPDX-License-Identifier: LGPL-2.1-or-later
"""The source is never the target, however either is reached (issue 21,
item 1): a loop device over the source image, its data file, its detached
header or a backing file, and a loop device as the source over the target
file.  Each refused case exits 1 with one line naming both, and every
source file is byte-identical afterwards.  Loop devices over different
ranges of one file do not share bytes, and converting between them works.
"""

import os
import subprocess
import sys

import pytest

from conftest import qemu_img, qemu_secret, write_file
from test_locks import _digest as digest
from pyqcrypt.overlap import extents, overlapping

pytestmark = [pytest.mark.interop, pytest.mark.blockdev]

MiB = 1 << 20
PW = b"apart passphrase"


def pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + [str(a) for a in args],
                          capture_output=True, text=True)




def refused(proc, *names):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    err = proc.stderr
    assert err.startswith("pyqcrypt: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "shares storage with" in err or " is the source" in err, err
    for n in names:
        assert n in err, (n, err)


def test_extents_follow_loop_devices(workdir, loop_devices):
    f = write_file(os.path.join(workdir, "f.img"), bytes(4 * MiB))
    whole = loop_devices(f)
    part = loop_devices(f, offset=MiB, sizelimit=MiB)
    st = os.stat(f)
    assert (("file", st.st_dev, st.st_ino), 0, 1 << 64) in extents(f)
    keys = {k for k, _, _ in extents(whole)}
    assert ("file", st.st_dev, st.st_ino) in keys
    assert [(a, b) for k, a, b in extents(part) if k[0] == "file"] == [(MiB, 2 * MiB)]
    assert overlapping(whole, f) and overlapping(f, part) and overlapping(whole, part)
    other = write_file(os.path.join(workdir, "o.img"), bytes(MiB))
    assert not overlapping(other, f) and not overlapping(loop_devices(other), whole)
    assert extents(os.path.join(workdir, "missing")) == []


def test_qcow2_source_onto_a_loop_device_over_itself(workdir, loop_devices):
    raw = write_file(os.path.join(workdir, "p.raw"), os.urandom(2 * MiB))
    src = os.path.join(workdir, "s.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, src)
    with open(src, "r+b") as fh:
        fh.truncate(32 * MiB)
    dev = loop_devices(src)
    before = digest(src)
    refused(pyq("convert", "-n", "-O", "raw", src, dev), src, dev)
    assert digest(src) == before
    qemu_img("compare", "-f", "qcow2", "-F", "raw", src, raw)


def test_luks_source_onto_a_loop_device_over_itself(workdir, loop_devices):
    """-n -O raw into a loop device over the LUKS1 volume itself would put
    the plaintext over its header."""
    obj = qemu_secret(workdir, PW, "s")
    raw = write_file(os.path.join(workdir, "p.raw"), os.urandom(2 * MiB))
    vol = os.path.join(workdir, "v.luks")
    assert pyq("convert", "--object", obj, "-O", "luks", "-o", "key-secret=s,iter-time=10", raw,
               vol).returncode == 0
    dev = loop_devices(vol)
    before = digest(vol)
    refused(pyq("convert", "-n", "--object", obj, "--image-opts",
                "driver=luks,file.filename=%s,key-secret=s" % vol, "-O", "raw", dev), vol)
    refused(pyq("convert", "-n", "--object", obj, "--image-opts",
                "driver=luks,file.filename=%s,key-secret=s" % vol, "--target-image-opts",
                "driver=raw,file.filename=%s" % dev))
    assert digest(vol) == before


def test_keep_ciphertext_onto_a_loop_device_over_the_data_file(workdir, loop_devices):
    obj = qemu_secret(workdir, PW, "s")
    raw = write_file(os.path.join(workdir, "p.raw"), os.urandom(2 * MiB))
    img = os.path.join(workdir, "d.qcow2")
    assert pyq("convert", "--object", obj, "-O", "qcow2", "-o",
               "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10,data_file=%s.data,"
               "data_file_raw=on" % img, raw, img).returncode == 0
    data = img + ".data"
    with open(data, "r+b") as fh:
        fh.truncate(8 * MiB)
    dev = loop_devices(data)
    before = digest(img, data)
    refused(pyq("convert", "--keep-ciphertext", "-n", "-O", "luks", img, dev), data)
    assert digest(img, data) == before


def test_source_header_and_backing_files_are_sources_too(workdir, loop_devices):
    obj = qemu_secret(workdir, PW, "s")
    data = write_file(os.path.join(workdir, "d.img"), bytes(4 * MiB))
    hdr = os.path.join(workdir, "d.hdr")
    kf = write_file(os.path.join(workdir, "k"), PW)
    assert pyq("format", "-q", "--pbkdf-force-iterations", "1000", "--header", hdr,
               "--key-file", kf, data).returncode == 0
    with open(hdr, "r+b") as fh:
        fh.truncate(8 * MiB)
    hdev = loop_devices(hdr)
    before = digest(hdr, data)
    refused(pyq("convert", "-n", "--object", obj, "--image-opts",
                "driver=luks,file.filename=%s,header=%s,key-secret=s" % (data, hdr), "-O", "raw",
                hdev), hdr)
    assert digest(hdr, data) == before
    # an overlay's backing file, reached through a loop device
    base = write_file(os.path.join(workdir, "base.raw"), os.urandom(4 * MiB))
    top = os.path.join(workdir, "top.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "raw", top)
    bdev = loop_devices(base)
    before = digest(base, top)
    refused(pyq("convert", "-n", "-O", "raw", top, bdev), base)
    assert digest(base, top) == before


def test_a_loop_device_source_over_the_target_file(workdir, loop_devices):
    target = write_file(os.path.join(workdir, "t.img"), os.urandom(4 * MiB))
    dev = loop_devices(target)
    before = digest(target)
    refused(pyq("convert", "-n", "-f", "raw", "-O", "raw", dev, target), dev, target)
    assert digest(target) == before


def test_disjoint_ranges_of_one_file_convert(workdir, loop_devices):
    """Two loop devices over different parts of one file share no byte:
    converting one into the other is allowed and lands where it should."""
    payload = os.urandom(4 * MiB)
    f = write_file(os.path.join(workdir, "two.img"), payload + bytes(4 * MiB))
    a = loop_devices(f, offset=0, sizelimit=4 * MiB)
    b = loop_devices(f, offset=4 * MiB, sizelimit=4 * MiB)
    assert not overlapping(a, b)
    proc = pyq("convert", "-n", "-f", "raw", "-O", "raw", a, b)
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["blockdev", "--flushbufs", b], capture_output=True)
    with open(b, "rb") as fh:
        assert fh.read(4 * MiB) == payload


def test_converting_a_mounted_source_warns(workdir, loop_devices):
    """A source a file system has mounted read-write (the device itself, or
    the file behind its loop device) is copied with a warning, as e2fsck
    warns; once it is unmounted, no warning."""
    from conftest import run, tool
    img = write_file(os.path.join(workdir, "fs.img"), bytes(16 * MiB))
    run([tool("mkfs.ext4"), "-q", "-F", img])
    dev = loop_devices(img)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    proc = subprocess.run(["mount", dev, mnt], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount here: %s" % proc.stderr.decode().strip())
    try:
        for n, src in enumerate((dev, img)):
            proc = pyq("convert", "-O", "qcow2", src, os.path.join(workdir, "o%d.qcow2" % n))
            assert proc.returncode == 0, proc.stderr
            assert "is mounted read-write (at %s)" % mnt in proc.stderr, proc.stderr
    finally:
        subprocess.run(["umount", mnt], check=True)
    proc = pyq("convert", "-O", "qcow2", dev, os.path.join(workdir, "o2.qcow2"))
    assert proc.returncode == 0 and "mounted" not in proc.stderr, proc.stderr
