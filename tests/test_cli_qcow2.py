# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 commands end to end: create, info, check, dump, keyslots, amend."""

import os
import struct
import subprocess
import sys

import pytest

from conftest import qemu_img, qemu_io, qemu_io_refused, qemu_secret, run, tool, write_file

PW = "pass \u00e9".encode()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)], capture_output=True,
                          stdin=subprocess.DEVNULL)


def ok(*args):
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


@pytest.mark.parametrize("opts", [
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,"
    "encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,cluster_size=4k",
    "cluster_size=512,refcount_bits=1",
    "compat=0.10",
    "data_file={dir}/d.raw,data_file_raw=on",
])
def test_create_and_info_match_qemu(workdir, opts):
    path = os.path.join(workdir, "c.qcow2")
    obj = qemu_secret(workdir, PW)
    ok("create", "-q", "-f", "qcow2", "--object", obj, "-o", opts.format(dir=workdir), path, "1G")
    for fmt in ("human", "json"):
        ours = ok("info", "--output", fmt, path).stdout
        theirs = run([tool("qemu-img"), "info", "--output=" + fmt, path]).stdout
        assert ours == theirs
    if "encrypt" not in opts:        # qemu-img check would need the secret to open it
        assert ok("check", path).stdout == run([tool("qemu-img"), "check", path]).stdout


def test_aes_needs_opt_in(workdir):
    path = os.path.join(workdir, "a.qcow2")
    obj = qemu_secret(workdir, b"legacy")
    proc = cli("create", "-f", "qcow2", "--object", obj, "-o", "encrypt.format=aes,encrypt.key-secret=sec0",
               path, "16M")
    assert proc.returncode == 1 and b"--allow-insecure" in proc.stderr and not os.path.exists(path)
    proc = ok("create", "-q", "--allow-insecure", "-f", "qcow2", "--object", obj, "-o",
              "encryption=on,encrypt.key-secret=sec0", path, "16M")
    assert b"watermarking" in proc.stderr
    import pyqcrypt
    with pyqcrypt.open(path, passphrase=b"legacy", writable=True) as img:
        img.write(1000, b"liberate me" * 100)
    out = os.path.join(workdir, "a.raw")
    qemu_img("convert", "--object", obj, "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % path, "-O", "raw", out)
    with open(out, "rb") as fh:
        assert fh.read() == bytes(1000) + b"liberate me" * 100 + bytes((16 << 20) - 2100)


def test_check_exit_codes_agree_with_qemu(workdir):
    import pyqcrypt
    path = os.path.join(workdir, "k.qcow2")
    ok("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "16M")
    with pyqcrypt.open(path, writable=True) as img:
        img.write(0, b"x" * 20000)
    data = bytearray(open(path, "rb").read())
    l1 = struct.unpack_from(">Q", data, 40)[0]
    l2 = struct.unpack_from(">Q", data, l1)[0] & 0x00FFFFFFFFFFFE00
    leaky = bytearray(data)
    struct.pack_into(">Q", leaky, l2 + 8, 0)             # unmap cluster 1: a leak
    write_file(path, bytes(leaky))
    assert cli("check", path).returncode == 3
    assert subprocess.run([tool("qemu-img"), "check", path], capture_output=True).returncode == 3
    broken = bytearray(data)
    host = struct.unpack_from(">Q", data, l2)[0] & 0x00FFFFFFFFFFFE00
    rt = struct.unpack_from(">Q", data, 48)[0]
    rb = struct.unpack_from(">Q", data, rt)[0]
    struct.pack_into(">H", broken, rb + 2 * (host // 4096), 0)   # refcount 0 for a used cluster
    write_file(path, bytes(broken))
    proc = cli("check", "--output", "json", path)
    assert proc.returncode == 2 and b'"corruptions"' in proc.stdout
    assert subprocess.run([tool("qemu-img"), "check", path], capture_output=True).returncode == 2


def test_luks_verbs_on_qcow2(workdir):
    path = os.path.join(workdir, "l.qcow2")
    obj0, obj1 = qemu_secret(workdir, PW, "sec0"), qemu_secret(workdir, b"other", "sec1")
    ok("create", "-q", "-f", "qcow2", "--object", obj0, "-o",
       "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", path, "64M")
    image = "driver=qcow2,file.filename=%s,encrypt.key-secret=%%s" % path
    qemu_io(image % "sec0", "write -P 0xc4 65000 70000", objects=[obj0])
    k0 = os.path.join(workdir, "sec0.secret")
    k1 = os.path.join(workdir, "sec1.secret")
    # dump equals cryptsetup's dump of the extracted FDE region
    ours = ok("dump", path).stdout.decode().split("\n", 1)[1]
    data = open(path, "rb").read()
    import pyqcrypt.qcow2.header as qh
    fde = qh.Qcow2Header.parse(data[:65536], len(data)).fde
    region = write_file(os.path.join(workdir, "region"), data[fde[0]:fde[0] + fde[1]])
    theirs = run([tool("cryptsetup"), "luksDump", region]).stdout.decode().split("\n", 1)[1]
    assert ours == theirs
    ok("add-key", "--key-file", k0, "--pbkdf-force-iterations", 1000, path, k1)
    qemu_io(image % "sec1", "read -P 0xc4 65000 70000", objects=[obj1])
    ok("test-passphrase", "--key-file", k1, path)
    ok("amend", "--object", obj0, "--image-opts", image % "sec0",
       "-o", "encrypt.state=inactive,encrypt.old-secret=sec0")
    assert cli("test-passphrase", "--key-file", k0, path).returncode == 2
    qemu_io_refused(image % "sec0", "read -P 0xc4 65000 70000", objects=[obj0])
    ok("amend", "--object", obj0, "--object", obj1, "--image-opts",
       "driver=qcow2,file.filename=%s,encrypt.key-secret=sec1" % path,
       "-o", "encrypt.state=active,encrypt.new-secret=sec0,encrypt.iter-time=10")
    qemu_io(image % "sec0", "read -P 0xc4 65000 70000", objects=[obj0])
    proc = cli("erase", path)
    assert proc.returncode == 1
    ok("erase", "-q", path)
    # (qemu-img info does not unlock; a read does.)
    for obj, sid in ((obj0, "sec0"), (obj1, "sec1")):
        qemu_io_refused(image % sid, "read 0 512", objects=[obj])
