# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every path on real block devices (loop devices), checked by the peers.

The flagship's real input is a LUKS block device.  Each test attaches
loop devices over scratch files (detached again whatever happens), runs
the pyqcrypt command a user would, and checks the decrypted bytes with
qemu-img and cryptsetup against the data the source held: keep-ciphertext
conversion from a device with an attached header, from a payload device
with a detached header and onto a payload device in place; ``-n`` into
existing devices (and refusals when they are too small or when -n is
missing); re-encrypting conversion from and to devices; format and every
keyslot verb; sizes taken from the device, not from its backing file.
"""

import json
import os
import struct
import subprocess
import sys

import pytest

import pyqcrypt

from conftest import cs_accepts, cs_format, qemu_secret, run, tool, write_file

pytestmark = pytest.mark.blockdev

PW, PW2, PW3 = b"device pass", b"second \x00\xff", b"third"
PW4 = "fourth \u00fc".encode()          # QEMU secrets must be UTF-8
SIZE = 8 << 20                  # payload bytes
AREA = 2 << 20                  # cryptsetup's payload offset for a 512-bit key


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, stdin=subprocess.DEVNULL)


def ok(*args):
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def failing(*args, code=1):
    proc = cli(*args)
    assert proc.returncode == code, (proc.returncode, proc.stderr.decode())
    err = proc.stderr.decode()
    assert err.startswith("pyqcrypt: ") and "Traceback" not in err, err
    return err


def _data(size=SIZE):
    """Random data with zero runs (holes for sparse paths to skip)."""
    data = bytearray(os.urandom(size))
    data[1 << 20:3 << 20] = bytes(2 << 20)
    data[-(1 << 20):] = bytes(1 << 20)
    return bytes(data)


def _qemu_read(workdir, opts, pw, name):
    """Decrypted bytes as qemu-img reads them (--image-opts OPTS, secret s)."""
    out = os.path.join(workdir, "read-%s.raw" % name)
    run([tool("qemu-img"), "convert", "--object", qemu_secret(workdir, pw, "s" + name),
         "--image-opts", opts.replace("SECRET", "s" + name), "-O", "raw", out])
    with open(out, "rb") as fh:
        data = fh.read()
    os.unlink(out)
    return data


def _qcow2_read(workdir, path, pw, name="q"):
    return _qemu_read(workdir, "driver=qcow2,file.filename=%s,encrypt.key-secret=SECRET" % path,
                      pw, name)


def _luks_read(workdir, path, pw, name="l"):
    return _qemu_read(workdir, "driver=luks,file.filename=%s,key-secret=SECRET" % path, pw, name)


def _filled_volume(workdir, name="vol.img", data=None):
    """A cryptsetup LUKS1 volume (aes-xts-plain64, 512-bit key, payload at
    2 MiB) whose payload qemu-img filled with *data*; (path, data)."""
    data = _data() if data is None else data
    vol = cs_format(workdir, name, PW, size=AREA + len(data))
    src = write_file(os.path.join(workdir, name + ".plain"), data)
    run([tool("qemu-img"), "convert", "-n", "-f", "raw", "--object",
         qemu_secret(workdir, PW, "fill"), "--target-image-opts", src,
         "driver=luks,file.filename=%s,key-secret=fill" % vol])
    os.unlink(src)
    assert _luks_read(workdir, vol, PW) == data           # the fill itself
    return vol, data


def _blank(workdir, name, size, byte=0):
    path = os.path.join(workdir, name)
    with open(path, "wb") as fh:
        fh.write(bytes([byte]) * size)
    return path


def _read_dev(dev, offset=0, length=None):
    with open(dev, "rb") as fh:
        fh.seek(offset)
        return fh.read(length) if length is not None else fh.read()


def _allocated(path):
    return os.stat(path).st_blocks * 512


# ---------------------------------------------------------------- keep-ciphertext

def test_keep_ciphertext_from_attached_device(workdir, loop_devices):
    vol, data = _filled_volume(workdir)
    dev = loop_devices(vol)
    dst = os.path.join(workdir, "disk.qcow2")
    ok("convert", "--keep-ciphertext", "--verify", "-O", "qcow2", dev, dst)
    # The payload was really copied (the bug: a data file of holes).
    assert _allocated(dst + ".data") >= SIZE - (3 << 20)
    assert os.path.getsize(dst + ".data") == SIZE
    assert _qcow2_read(workdir, dst, PW) == data
    with open(vol, "rb") as fh:
        assert open(dst + ".data", "rb").read() == fh.read()[AREA:]


def _detached_header(workdir, vol):
    """vol's header area as a detached header (payload offset 0), accepted
    by cryptsetup for the payload alone."""
    with open(vol, "rb") as fh:
        area = bytearray(fh.read(AREA))
    struct.pack_into(">I", area, 104, 0)
    return write_file(os.path.join(workdir, "detached.hdr"), bytes(area))


def test_keep_ciphertext_from_payload_device_with_detached_header(workdir, loop_devices):
    vol, data = _filled_volume(workdir)
    hdr = _detached_header(workdir, vol)
    payload = loop_devices(vol, offset=AREA)
    assert cs_accepts(payload, PW, workdir, header=hdr)        # cryptsetup agrees it is one
    dst = os.path.join(workdir, "disk.qcow2")
    ok("convert", "--keep-ciphertext", "--verify", "-O", "qcow2", "--image-opts",
       "driver=luks,file.filename=%s,header=%s" % (payload, hdr), dst)
    assert _allocated(dst + ".data") >= SIZE - (3 << 20)
    assert _qcow2_read(workdir, dst, PW) == data


def test_payload_device_adopted_in_place(workdir, loop_devices):
    vol, data = _filled_volume(workdir)
    whole = loop_devices(vol)
    payload = loop_devices(vol, offset=AREA)
    dst = os.path.join(workdir, "disk.qcow2")
    ok("convert", "--keep-ciphertext", "--verify", "-O", "qcow2",
       "-o", "data_file=%s,data_file_existing=on" % payload, whole, dst)
    assert not os.path.exists(dst + ".data")                    # nothing copied
    assert os.path.getsize(dst) < AREA + (1 << 20)
    assert _qcow2_read(workdir, dst, PW) == data
    run([tool("qemu-img"), "check", "--object", qemu_secret(workdir, PW, "c"), "--image-opts",
         "driver=qcow2,file.filename=%s,encrypt.key-secret=c" % dst])
    # It is the same volume: a write through the qcow2 image lands on the
    # device, where cryptsetup's volume (read by qemu's luks driver) sees it.
    opts = "driver=qcow2,file.filename=%s,encrypt.key-secret=w" % dst
    out = run([tool("qemu-io"), "--object", qemu_secret(workdir, PW, "w"), "--image-opts",
               "-c", "write -P 0x3c 1M 64k", opts]).stdout.decode()
    assert "wrote 65536/65536" in out
    expect = data[:1 << 20] + b"\x3c" * 65536 + data[(1 << 20) + 65536:]
    assert _luks_read(workdir, vol, PW, "after") == expect


def test_payload_device_smaller_than_payload_refused(workdir, loop_devices):
    vol, _ = _filled_volume(workdir)
    whole = loop_devices(vol)
    short = loop_devices(vol, offset=AREA, sizelimit=SIZE // 2)
    dst = os.path.join(workdir, "disk.qcow2")
    err = failing("convert", "--keep-ciphertext", "-O", "qcow2",
                  "-o", "data_file=%s,data_file_existing=on" % short, whole, dst)
    assert "%d fewer" % (SIZE // 2) in err
    assert not os.path.exists(dst)


def test_keep_ciphertext_back_into_a_device(workdir, loop_devices):
    vol, data = _filled_volume(workdir)
    qcow = os.path.join(workdir, "disk.qcow2")
    ok("convert", "--keep-ciphertext", "-O", "qcow2", vol, qcow)
    target = loop_devices(_blank(workdir, "target.img", AREA + SIZE, 0xAA))
    # Without -n: refused, naming the flag, and the device is untouched.
    err = failing("convert", "--keep-ciphertext", "-O", "luks", qcow, target)
    assert "-n" in err and "block device" in err
    assert _read_dev(target, 0, 4096) == b"\xaa" * 4096
    ok("convert", "--keep-ciphertext", "--verify", "-n", "-O", "luks", qcow, target)
    assert cs_accepts(target, PW, workdir)
    assert _luks_read(workdir, target, PW) == data
    with open(vol, "rb") as fh:
        assert _read_dev(target) == fh.read()                 # the original volume again


def test_n_target_too_small_says_by_how_much(workdir, loop_devices):
    vol, _ = _filled_volume(workdir)
    qcow = os.path.join(workdir, "disk.qcow2")
    ok("convert", "--keep-ciphertext", "-O", "qcow2", vol, qcow)
    small = loop_devices(_blank(workdir, "small.img", AREA + SIZE - (1 << 20), 0xAA))
    err = failing("convert", "--keep-ciphertext", "-n", "-O", "luks", qcow, small)
    assert "1048576 bytes (1.0 MiB) more" in err
    assert _read_dev(small) == b"\xaa" * (AREA + SIZE - (1 << 20))    # nothing written
    src = write_file(os.path.join(workdir, "plain.raw"), _data(AREA + SIZE))
    err = failing("convert", "-n", "-O", "raw", src, small)
    assert "more" in err and small in err


# ---------------------------------------------------------------- re-encrypting

def test_reencrypting_from_and_to_devices(workdir, loop_devices):
    data = _data()
    raw_dev = loop_devices(write_file(os.path.join(workdir, "plain.raw"), data))
    sec = qemu_secret(workdir, PW4, "n")
    # A plain device -> a new qcow2-luks file.
    qcow = os.path.join(workdir, "enc.qcow2")
    ok("convert", "--object", sec, "-O", "qcow2", "-o",
       "encrypt.format=luks,encrypt.key-secret=n,encrypt.iter-time=10", "--verify", raw_dev, qcow)
    assert _qcow2_read(workdir, qcow, PW4) == data
    # qcow2-luks -> an existing device holding other bytes, plain (-n -O raw):
    # the zero runs must overwrite them.
    plain_dev = loop_devices(_blank(workdir, "plain-target.img", SIZE + 4096, 0xEE))
    ok("convert", "--object", sec, "--image-opts", "-n", "-O", "raw", "--verify",
       "driver=qcow2,file.filename=%s,encrypt.key-secret=n" % qcow, plain_dev)
    got = _read_dev(plain_dev)
    assert got[:SIZE] == data and got[SIZE:] == b"\xee" * 4096
    # qcow2-luks -> an existing device as a new LUKS1 volume (-n -O luks).
    luks_dev = loop_devices(_blank(workdir, "luks-target.img", AREA + SIZE, 0xEE))
    sec3 = qemu_secret(workdir, PW3, "t")
    ok("convert", "--object", sec, "--object", sec3, "--image-opts", "-n", "-O", "luks",
       "-o", "key-secret=t,iter-time=10", "--verify",
       "driver=qcow2,file.filename=%s,encrypt.key-secret=n" % qcow, luks_dev)
    assert cs_accepts(luks_dev, PW3, workdir) and not cs_accepts(luks_dev, PW4, workdir)
    assert _luks_read(workdir, luks_dev, PW3) == data
    # A LUKS device -> a new raw file, decrypted.
    out = os.path.join(workdir, "out.raw")
    ok("convert", "--object", sec3, "--image-opts", "-O", "raw",
       "driver=luks,file.filename=%s,key-secret=t" % luks_dev, out)
    assert open(out, "rb").read() == data


def test_n_refuses_the_source_itself(workdir, loop_devices):
    vol, _ = _filled_volume(workdir)
    dev = loop_devices(vol)
    qcow = os.path.join(workdir, "disk.qcow2")
    ok("convert", "--keep-ciphertext", "-O", "qcow2", "-o",
       "data_file=%s,data_file_existing=on" % loop_devices(vol, offset=AREA), dev, qcow)
    sec = qemu_secret(workdir, PW, "s")
    err = failing("convert", "--object", sec, "--image-opts", "-n", "-O", "raw",
                  "driver=luks,file.filename=%s,key-secret=s" % dev, dev)
    assert "itself" in err


# ---------------------------------------------------------------- LUKS verbs on a device

def test_format_and_keyslot_verbs_on_a_device(workdir, loop_devices):
    k1, k2, k3 = (write_file(os.path.join(workdir, n), pw)
                  for n, pw in (("k1", PW), ("k2", PW2), ("k3", PW3)))
    dev = loop_devices(_blank(workdir, "dev.img", AREA + SIZE, 0x11))
    ok("format", "-q", "--key-file", k1, "--pbkdf-force-iterations", 1000, dev)
    assert cs_accepts(dev, PW, workdir)
    theirs = run([tool("cryptsetup"), "luksDump", dev]).stdout
    assert ok("dump", dev).stdout == theirs
    ours = json.loads(ok("info", "--output", "json", dev).stdout)
    assert ours == json.loads(run([tool("qemu-img"), "info", "--output=json", dev]).stdout)
    assert ours["virtual-size"] == SIZE                         # the device's size kept
    ok("add-key", "--key-file", k1, "--pbkdf-force-iterations", 1000, "-S", 3, dev, k2)
    assert cs_accepts(dev, PW2, workdir, slot=3)
    assert cli("test-passphrase", "--key-file", k2, dev).returncode == 0
    assert cli("test-passphrase", "--key-file", k3, dev).returncode == 2
    ok("change-key", "--key-file", k2, "--new-key-file", k3, "--pbkdf-force-iterations", 1000,
       dev)
    assert cs_accepts(dev, PW3, workdir) and not cs_accepts(dev, PW2, workdir)
    ok("remove-key", "-q", dev, k3)
    assert not cs_accepts(dev, PW3, workdir) and cs_accepts(dev, PW, workdir)
    # Writable API open on the device; qemu-io reads what we wrote.
    with pyqcrypt.open(dev, passphrase=PW, writable=True) as img:
        assert img.size == SIZE
        img.write(5 << 20, b"\x77" * 70000)
        img.flush()
    out = run([tool("qemu-io"), "--object", qemu_secret(workdir, PW, "r"), "--image-opts",
               "-c", "read -P 0x77 %d 70000" % (5 << 20),
               "driver=luks,file.filename=%s,key-secret=r" % dev]).stdout.decode()
    assert "read 70000/70000" in out and "fail" not in out.lower()
    ok("erase", "-q", dev)
    assert not cs_accepts(dev, PW, workdir)


def test_detached_header_format_on_a_device(workdir, loop_devices):
    k1 = write_file(os.path.join(workdir, "k1"), PW)
    dev = loop_devices(_blank(workdir, "payload.img", SIZE, 0x22))
    hdr = os.path.join(workdir, "h.hdr")
    ok("format", "-q", "--key-file", k1, "--pbkdf-force-iterations", 1000, "--header", hdr, dev)
    assert _read_dev(dev) == b"\x22" * SIZE                    # the device itself untouched
    assert cs_accepts(dev, PW, workdir, header=hdr)
    with pyqcrypt.open(dev, passphrase=PW, header=hdr, writable=True) as img:
        assert img.size == SIZE
        img.write(0, b"x" * 4096)
    run([tool("cryptsetup"), "luksDump", hdr])


def test_format_refuses_a_mounted_device(workdir, loop_devices):
    img = _blank(workdir, "fs.img", 16 << 20)
    mkfs = tool("mkfs.ext4")
    run([mkfs, "-q", "-F", img])
    dev = loop_devices(img)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    proc = subprocess.run(["mount", dev, mnt], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount here: %s" % proc.stderr.decode().strip())
    try:
        write_file(os.path.join(mnt, "precious"), b"keep me")
        k1 = write_file(os.path.join(workdir, "k1"), PW)
        err = failing("format", "-q", "--key-file", k1, "--pbkdf-force-iterations", 1000, dev)
        assert "in use" in err
    finally:
        subprocess.run(["umount", mnt], check=True)
    run(["e2fsck", "-n", "-f", dev])
    assert _read_dev(dev, 0, 6) != b"LUKS\xba\xbe"


def test_sizes_come_from_the_device(workdir, loop_devices):
    """A device shorter than its backing file: every size is the device's."""
    vol, data = _filled_volume(workdir)
    dev = loop_devices(vol, sizelimit=AREA + SIZE // 2)
    info = json.loads(ok("info", "--output", "json", dev).stdout)
    assert info["virtual-size"] == SIZE // 2
    assert info == json.loads(run([tool("qemu-img"), "info", "--output=json", dev]).stdout)
    dst = os.path.join(workdir, "half.qcow2")
    ok("convert", "--keep-ciphertext", "--verify", "-O", "qcow2", dev, dst)
    assert os.path.getsize(dst + ".data") == SIZE // 2
    assert _qcow2_read(workdir, dst, PW) == data[:SIZE // 2]


def test_n_into_existing_files_and_refusal_without_it(workdir):
    """The same rules hold for regular files (no loop device needed)."""
    vol, data = _filled_volume(workdir)
    qcow = os.path.join(workdir, "disk.qcow2")
    ok("convert", "--keep-ciphertext", "-O", "qcow2", vol, qcow)
    target = _blank(workdir, "target.img", AREA + SIZE + 4096, 0x5A)
    err = failing("convert", "--keep-ciphertext", "-O", "luks", qcow, target)
    assert "already exists" in err and "-n" in err
    assert open(target, "rb").read() == b"\x5a" * (AREA + SIZE + 4096)
    err = failing("convert", "--keep-ciphertext", "-n", "-O", "qcow2", vol, target)
    assert "created new" in err
    ok("convert", "--keep-ciphertext", "-n", "-O", "luks", "--verify", qcow, target)
    assert cs_accepts(target, PW, workdir)
    assert _luks_read(workdir, target, PW)[:SIZE] == data
    # Re-encrypting into the same existing file, a new passphrase.
    sec = qemu_secret(workdir, PW4, "t")
    ok("convert", "--object", qemu_secret(workdir, PW, "o"), "--object", sec, "--image-opts",
       "-n", "-O", "luks", "-o", "key-secret=t,iter-time=10,cipher-alg=aes-128,"
       "cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1",
       "driver=qcow2,file.filename=%s,encrypt.key-secret=o" % qcow, target)
    assert cs_accepts(target, PW4, workdir) and not cs_accepts(target, PW, workdir)
    dump = run([tool("cryptsetup"), "luksDump", target]).stdout.decode()
    assert "cbc-essiv:sha256" in dump and "sha1" in dump
    assert _luks_read(workdir, target, PW4)[:SIZE] == data
    missing = os.path.join(workdir, "missing.img")
    err = failing("convert", "-n", "-O", "raw", vol, missing)
    assert "does not exist" in err and not os.path.exists(missing)
