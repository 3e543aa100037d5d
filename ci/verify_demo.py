#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A demonstration of ``pyqcrypt verify`` on a real set, made in a scratch
directory with this machine's cryptsetup and pyqcrypt: a LUKS2 volume
(cryptsetup's 4096-byte sectors, a second keyslot, a revoked third), its
qcow2-luks conversion, a LUKS1 volume and its keep-ciphertext qcow2-luks
copy, and a checks file (TOML) naming them.  Runs verify (every check
passes), then makes each check fail once (a revoked passphrase, a flipped
payload byte, a leaked cluster, a broken checks file) and prints the exit
status and the JUnit <failure> elements of each run.

    python ci/verify_demo.py            # needs cryptsetup and qemu-img on PATH
"""

import os
import shutil
import struct
import subprocess
import sys
import tempfile
from xml.etree import ElementTree

PYQCRYPT = [sys.executable, "-m", "pyqcrypt"]
COST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
CHECKS = """\
[keys]
main = "keys/main.key"
second = "keys/second.key"
revoked = "keys/revoked.key"

[[passphrase]]
image = "images/vol2.luks"
key = "main"
slot = 0

[[passphrase]]
image = "images/vol2.luks"
key = "second"
slot = 1

[[passphrase]]
image = "images/vol2.luks"
key = "revoked"
opens = false

[[passphrase]]
image = "images/disk.qcow2"
key = "main"

[[check]]
image = "images/disk.qcow2"
key = "main"

[[same-data]]
images = ["images/vol2.luks", "images/disk.qcow2"]
key = "main"

[[same-data]]
images = ["images/vol1.luks", "images/kept.qcow2"]
key = "main"

[[same-ciphertext]]
images = ["images/vol1.luks", "images/kept.qcow2"]
"""


def sh(*argv, stdin=None):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, input=stdin)
    if proc.returncode != 0:
        sys.exit("ci/verify_demo.py: %s failed: %s" % (" ".join(map(str, argv)), proc.stderr.decode()))
    return proc


def luks(path, size, key, *extra):
    with open(path, "wb") as fh:
        fh.truncate(size)
    sh("cryptsetup", "luksFormat", "-q", "--key-file", key, *COST, *extra, path)


def fill(path, key):
    """Random data at 0 and 1 MiB, written through pyqcrypt."""
    src = os.path.join(os.path.dirname(path), "fill.raw")
    with open(src, "wb") as fh:
        fh.write(os.urandom(2 << 20))
    sh(*PYQCRYPT, "convert", "-n", "-f", "raw", "--object", "secret,id=s,file=" + key,
       "--target-image-opts", src, "driver=luks,file.filename=%s,key-secret=s" % path)
    os.unlink(src)


def build(d):
    keys, images = os.path.join(d, "keys"), os.path.join(d, "images")
    os.mkdir(keys, 0o700)
    os.mkdir(images)
    for name, secret in (("main", "demo main passphrase"), ("second", "demo second passphrase"),
                         ("revoked", "demo revoked passphrase")):
        fd = os.open(os.path.join(keys, name + ".key"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, secret.encode())
        os.close(fd)
    main = os.path.join(keys, "main.key")
    vol2, vol1 = os.path.join(images, "vol2.luks"), os.path.join(images, "vol1.luks")
    luks(vol2, 24 << 20, main, "--type", "luks2")
    sh("cryptsetup", "luksAddKey", "-q", "--key-file", main, *COST, vol2, os.path.join(keys, "second.key"))
    sh("cryptsetup", "luksAddKey", "-q", "--key-file", main, "--key-slot", "2", *COST, vol2,
       os.path.join(keys, "revoked.key"))
    sh("cryptsetup", "luksKillSlot", "-q", vol2, "2")
    luks(vol1, 8 << 20, main, "--type", "luks1")
    fill(vol2, main)
    fill(vol1, main)
    sh(*PYQCRYPT, "convert", "--object", "secret,id=s,file=" + main, "--image-opts",
       "driver=luks,file.filename=%s,key-secret=s" % vol2, "-O", "qcow2",
       "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", os.path.join(images, "disk.qcow2"))
    sh(*PYQCRYPT, "convert", "--keep-ciphertext", "-O", "qcow2", vol1, os.path.join(images, "kept.qcow2"))
    with open(os.path.join(d, "verify.toml"), "w") as fh:
        fh.write(CHECKS)


def verify(d, title, *args):
    junit = os.path.join(d, "verify.xml")
    if os.path.exists(junit):
        os.unlink(junit)
    print("\n== %s\n$ pyqcrypt verify %s" % (title, " ".join(args)))
    proc = subprocess.run(PYQCRYPT + ["verify", *args], capture_output=True, text=True, cwd=d)
    sys.stdout.write(proc.stdout + proc.stderr)
    print("exit status: %d" % proc.returncode)
    if os.path.exists(junit):
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            failure = case.find("failure")
            if failure is not None:
                failure.tail = None
                print("JUnit %s/%s: %s" % (case.get("classname"), case.get("name"),
                                           ElementTree.tostring(failure, encoding="unicode")))


def flip(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x40]))


def leak_a_cluster(path):
    """Append a cluster to a qcow2 image and count a reference to it."""
    with open(path, "r+b") as fh:
        head = fh.read(104)
        size = 1 << struct.unpack_from(">I", head, 20)[0]
        table = struct.unpack_from(">Q", head, 48)[0]
        end = fh.seek(0, 2)
        fh.truncate(end + size)
        fh.seek(table)
        block = struct.unpack(">Q", fh.read(8))[0]
        fh.seek(block + 2 * (end // size))         # 16-bit refcounts, first refcount block
        fh.write(struct.pack(">H", 1))


def main():
    d = tempfile.mkdtemp(prefix="pyqcrypt-verify-demo-")
    try:
        build(d)
        verify(d, "the real set: every check passes", "--checks", "verify.toml", "--junit", "verify.xml")
        verify(d, "a revoked passphrase must open (it does not)", "--junit", "verify.xml",
               "--opens", "images/vol2.luks", "keys/revoked.key")
        flip(os.path.join(d, "images", "vol1.luks"), (2 << 20) + (1 << 20) + 1000)   # LUKS1 payload at 2 MiB
        verify(d, "a flipped byte in vol1.luks's payload", "--junit", "verify.xml", "--key-file",
               "keys/main.key", "--same-data", "images/vol1.luks", "images/kept.qcow2",
               "--same-ciphertext", "images/vol1.luks", "images/kept.qcow2")
        leak_a_cluster(os.path.join(d, "images", "disk.qcow2"))
        verify(d, "a leaked cluster in disk.qcow2", "--junit", "verify.xml", "--key-file", "keys/main.key",
               "--check", "images/disk.qcow2")
        with open(os.path.join(d, "bad.toml"), "w") as fh:
            fh.write(CHECKS.replace('image = "images/disk.qcow2"\nkey = "main"\n\n[[same-data]]',
                                    'image = "images/disk.qcow2"\nkye = "main"\n\n[[same-data]]'))
        verify(d, "a checks file with a misspelt key", "--checks", "bad.toml", "--junit", "verify.xml")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
