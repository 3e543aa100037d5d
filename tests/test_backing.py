# SPDX-License-Identifier: LGPL-2.1-or-later
"""Backing chains, read as QEMU reads them, checked against qemu-img.

Chains of depth 3 mixing raw, LUKS, plain qcow2 and qcow2-luks layers, each
encrypted layer with its own secret, written layer by layer with qemu-io;
pyqcrypt's reads and flattening convert must equal ``qemu-img convert`` of
the same chain.  A missing secret names the option; a missing backing file
is an error, never zeros; a shorter backing reads as zeros past its end;
writes go to the top only; overlays we create are byte-identical to
qemu-img's and read by qemu; ``info`` (and ``--backing-chain``) print what
qemu-img prints.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import pyqcrypt

from conftest import qemu_img, qemu_io, qemu_secret, write_file

PA, PB, PC = b"layer a pass", b"layer b pass", b"layer c pass"
SIZE = 4 << 20


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)], capture_output=True,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def _objects(workdir):
    return [qemu_secret(workdir, PA, "a"), qemu_secret(workdir, PB, "b"),
            qemu_secret(workdir, PC, "c")]


def _obj_args(workdir):
    out = []
    for o in _objects(workdir):
        out += ["--object", o]
    return out


def _chain(workdir, kind):
    """(top path, image-opts string for qemu and pyqcrypt, API kwargs).

    "raw-luks-luks": raw file <- qcow2-luks (a) <- qcow2-luks (b)
    "luks-plain-luks": LUKS volume (a) <- plain qcow2 <- qcow2-luks (c)"""
    def j(name):
        return os.path.join(workdir, name)
    objs = _objects(workdir)
    if kind == "raw-luks-luks":
        write_file(j("base.raw"), os.urandom(SIZE // 2) + bytes(SIZE // 2))
        qemu_img("create", "-q", "-f", "qcow2", "--object", objs[0], "-b", "base.raw", "-F", "raw",
                 "-o", "encrypt.format=luks,encrypt.key-secret=a,encrypt.iter-time=10", j("mid.qcow2"))
        qemu_io("driver=qcow2,file.filename=%s,encrypt.key-secret=a" % j("mid.qcow2"),
                "write -P 0x61 1M 100k", "write -P 0x62 3000k 1M", objects=objs)
        qemu_img("create", "-q", "-f", "qcow2", "--object", objs[1], "-b", "mid.qcow2", "-F",
                 "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10",
                 j("top.qcow2"))
        opts = ("driver=qcow2,file.filename=%s,encrypt.key-secret=b,"
                "backing.encrypt.key-secret=a" % j("top.qcow2"))
        qemu_io(opts, "write -P 0x63 1050k 8k", "write -P 0x64 0 512", objects=objs)
        return j("top.qcow2"), opts, dict(passphrase=PB, backing_passphrase=[PA, None])
    qemu_img("create", "-q", "-f", "luks", "--object", objs[0], "-o",
             "key-secret=a,iter-time=10", j("base.luks"), str(SIZE))
    qemu_io("driver=luks,file.filename=%s,key-secret=a" % j("base.luks"), "write -P 0x41 0 4M",
            objects=objs)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.luks", "-F", "luks", j("mid.qcow2"))
    qemu_io("driver=qcow2,file.filename=%s,backing.key-secret=a" % j("mid.qcow2"),
            "write -P 0x42 64k 64k", "write -z 2M 128k", objects=objs)
    qemu_img("create", "-q", "-f", "qcow2", "--object", objs[2], "-b", "mid.qcow2", "-F", "qcow2",
             "-o", "encrypt.format=luks,encrypt.key-secret=c,encrypt.iter-time=10", j("top.qcow2"))
    opts = ("driver=qcow2,file.filename=%s,encrypt.key-secret=c,backing.backing.key-secret=a"
            % j("top.qcow2"))
    qemu_io(opts, "write -P 0x43 100k 1k", objects=objs)
    return j("top.qcow2"), opts, dict(passphrase=PC, backing_passphrase=[None, PA])


def _qemu_flat(workdir, opts, name="flat.raw"):
    out = os.path.join(workdir, name)
    qemu_img("convert", *_obj_args(workdir), "--image-opts", opts, "-O", "raw", out)
    with open(out, "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("kind", ["raw-luks-luks", "luks-plain-luks"])
def test_depth_3_chains_read_as_qemu_reads_them(workdir, kind):
    top, opts, kw = _chain(workdir, kind)
    expected = _qemu_flat(workdir, opts)
    with pyqcrypt.open(top, **kw) as img:
        assert img.read(0, SIZE) == expected
        assert img.read(1050 << 10, 9000) == expected[1050 << 10:(1050 << 10) + 9000]
    # The same passphrase for every layer that needs one, as plain bytes.
    if kind == "luks-plain-luks":
        with pyqcrypt.open(top, passphrase=PC, backing_passphrase=PA) as img:
            assert img.read(0, SIZE) == expected
    # CLI: qemu-img's option spelling; convert flattens the chain.
    out = os.path.join(workdir, "ours.raw")
    proc = cli("convert", *_obj_args(workdir), "--image-opts", opts, "-O", "raw", out)
    assert proc.returncode == 0, proc.stderr.decode()
    assert open(out, "rb").read() == expected
    # Flatten into a new qcow2-luks image; qemu reads it alone.
    flat = os.path.join(workdir, "flat.qcow2")
    proc = cli("convert", *_obj_args(workdir), "--image-opts", opts, "-O", "qcow2", "-o",
               "encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10", "--verify", flat)
    assert proc.returncode == 0, proc.stderr.decode()
    assert _qemu_flat(workdir, "driver=qcow2,file.filename=%s,encrypt.key-secret=b" % flat,
                      "flat2.raw") == expected


def test_missing_secret_names_the_option(workdir):
    top, opts, _ = _chain(workdir, "luks-plain-luks")
    out = os.path.join(workdir, "x.raw")
    proc = cli("convert", *_obj_args(workdir), "--image-opts",
               opts.replace(",backing.backing.key-secret=a", ""), "-O", "raw", out)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "backing.backing.key-secret=ID" in err, err
    assert not os.path.exists(out)
    with pytest.raises(pyqcrypt.Error, match="backing_passphrase"):
        pyqcrypt.open(top, passphrase=PC)
    with pytest.raises(pyqcrypt.WrongPassphrase):
        pyqcrypt.open(top, passphrase=PC, backing_passphrase=[None, PB])


def test_missing_backing_file_is_an_error_never_zeros(workdir):
    top, opts, kw = _chain(workdir, "raw-luks-luks")
    os.rename(os.path.join(workdir, "base.raw"), os.path.join(workdir, "gone.raw"))
    with pytest.raises(pyqcrypt.Error, match="base.raw"):
        pyqcrypt.open(top, **kw)
    proc = cli("convert", *_obj_args(workdir), "--image-opts", opts, "-O", "raw",
               os.path.join(workdir, "x.raw"))
    assert proc.returncode == 1 and "base.raw" in proc.stderr.decode()
    assert not os.path.exists(os.path.join(workdir, "x.raw"))


def test_shorter_backing_reads_zeros_past_its_end(workdir):
    base = os.path.join(workdir, "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "1M")
    qemu_io("driver=qcow2,file.filename=" + base, "write -P 0x71 0 1M")
    top = os.path.join(workdir, "top.qcow2")
    assert cli("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top,
               "3M").returncode == 0
    expected = _qemu_flat(workdir, "driver=qcow2,file.filename=" + top)
    assert expected == b"\x71" * (1 << 20) + bytes(2 << 20)
    with pyqcrypt.open(top, writable=True) as img:
        assert img.read(0, 3 << 20) == expected
        img.write((1 << 20) - 10, b"\x72" * 20)          # across the backing's end
    assert _qemu_flat(workdir, "driver=qcow2,file.filename=" + top, "after.raw") == \
        b"\x71" * ((1 << 20) - 10) + b"\x72" * 20 + bytes((2 << 20) - 10)


def test_writes_go_to_the_top_only(workdir):
    top, opts, kw = _chain(workdir, "raw-luks-luks")
    lower = {n: hashlib.sha256(open(os.path.join(workdir, n), "rb").read()).hexdigest()
             for n in ("base.raw", "mid.qcow2")}
    before = _qemu_flat(workdir, opts, "before.raw")
    with pyqcrypt.open(top, writable=True, **kw) as img:
        img.write(1000, b"\x5a" * 3000)                  # partial cluster over lower data
        img.write(3100 << 10, b"\x5b" * 70000)           # over the mid layer's data
        img.write_zeroes(0, 512)                          # top data -> zeros
        img.discard(2 << 20, 64 << 10)                    # must not uncover lower layers
    expected = bytearray(before)
    expected[1000:4000] = b"\x5a" * 3000
    expected[3100 << 10:(3100 << 10) + 70000] = b"\x5b" * 70000
    expected[0:512] = bytes(512)
    expected[2 << 20:(2 << 20) + (64 << 10)] = bytes(64 << 10)
    assert _qemu_flat(workdir, opts, "after.raw") == bytes(expected)
    for n, digest in lower.items():
        assert hashlib.sha256(open(os.path.join(workdir, n), "rb").read()).hexdigest() == digest
    proc = qemu_img("check", *_obj_args(workdir), "--image-opts", opts, check=False)
    assert proc.returncode == 0, proc.stdout


def test_overlays_we_create_match_qemu_img(workdir):
    base = os.path.join(workdir, "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io("driver=qcow2,file.filename=" + base, "write -P 0x33 64k 1M")
    ours, theirs = os.path.join(workdir, "ours.qcow2"), os.path.join(workdir, "theirs.qcow2")
    assert cli("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
               ours).returncode == 0
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", theirs)
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    # An encrypted overlay of ours, read by qemu through the chain.
    enc = os.path.join(workdir, "enc.qcow2")
    proc = cli("create", "-q", "-f", "qcow2", "--object", qemu_secret(workdir, PB, "b"), "-b",
               base, "-F", "qcow2", "-o",
               "encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10", enc)
    assert proc.returncode == 0, proc.stderr.decode()
    with pyqcrypt.open(enc, passphrase=PB, writable=True) as img:
        img.write(1 << 20, b"\x44" * 4096)
    qemu_io("driver=qcow2,file.filename=%s,encrypt.key-secret=b" % enc, "read -P 0x33 64k 960k",
            "read -P 0x44 1M 4k", "read -P 0x33 1052k 12k", "read -P 0 2M 1M",
            objects=_objects(workdir))
    # Refusals as qemu-img's.
    assert "format" in cli("create", "-f", "qcow2", "-b", base, os.path.join(workdir, "n.qcow2"),
                           "1M").stderr.decode()
    assert "missing.qcow2" in cli("create", "-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2",
                                  os.path.join(workdir, "m.qcow2")).stderr.decode()


def test_info_and_backing_chain_equal_qemu_img(workdir):
    top, _, _ = _chain(workdir, "luks-plain-luks")
    sub = os.path.join(workdir, "sub")
    os.mkdir(sub)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "../mid.qcow2", "-F", "qcow2",
             os.path.join(sub, "o.qcow2"))
    for path, cwd in ((top, None), ("top.qcow2", workdir), ("sub/o.qcow2", workdir)):
        for out in ("human", "json"):
            for chain in ([], ["--backing-chain"]):
                ours = cli("info", "--output", out, *chain, path, cwd=cwd)
                theirs = subprocess.run(["qemu-img", "info", "--output=" + out, *chain, path],
                                        capture_output=True, cwd=cwd)
                assert ours.returncode == 0, ours.stderr.decode()
                assert ours.stdout == theirs.stdout, (path, out, chain)
    assert len(json.loads(cli("info", "--output", "json", "--backing-chain", top).stdout)) == 3


def test_keep_ciphertext_refuses_an_overlay_and_loops_are_errors(workdir):
    top, _, kw = _chain(workdir, "raw-luks-luks")
    proc = cli("convert", "--keep-ciphertext", "-O", "luks", top, os.path.join(workdir, "x.luks"))
    assert proc.returncode == 1 and "backing file" in proc.stderr.decode()
    loop = os.path.join(workdir, "loop.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "loop.qcow2", "-F", "qcow2", loop, "1M")
    with pytest.raises(pyqcrypt.Error, match="loop"):
        pyqcrypt.open(loop)
    shutil.copyfile(top, os.path.join(workdir, "copy.qcow2"))
