# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keep-ciphertext checks what it copies and does what it is told, or
refuses (issue 21, items 2 and 3).

* A LUKS1 header that open and info would refuse (a payload offset inside
  the key material, a 1-byte key, an unknown hash) is refused before a byte
  is written, instead of being sealed into a qcow2 image nothing opens.
* Options the ciphertext cannot honour (another cipher, hash or mode) are
  refused by name; a new secret is honoured: it becomes a keyslot of its
  own beside the kept ones, and qemu-img opens the result with it.
"""

import os
import struct
import subprocess
import sys

import pytest

from conftest import cs_format, qemu_img, qemu_secret, write_file

pytestmark = pytest.mark.interop

PW = b"kept passphrase"
NEW = b"new passphrase"


def pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + [str(a) for a in args],
                          capture_output=True, text=True)


def _patch(path, offset, data):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _left(workdir, *keep):
    return sorted(n for n in os.listdir(workdir) if n not in keep)


@pytest.mark.parametrize("field,offset,data,words", [
    ("payload-offset", 104, struct.pack(">I", 0), "payload offset"),
    ("key-bytes", 108, struct.pack(">I", 1), "cannot be used"),
    ("hash-spec", 72, b"nosuchhash".ljust(32, b"\0"), "cannot be used"),
])
def test_unusable_luks1_header_is_refused_before_copying(workdir, field, offset, data, words):
    vol = cs_format(workdir, "v.luks", PW, size=4 << 20)
    _patch(vol, offset, data)
    before = sorted(os.listdir(workdir))
    out = os.path.join(workdir, "out.qcow2")
    proc = pyq("convert", "--keep-ciphertext", "-O", "qcow2", vol, out)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert err.startswith("pyqcrypt: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    assert sorted(os.listdir(workdir)) == before            # no image, no data file


def test_unkept_options_are_refused_by_name(workdir):
    vol = cs_format(workdir, "v.luks", PW, size=4 << 20)
    obj, obj2 = qemu_secret(workdir, PW, "s"), qemu_secret(workdir, NEW, "n")
    before = sorted(os.listdir(workdir))
    out = os.path.join(workdir, "out.qcow2")
    for opts, names in (("encrypt.cipher-alg=aes-128", "encrypt.cipher-alg"),
                        ("encrypt.hash-alg=sha512,encrypt.cipher-mode=cbc",
                         "encrypt.cipher-mode, encrypt.hash-alg"),
                        ("encrypt.format=aes", "encrypt.format=aes"),
                        ("refcount_bits=8", "refcount_bits"),
                        ("data_file_raw=off", "data_file_raw=on")):
        proc = pyq("convert", "--keep-ciphertext", "--object", obj, "--object", obj2, "-O",
                   "qcow2", "-o", opts, vol, out)
        assert proc.returncode == 1 and names in proc.stderr, (opts, proc.stderr)
        assert "Traceback" not in proc.stderr
    # a new secret without the source's: refused, it could not be added
    proc = pyq("convert", "--keep-ciphertext", "--object", obj2, "-O", "qcow2",
               "-o", "encrypt.key-secret=n", vol, out)
    assert proc.returncode == 1 and "needs the source's secret" in proc.stderr, proc.stderr
    # -O luks keeps the header as it is: a key-secret or cipher there is refused too
    img = os.path.join(workdir, "k.qcow2")
    assert pyq("convert", "--keep-ciphertext", "-O", "qcow2", vol, img).returncode == 0
    proc = pyq("convert", "--keep-ciphertext", "--object", obj, "-O", "luks",
               "-o", "key-secret=s,cipher-alg=aes-128", img, os.path.join(workdir, "b.luks"))
    assert proc.returncode == 1 and "cipher-alg, key-secret" in proc.stderr, proc.stderr
    assert sorted(os.listdir(workdir)) == sorted(before + ["k.qcow2", "k.qcow2.data"])


def test_new_secret_becomes_a_keyslot_qemu_opens(workdir):
    vol = cs_format(workdir, "v.luks", PW, size=4 << 20)
    raw = write_file(os.path.join(workdir, "p.raw"), os.urandom(2 << 20))
    obj, obj2 = qemu_secret(workdir, PW, "s"), qemu_secret(workdir, NEW, "n")
    assert pyq("convert", "-n", "--object", obj, "-f", "raw", raw, "--target-image-opts",
               "driver=luks,file.filename=%s,key-secret=s" % vol).returncode == 0
    out = os.path.join(workdir, "out.qcow2")
    wrong = qemu_secret(workdir, b"wrong", "w")
    proc = pyq("convert", "--keep-ciphertext", "--object", wrong, "--object", obj2,
               "--image-opts", "driver=luks,file.filename=%s,key-secret=w" % vol, "-O", "qcow2",
               "-o", "encrypt.key-secret=n,encrypt.iter-time=10", out)
    assert proc.returncode == 2 and not os.path.exists(out) and not os.path.exists(out + ".data")
    proc = pyq("convert", "--keep-ciphertext", "--verify", "--object", obj, "--object", obj2,
               "--image-opts", "driver=luks,file.filename=%s,key-secret=s" % vol, "-O", "qcow2",
               "-o", "encrypt.key-secret=n,encrypt.iter-time=10", out)
    assert proc.returncode == 0, proc.stderr
    for sid, o in (("n", obj2), ("s", obj)):     # the new secret and the kept one both open it
        qemu_img("compare", "--object", o, "--image-opts",
                 "driver=qcow2,file.filename=%s,encrypt.key-secret=%s" % (out, sid),
                 "driver=raw,file.filename=%s" % raw)
    dump = pyq("dump", out).stdout
    assert dump.count("ENABLED") == 2, dump
