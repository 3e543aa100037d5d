# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt info`` and ``check`` given images as qemu-img takes them:
``--object secret,...`` with ``--image-opts driver=...,file.filename=...``
or a ``json:{...}`` filename, against qemu-img on the same command line:
same stdout and exit code, on qcow2, qcow2-luks, LUKS1 and raw images and
with ``--backing-chain``.

qemu-img info opens an image without I/O: the secret is never tried, so a
wrong one changes nothing (exit 0), but a secret in the options turns the
image's name into its ``json:{...}`` form.  qemu-img check opens it with
the key: a wrong secret exits 1.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import qemu_img, qemu_io, qemu_secret, scratch_dir, tool, write_file
from test_check_vs_qemu import Layout

pytestmark = pytest.mark.interop

PW = b"image-opts pw"


def _same(*args, rc=None):
    """Run qemu-img and pyqcrypt with *args*; assert the same stdout and
    exit code (and that code when *rc* is given); returns qemu-img's."""
    theirs = subprocess.run([tool("qemu-img")] + list(args), capture_output=True)
    ours = subprocess.run([sys.executable, "-m", "pyqcrypt"] + list(args), capture_output=True)
    assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), \
        (args, ours.stderr, theirs.stderr)
    assert rc is None or theirs.returncode == rc, (args, theirs.stderr)
    return theirs


@pytest.fixture(scope="module")
def images():
    """Paths and secret objects: plain, qcow2-luks, luks, raw, overlays
    (made once per worker: qemu-img's LUKS creation is slow to retry)."""
    d = scratch_dir()
    good, bad = qemu_secret(d, PW, "s"), qemu_secret(d, b"wrong", "w")
    p = {n: os.path.join(d, n) for n in ("plain.qcow2", "enc.qcow2", "vol.luks", "disk.raw",
                                         "over.qcow2", "over-enc.qcow2")}
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", p["plain.qcow2"], "4M")
    qemu_img("create", "-q", "-f", "qcow2", "--object", good, "-o",
             "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10,cluster_size=4096",
             p["enc.qcow2"], "4M")
    qemu_img("create", "-q", "-f", "luks", "--object", good, "-o", "key-secret=s,iter-time=10",
             p["vol.luks"], "4M")
    write_file(p["disk.raw"], bytes(1 << 20))
    qemu_img("create", "-q", "-f", "qcow2", "-b", p["plain.qcow2"], "-F", "qcow2",
             p["over.qcow2"])
    qemu_img("create", "-q", "-f", "qcow2", "--object", good, "-b", p["enc.qcow2"], "-F", "qcow2",
             p["over-enc.qcow2"])
    qemu_io(opts("qcow2", p["enc.qcow2"], "s"), "write -P 0x11 0 64k", objects=[good])
    yield p, good, bad
    shutil.rmtree(d, ignore_errors=True)


def opts(driver, path, secret=None):
    key = {"qcow2": "encrypt.key-secret", "luks": "key-secret"}.get(driver)
    text = "driver=%s,file.filename=%s" % (driver, path)
    return text + (",%s=%s" % (key, secret) if secret else "")


@pytest.mark.parametrize("output", ["human", "json"])
def test_info_and_check_with_secrets(images, output):
    p, good, bad = images
    out = "--output=" + output
    for verb in ("info", "check"):
        _same(verb, out, "--object", good, "--image-opts", opts("qcow2", p["plain.qcow2"]), rc=0)
        _same(verb, out, "--object", good, "--image-opts",
              opts("qcow2", p["enc.qcow2"], "s"), rc=0)
        _same(verb, out, "--object", good, "--image-opts", opts("luks", p["vol.luks"], "s"),
              rc=0 if verb == "info" else 63)
        _same(verb, out, "--image-opts", opts("raw", p["disk.raw"]),
              rc=0 if verb == "info" else 63)
        _same(verb, out, 'json:{"driver": "qcow2", "file": {"driver": "file", "filename": "%s"}}'
              % p["plain.qcow2"], rc=0)
    theirs = _same("info", out, "--object", good, "--image-opts", opts("qcow2", p["enc.qcow2"], "s"))
    assert b"json:{" in theirs.stdout


def test_wrong_secret(images):
    """info never tries the key (exit 0, same output); check does (exit 1)."""
    p, good, bad = images
    for image in (opts("qcow2", p["enc.qcow2"], "w"), opts("luks", p["vol.luks"], "w")):
        _same("info", "--object", bad, "--image-opts", image, rc=0)
        _same("check", "--object", bad, "--image-opts", image, rc=1)
    _same("check", "--image-opts", opts("luks", p["vol.luks"]), rc=1)       # key-secret needed
    _same("check", "--object", bad, "--image-opts",
          opts("qcow2", p["over-enc.qcow2"]) + ",backing.encrypt.key-secret=w", rc=1)
    _same("check", "--object", good, "--image-opts",
          opts("qcow2", p["over-enc.qcow2"]) + ",backing.encrypt.key-secret=s", rc=0)


@pytest.mark.parametrize("output", ["human", "json"])
def test_backing_chain(images, output):
    p, good, _ = images
    out = "--output=" + output
    _same("info", "--backing-chain", out, "--image-opts", opts("qcow2", p["over.qcow2"]), rc=0)
    _same("info", "--backing-chain", out, "--object", good, "--image-opts",
          opts("qcow2", p["enc.qcow2"], "s"), rc=0)
    _same("info", "--backing-chain", out, "--object", good, "--image-opts",
          opts("luks", p["vol.luks"], "s"), rc=0)
    # info opens no backing file: options for one are refused
    _same("info", "--backing-chain", out, "--object", good, "--image-opts",
          opts("qcow2", p["over-enc.qcow2"]) + ",backing.encrypt.key-secret=s", rc=1)


def test_format_with_image_opts_refused(images):
    p, good, _ = images
    for verb in ("info", "check"):
        _same(verb, "-f", "qcow2", "--image-opts", opts("qcow2", p["plain.qcow2"]), rc=1)


@pytest.mark.parametrize("mode", ["leaks", "all"])
def test_repair_encrypted_image(images, mode):
    """check -r with the key in --image-opts, on copies of one damaged
    qcow2-luks image: same output, exit code and file."""
    p, good, _ = images
    theirs_path, ours_path = p["enc.qcow2"] + "." + mode, p["enc.qcow2"] + ".ours"
    shutil.copyfile(p["enc.qcow2"], theirs_path)
    lay = Layout(theirs_path)
    lay.put(lay.l2, ">Q", 0)                                    # leak guest cluster 0
    lay.save()
    shutil.copyfile(theirs_path, ours_path)
    theirs = subprocess.run([tool("qemu-img"), "check", "-r", mode, "--object", good,
                             "--image-opts", opts("qcow2", theirs_path, "s")],
                            capture_output=True)
    ours = subprocess.run([sys.executable, "-m", "pyqcrypt", "check", "-r", mode, "--object",
                           good, "--image-opts", opts("qcow2", ours_path, "s")],
                          capture_output=True)
    assert theirs.returncode == ours.returncode == 0, (theirs.stderr, ours.stderr)
    assert ours.stderr == theirs.stderr and b"Repairing cluster" in ours.stderr
    assert ours.stdout.replace(b".ours", b"." + mode.encode()) == theirs.stdout
    with open(ours_path, "rb") as a, open(theirs_path, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("size", [1, 511, 1000, 4097])
def test_raw_info_of_a_file_with_a_partial_sector(workdir, size):
    """qemu-img counts whole sectors: a 1000-byte raw file is 1024 bytes."""
    path = os.path.join(workdir, "odd.raw")
    with open(path, "wb") as fh:
        fh.write(b"\x01" * size)
    ours = subprocess.run([sys.executable, "-m", "pyqcrypt", "info", "--output=json", path],
                          capture_output=True, text=True)
    theirs = qemu_img("info", "--output=json", path)
    assert json.loads(ours.stdout)["virtual-size"] == json.loads(theirs.stdout)["virtual-size"]
    ours = subprocess.run([sys.executable, "-m", "pyqcrypt", "info", path], capture_output=True,
                          text=True)
    assert ours.stdout.encode().splitlines()[:3] == qemu_img("info", path).stdout.splitlines()[:3]
