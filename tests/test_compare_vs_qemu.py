# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt compare`` against ``qemu-img compare`` on the same pairs:
stdout (messages and the -p progress line) and the exit status byte for
byte; and ``compare --ciphertext`` of keep-ciphertext pairs against
``cmp`` on the same bytes."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import cs_format, qemu_img, qemu_io, qemu_secret, tool, write_file

pytestmark = pytest.mark.interop

PW = b"compare passphrase"
MIB = 1 << 20


def _run(cmd, args):
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True)


def same_compare(*args, flags=((), ("-p",))):
    """Both tools, with each set of *flags*: the same stdout and status;
    returns qemu-img's (stdout, status) without flags."""
    result = None
    for extra in flags:
        theirs = _run([tool("qemu-img"), "compare", *extra], args)
        ours = _run([sys.executable, "-m", "pyqcrypt", "compare", *extra], args)
        assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), \
            (extra, args, theirs.stderr, ours.stderr)
        assert bool(ours.stderr) == bool(theirs.stderr), (theirs.stderr, ours.stderr)
        result = result or (theirs.stdout, theirs.returncode)
    return result


def _random_raw(name, size=4 * MIB):
    return write_file(name, os.urandom(size))


def _patch(path, offset, data):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_identical_qcow2_and_raw():
    _random_raw("p.raw")
    qemu_img("convert", "-O", "qcow2", "p.raw", "p.qcow2")
    assert same_compare("p.raw", "p.qcow2") == ("Images are identical.\n", 0)
    same_compare("-s", "-f", "raw", "-F", "qcow2", "p.raw", "p.qcow2")


@pytest.mark.parametrize("where", [0, 1000, 2 * MIB + 777, 4 * MIB - 1])
def test_one_byte_differs(where):
    _random_raw("p.raw")
    qemu_img("convert", "-O", "qcow2", "p.raw", "p.qcow2")
    shutil.copy("p.raw", "q.raw")
    _patch("q.raw", where, bytes([open("p.raw", "rb").read()[where] ^ 1]))
    out = same_compare("p.qcow2", "q.raw")
    assert out == ("Content mismatch at offset %d!\n" % (where - where % 512), 1)
    same_compare("q.raw", "p.qcow2", flags=(("-s",),))


@pytest.mark.parametrize("tail", ["zero", "data"])
@pytest.mark.parametrize("larger_first", [True, False])
def test_size_mismatch(tail, larger_first):
    data = os.urandom(2 * MIB)
    write_file("small.raw", data)
    qemu_img("create", "-f", "qcow2", "big.qcow2", "3M")
    qemu_img("convert", "-n", "-O", "qcow2", "small.raw", "big.qcow2")
    if tail == "data":
        qemu_io("big.qcow2", "write -P 5 %d 512" % (2 * MIB + 4096), fmt="qcow2")
    else:
        qemu_io("big.qcow2", "write -z %d 64k" % (2 * MIB), fmt="qcow2")
    pair = ("big.qcow2", "small.raw") if larger_first else ("small.raw", "big.qcow2")
    out = same_compare(*pair)
    assert out[0].startswith("Warning: Image size mismatch!\n")
    assert out[1] == (0 if tail == "zero" else 1)
    assert same_compare("-s", *pair, flags=((),)) == ("Strict mode: Image size mismatch!\n", 1)


def test_strict_on_differently_allocated_identical_images():
    write_file("z.raw", bytes(MIB) + os.urandom(MIB))
    qemu_img("convert", "-O", "qcow2", "z.raw", "z.qcow2")        # the zero MiB stays a hole
    qemu_img("create", "-f", "qcow2", "full.qcow2", "2M")
    qemu_io("full.qcow2", "write -P 0 0 1M", fmt="qcow2")          # allocated zeros
    qemu_img("convert", "-n", "-O", "qcow2", "z.raw", "full.qcow2")
    assert same_compare("z.qcow2", "full.qcow2")[1] == 0
    out = same_compare("-s", "z.qcow2", "full.qcow2", flags=((),))
    assert out[1] == 1 and "block status mismatch" in out[0]
    same_compare("-s", "z.raw", "z.qcow2", flags=((),))


def test_qcow2_luks_against_raw_plaintext(workdir):
    obj = qemu_secret(workdir, PW)
    qemu_img("create", "-f", "qcow2", "--object", obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", "q.qcow2", "4M")
    enc = "driver=qcow2,file.filename=q.qcow2,encrypt.key-secret=sec0"
    qemu_io(enc, "write -P 1 64k 64k", "write -z 1M 64k", "write -P 2 3M 4k", objects=[obj])
    qemu_img("convert", "--object", obj, "--image-opts", enc, "-O", "raw", "plain.raw")
    assert same_compare("--object", obj, "--image-opts", enc,
                        "driver=raw,file.filename=plain.raw")[1] == 0
    same_compare("-s", "--object", obj, "--image-opts", enc, "driver=raw,file.filename=plain.raw",
                 flags=((),))
    _patch("plain.raw", 3 * MIB + 100, b"\xff")
    assert same_compare("--object", obj, "--image-opts", enc,
                        "driver=raw,file.filename=plain.raw")[1] == 1


def test_luks1_against_qcow2_luks(workdir):
    obj = qemu_secret(workdir, PW)
    cs_format(os.getcwd(), "v.luks", PW)
    luks = "driver=luks,file.filename=v.luks,key-secret=sec0"
    qemu_io(luks, "write -P 3 0 2M", objects=[obj])
    qemu_img("create", "-f", "qcow2", "--object", obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", "q.qcow2", "2M")
    enc = "driver=qcow2,file.filename=q.qcow2,encrypt.key-secret=sec0"
    qemu_io(enc, "write -P 3 0 2M", objects=[obj])
    assert same_compare("--object", obj, "--image-opts", luks, enc) == ("Images are identical.\n", 0)
    qemu_io(enc, "write -P 4 1M 512", objects=[obj])
    same_compare("--object", obj, "--image-opts", luks, enc)
    same_compare("-s", "--object", obj, "--image-opts", luks, enc, flags=((),))


def test_chains():
    write_file("flat.raw", os.urandom(MIB) + bytes(MIB) + os.urandom(2 * MIB))
    qemu_img("convert", "-O", "qcow2", "flat.raw", "base.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2", "4M")
    qemu_io("mid.qcow2", "write -P 6 1M 64k", fmt="qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "5M")
    qemu_io("top.qcow2", "write -z 1M 64k", fmt="qcow2")
    assert same_compare("top.qcow2", "flat.raw")[1] == 0
    assert same_compare("mid.qcow2", "flat.raw") == ("Content mismatch at offset %d!\n" % MIB, 1)
    same_compare("-s", "top.qcow2", "base.qcow2", flags=((),))
    same_compare("top.qcow2", "mid.qcow2")


def test_unreadable_images_exit_2(workdir):
    _random_raw("p.raw", MIB)
    assert same_compare("p.raw", "missing.raw")[1] == 2
    obj = qemu_secret(workdir, b"wrong")
    cs_format(os.getcwd(), "v.luks", PW)
    assert same_compare("--object", obj, "--image-opts", "driver=luks,file.filename=v.luks,"
                        "key-secret=sec0", "driver=raw,file.filename=p.raw")[1] == 2


# ---- compare --ciphertext -------------------------------------------------------------------

def _pyq(*args):
    return _run([sys.executable, "-m", "pyqcrypt"], args)


def _kept_pair(name="v.luks", extra=(), size=4 * MIB):
    vol = cs_format(os.getcwd(), name, PW, size=size, extra=extra)
    qemu_io("driver=luks,file.filename=%s,key-secret=sec0" % vol, "write -P 7 64k 1M",
            objects=[qemu_secret(os.getcwd(), PW)])
    proc = _pyq("convert", "--keep-ciphertext", "-O", "qcow2", "-o",
                "data_file=%s.data,data_file_raw=on" % name, vol, name + ".qcow2")
    assert proc.returncode == 0, proc.stderr
    return vol, name + ".qcow2", name + ".data"


def _payload_offset(vol):
    proc = subprocess.run([tool("cryptsetup"), "luksDump", vol], capture_output=True, text=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("Payload offset"))
    return int(line.split()[-1]) * 512


def test_ciphertext_identical_pair_either_way():
    vol, img, _ = _kept_pair()
    for pair in ((vol, img), (img, vol)):
        proc = _pyq("compare", "--ciphertext", *pair)
        assert (proc.stdout, proc.returncode) == ("Images are identical.\n", 0), proc.stderr


def test_ciphertext_flipped_byte_found_where_cmp_finds_it():
    vol, img, data = _kept_pair()
    _patch(data, 1234567, b"\x5a")
    cmp = subprocess.run(["cmp", "-i", "%d:0" % _payload_offset(vol), vol, data],
                         capture_output=True, text=True)
    assert cmp.returncode == 1
    byte = int(cmp.stdout.split("byte ")[1].split(",")[0])
    proc = _pyq("compare", "--ciphertext", img, vol)
    assert (proc.stdout, proc.returncode) == ("Content mismatch at offset %d!\n" % (byte - 1), 1)


def test_ciphertext_headers_of_another_key():
    vol, img, _ = _kept_pair()
    other = cs_format(os.getcwd(), "other.luks", PW)
    proc = _pyq("compare", "--ciphertext", other, img)
    assert proc.returncode == 1 and proc.stdout.startswith("Key mismatch: the master key digest")
    proc = _pyq("compare", "--ciphertext", vol, other)          # two volumes: not a pair
    assert proc.returncode == 2 and proc.stderr.startswith("pyqcrypt: ")
    assert "Traceback" not in proc.stderr


def test_ciphertext_luks2_pair():
    vol = cs_format(os.getcwd(), "v2.luks", PW, size=24 << 20,
                    extra=("--type", "luks2", "--pbkdf", "pbkdf2", "--sector-size", "512"))
    obj = qemu_secret(os.getcwd(), PW)
    proc = _pyq("convert", "--keep-ciphertext", "--object", obj, "-O", "qcow2", "-o",
                "data_file=v2.data,data_file_raw=on", "--image-opts",
                "driver=luks,file.filename=%s,key-secret=sec0" % vol, "v2.qcow2")
    assert proc.returncode == 0, proc.stderr
    proc = _pyq("compare", "--ciphertext", vol, "v2.qcow2")
    assert (proc.stdout, proc.returncode) == ("Images are identical.\n", 0), proc.stderr
    _patch("v2.data", 5 * MIB, b"\x01")
    proc = _pyq("compare", "--ciphertext", vol, "v2.qcow2")
    assert proc.returncode == 1 and proc.stdout.startswith("Content mismatch at offset ")
