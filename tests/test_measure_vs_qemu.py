# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt measure`` against ``qemu-img measure``, byte for byte on
stdout and exit code.

The grid: sizes from 0 and 1 byte to 1 TiB and odd ones, cluster sizes
512 bytes to 2 MiB, refcount widths 1 to 64 bits, extended L2 entries,
LUKS-encrypted qcow2 and LUKS1 targets with different key lengths, the
error cases (both --size and a file, neither, bad sizes and options), and
sources: partly allocated qcow2 images (zero clusters, extended L2),
backing chains (an overlay longer than its backing), sparse and odd-sized
raw files, encrypted qcow2 and LUKS1 sources opened with --object and
--image-opts.  The library's figures over the large grid are compared to
qemu-img's stdout in-process; every CLI case runs both programs.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import cs_format, qemu_img, qemu_img_retrying, qemu_io, qemu_secret, tool

pytestmark = pytest.mark.interop

PW = b"measure-pw"
SIZES = ["0", "1", "511", "513", "1M", "1G", "1T", "12345678901", "3000000"]
CLUSTERS = [512 << i for i in range(13)]          # 512 .. 2 MiB
REFCOUNT_BITS = [1, 2, 4, 8, 16, 32, 64]


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", "measure"] + [str(a) for a in args],
                          capture_output=True)


def _both(*args):
    """(stdout, exit code) of qemu-img measure and of pyqcrypt measure."""
    tool("qemu-img")
    theirs = qemu_img_retrying(["measure"] + [str(a) for a in args])
    ours = _pyq(*args)
    assert ours.stderr.count(b"\n") <= 1 and b"Traceback" not in ours.stderr, ours.stderr
    return (theirs.stdout, theirs.returncode), (ours.stdout, ours.returncode)


def _same(*args, ok=True):
    theirs, ours = _both(*args)
    assert ours == theirs, args
    if ok is not None:
        assert (theirs[1] == 0) == ok, (args, theirs)
    return ours[0]


# ------------------------------------------------------------------ empty images (--size)

@pytest.mark.parametrize("cluster", CLUSTERS)
def test_qcow2_size_grid_library(cluster):
    """Every size, refcount width and L2 entry size for one cluster size:
    the library's text is qemu-img's stdout."""
    from pyqcrypt.cli.common import parse_size
    from pyqcrypt.measure import MeasureRequest, measure
    for n, size in enumerate(SIZES):
        for extended in (False, True) if cluster >= 16384 else (False,):
            bits = REFCOUNT_BITS[(n + extended) % len(REFCOUNT_BITS)]
            opts = "cluster_size=%d,refcount_bits=%d,extended_l2=%s" % (
                cluster, bits, "on" if extended else "off")
            proc = qemu_img("measure", "-O", "qcow2", "-o", opts, "--size", size, check=False)
            request = MeasureRequest("qcow2", parse_size(size))
            request.cluster_size, request.refcount_bits, request.extended_l2 = cluster, bits, extended
            try:
                text = measure(request).human().encode()
            except Exception as exc:            # qemu-img must refuse it too
                assert proc.returncode == 1, (opts, size, exc)
                continue
            assert (proc.returncode, proc.stdout) == (0, text), (opts, size)


@pytest.mark.parametrize("size", SIZES)
def test_size_cli(size):
    for fmt in ("raw", "qcow2"):
        _same("-O", fmt, "--size", size)
        _same("--output=json", "-O", fmt, "--size", size)


@pytest.mark.parametrize("opts", ["cluster_size=512,refcount_bits=1", "cluster_size=2M,refcount_bits=64",
                                  "cluster_size=16k,extended_l2=on", "compat=0.10",
                                  "preallocation=full", "preallocation=falloc",
                                  "preallocation=metadata", "lazy_refcounts=on",
                                  "cluster_size=4k,extended_l2=off,refcount_bits=8",
                                  "data_file=x.raw,data_file_raw=on", "cluster_size=2M,extended_l2=on",
                                  "compat=1.1,refcount_bits=2", "encryption=on"])
def test_qcow2_options_cli(opts):
    for size in ("1", "1G", "1T"):       # 1T with 512-byte clusters: too large for both
        _same("-O", "qcow2", "-o", opts, "--size", size, ok=None)


@pytest.mark.parametrize("cipher", [(), ("cipher-alg=aes-128",), ("cipher-alg=aes-128", "cipher-mode=cbc",
                                                                   "ivgen-alg=essiv",
                                                                   "ivgen-hash-alg=sha256")])
def test_encrypted_targets(workdir, cipher):
    obj = qemu_secret(workdir, PW, "s0")
    luks = ",".join(("key-secret=s0", "iter-time=10") + cipher)
    qcow = ",".join(("encrypt.format=luks", "encrypt.key-secret=s0", "encrypt.iter-time=10")
                    + tuple("encrypt." + c for c in cipher))
    for size in ("0", "1", "1M", "1001"):
        _same("--object", obj, "-O", "luks", "-o", luks, "--size", size)
    for cluster in ("512", "64k", "2M"):
        _same("--object", obj, "-O", "qcow2", "-o", qcow + ",cluster_size=" + cluster,
              "--output=json", "--size", "1G")


@pytest.mark.parametrize("args", [
    ("--size", "1M", "some.img"),                          # both
    (),                                                     # neither
    ("--size", "-1"), ("--size", "1x"), ("--size", "8E"), ("--size", ""),
    ("-O", "qcow2", "-o", "cluster_size=3k", "--size", "1M"),
    ("-O", "qcow2", "-o", "cluster_size=256", "--size", "1M"),
    ("-O", "qcow2", "-o", "cluster_size=4M", "--size", "1M"),
    ("-O", "qcow2", "-o", "refcount_bits=3", "--size", "1M"),
    ("-O", "qcow2", "-o", "refcount_bits=128", "--size", "1M"),
    ("-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1M"),
    ("-O", "qcow2", "-o", "cluster_size=1k,extended_l2=on", "--size", "1M"),
    ("-O", "qcow2", "-o", "preallocation=bogus", "--size", "1M"),
    ("-O", "qcow2", "-o", "no_such_option=1", "--size", "1M"),
    ("-O", "qcow2", "--size", "1E"),
    ("-O", "qcow2", "-o", "cluster_size=512", "--size", "1P"),
    ("-O", "luks", "--size", "1M"),                        # no key-secret
    ("-O", "qcow2", "-o", "encrypt.format=luks", "--size", "1M"),
    ("-O", "nosuchformat", "--size", "1M"),
    ("no-such-file.img",),
])
def test_errors(args):
    theirs, ours = _both(*args)
    assert theirs[1] == 1 and ours == theirs, args
    assert ours[0] == b""


def test_snapshot_refused_with_reason(workdir):
    img = os.path.join(workdir, "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    proc = _pyq("-l", "snap1", img)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.count(b"\n") == 1 and b"snapshot" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ from a source image

def _targets():
    """-O/-o variants a source is measured for."""
    return [("-O", "raw"), ("-O", "qcow2"), ("-O", "qcow2", "-o", "cluster_size=4k"),
            ("-O", "qcow2", "-o", "cluster_size=512,refcount_bits=64"),
            ("-O", "qcow2", "-o", "cluster_size=2M"),
            ("-O", "qcow2", "-o", "cluster_size=32k,extended_l2=on"),
            ("-O", "qcow2", "-o", "compat=0.10"), ("-O", "qcow2", "-o", "preallocation=full"),
            ("--output=json", "-O", "qcow2")]


def _compare_source(source, *extra):
    for target in _targets():
        _same(*(extra + target + (source,)))


def test_partly_allocated_qcow2(workdir):
    img = os.path.join(workdir, "p.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=16k", img, "10M")
    qemu_io(img, "write -P 1 0 100k", "write -P 2 5M 1k", "write -z 6M 64k",
            "write -P 3 9437184 4097", fmt="qcow2")
    _compare_source(img)
    _same("-O", "qcow2", "-o", "backing_file=" + img, img)       # assumes nothing shared


def test_extended_l2_source(workdir):
    img = os.path.join(workdir, "x.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", img, "4M")
    qemu_io(img, "write -P 1 2048 2048", "write -P 2 3M 70k", fmt="qcow2")
    _compare_source(img)


def test_backing_chain(workdir):
    base = os.path.join(workdir, "base.qcow2")
    top = os.path.join(workdir, "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 1 0 1M", "write -P 2 3M 64k", fmt="qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "8M")
    qemu_io(top, "write -P 3 2M 64k", "write -z 0 64k", "write -P 4 7M 1k", fmt="qcow2")
    _compare_source(top)


def test_raw_sources(workdir):
    sparse = os.path.join(workdir, "s.raw")
    with open(sparse, "wb") as fh:
        fh.truncate(3 << 20)
    qemu_io(sparse, "write -P 7 0 1M", "write -P 9 2M 100k", fmt="raw")
    _compare_source(sparse)
    odd = os.path.join(workdir, "odd.raw")
    with open(odd, "wb") as fh:
        fh.write(b"\x01" * 1000)
    _compare_source(odd)
    empty = os.path.join(workdir, "empty.raw")
    open(empty, "wb").close()
    _compare_source(empty)


def test_encrypted_sources(workdir):
    obj = qemu_secret(workdir, PW, "s0")
    qc = os.path.join(workdir, "e.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "--object", obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", qc, "2M")
    qemu_io("driver=qcow2,file.filename=%s,encrypt.key-secret=s0" % qc, "write -P 5 64k 64k",
            objects=[obj])
    _compare_source("driver=qcow2,file.filename=%s,encrypt.key-secret=s0" % qc,
                    "--object", obj, "--image-opts")
    vol = os.path.join(workdir, "v.luks")
    qemu_img("create", "-q", "-f", "luks", "--object", obj, "-o", "key-secret=s0,iter-time=10",
             vol, "1M")
    opts = "driver=luks,file.filename=%s,key-secret=s0" % vol
    _compare_source(opts, "--object", obj, "--image-opts")
    _same("--object", obj, "--image-opts", "-O", "luks", "-o", "key-secret=s0,iter-time=10", opts)


def test_luks2_source_counts_every_byte(workdir):
    """QEMU 7.2 cannot open LUKS2: its payload (all encrypted) measures as
    a fully allocated image of the payload's size."""
    vol = cs_format(workdir, "v2.luks", PW, extra=("--type", "luks2", "--pbkdf", "pbkdf2"),
                    size=24 << 20)
    obj = qemu_secret(workdir, PW, "s0")
    ours = _pyq("--object", obj, "--image-opts", "-O", "qcow2", "--output=json",
                "driver=luks,file.filename=%s,key-secret=s0" % vol)
    assert ours.returncode == 0, ours.stderr
    payload = (24 << 20) - (16 << 20)
    theirs = qemu_img("measure", "-O", "qcow2", "-o", "preallocation=full", "--output=json",
                      "--size", str(payload))
    assert ours.stdout == theirs.stdout


def test_luks2_target_is_what_create_makes(workdir):
    obj = qemu_secret(workdir, PW, "s0")
    for size, sector in ((1, 0), (3 << 20, 0), (5000, 4096)):
        opts = "key-secret=s0,pbkdf=pbkdf2,pbkdf-force-iterations=1000"
        if sector:
            opts += ",sector-size=%d" % sector
        proc = _pyq("--object", obj, "-O", "luks2", "-o", opts, "--output=json", "--size", size)
        assert proc.returncode == 0, proc.stderr
        want = json.loads(proc.stdout)
        vol = os.path.join(workdir, "c%d.luks2" % size)
        made = subprocess.run([sys.executable, "-m", "pyqcrypt", "create", "-q", "-f", "luks2",
                               "--object", obj, "-o", opts, vol, str(size)], capture_output=True)
        assert made.returncode == 0, made.stderr
        assert want == {"required": os.path.getsize(vol), "fully-allocated": os.path.getsize(vol)}


# ------------------------------------------------------------------ sizing a target with it

def test_measured_size_is_enough_for_convert_n(workdir):
    """Measure, make a file of exactly the required size, convert -n into
    it and read every byte back with qemu-img compare."""
    src = os.path.join(workdir, "src.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", src, "3M")
    qemu_io(src, "write -P 11 0 1M", "write -P 12 2M 100k", fmt="qcow2")
    proc = _pyq("--output=json", "-O", "raw", src)
    assert proc.returncode == 0, proc.stderr
    required = json.loads(proc.stdout)["required"]
    dst = os.path.join(workdir, "dst.raw")
    with open(dst, "wb") as fh:
        fh.truncate(required)
    done = subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "-n", "-O", "raw", src, dst],
                          capture_output=True)
    assert done.returncode == 0, done.stderr
    assert os.path.getsize(dst) == required
    qemu_img("compare", "-f", "qcow2", "-F", "raw", src, dst)
    # a qcow2 copy never outgrows the figure measure gives for it
    proc = _pyq("--output=json", "-O", "qcow2", src)
    copy = os.path.join(workdir, "copy.qcow2")
    done = subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "-O", "qcow2", src, copy],
                          capture_output=True)
    assert done.returncode == 0, done.stderr
    assert os.path.getsize(copy) <= json.loads(proc.stdout)["required"]
    qemu_img("compare", src, copy)


def test_luks_figure_is_the_size_qemu_img_creates(workdir):
    obj = qemu_secret(workdir, PW, "s0")
    for size in (1, 1 << 20, 3000):
        proc = _pyq("--object", obj, "-O", "luks", "-o", "key-secret=s0", "--output=json",
                    "--size", size)
        assert proc.returncode == 0, proc.stderr
        vol = os.path.join(workdir, "q%d.luks" % size)
        qemu_img("create", "-q", "-f", "luks", "--object", obj, "-o", "key-secret=s0,iter-time=10",
                 vol, str(size))
        assert json.loads(proc.stdout)["required"] == os.path.getsize(vol)


def test_persistent_bitmaps_are_counted(workdir):
    img = os.path.join(workdir, "bm.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "5M")
    qemu_io(img, "write -P 1 1M 64k", fmt="qcow2")
    for granularity, name in (("64k", "b0"), ("512", "a-longer-bitmap-name"), ("2M", "b2")):
        qemu_img("bitmap", "--add", "-g", granularity, img, name)
        _compare_source(img)
