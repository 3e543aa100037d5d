# SPDX-License-Identifier: LGPL-2.1-or-later
"""Random sequences of writes, zero-writes and discards: ours against QEMU's.

Hypothesis draws a sequence of operations; it runs through pyqcrypt's API
on one copy of a qemu-img-made image and through qemu-io (``write -P``,
``write -z [-u]``, ``discard``) on another.  ``qemu-img compare`` must call
the two identical, ``qemu-img check`` must find our copy clean (no
corruption, no leaks), and our own reads must equal a byte model of the
sequence.  Plain qcow2 and qcow2-luks, 4 KiB and 64 KiB clusters; sizes and
the seed are fixed so a failure replays.
"""

import os
import shutil
import zlib

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import pyqcrypt

from conftest import qemu_img, qemu_io, qemu_secret, scratch_dir

PW = b"sequence pass"
SIZE = 4 << 20

IMAGES = {}          # kind -> base image made once per worker


def _base(kind):
    if kind in IMAGES:
        return IMAGES[kind]
    d = scratch_dir("pyqcrypt-seq-")
    path = os.path.join(d, "base.qcow2")
    cs = "4k" if kind.endswith("4k") else "64k"
    args = ["create", "-q", "-f", "qcow2", "-o", "cluster_size=" + cs]
    if kind.startswith("luks"):
        args = ["create", "-q", "-f", "qcow2", "--object", qemu_secret(d, PW, "s"), "-o",
                "cluster_size=%s,encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10" % cs]
    qemu_img(*args, path, str(SIZE))
    # Some data to begin with, so zeroing and discarding free real clusters.
    qemu_io(_opts(path, kind), "write -P 0x11 0 1M", "write -P 0x22 2M 512k",
            objects=_objects(d, kind))
    IMAGES[kind] = (d, path)
    return IMAGES[kind]


@pytest.fixture(scope="module", autouse=True)
def _remove_base_images():
    """The base images are shared by a worker's examples; removed at the end
    (xdist workers do not run atexit handlers)."""
    yield
    for d, _ in IMAGES.values():
        shutil.rmtree(d, ignore_errors=True)
    IMAGES.clear()


def _opts(path, kind):
    if kind.startswith("luks"):
        return "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path
    return "driver=qcow2,file.filename=%s" % path


def _objects(d, kind):
    return [qemu_secret(d, PW, "s")] if kind.startswith("luks") else []


def _ops(cluster):
    off = st.integers(0, SIZE - 1)
    write = st.tuples(st.just("write"), off, st.integers(1, 300000), st.integers(1, 255))
    zero = st.tuples(st.just("zero"), off, st.integers(1, 600000), st.booleans())
    whole = st.integers(0, SIZE // cluster - 1).map(lambda c: c * cluster)
    discard = st.tuples(st.just("discard"), whole, st.integers(1, 40).map(lambda n: n * cluster))
    return st.lists(st.one_of(write, zero, discard), min_size=1, max_size=10)


def _clip(off, n):
    return off, max(0, min(n, SIZE - off))


def _run(kind, ops, tag):
    base_dir, base = _base(kind)
    d = scratch_dir("pyqcrypt-seq-case-")
    try:
        ours, theirs = os.path.join(d, "ours.qcow2"), os.path.join(d, "theirs.qcow2")
        shutil.copyfile(base, ours)
        shutil.copyfile(base, theirs)
        with pyqcrypt.open(base, passphrase=PW, force_share=True) as img:
            model = bytearray(img.read(0, SIZE))
        cmds = []
        with pyqcrypt.open(ours, passphrase=PW, writable=True) as img:
            for op in ops:
                off, n = _clip(op[1], op[2])
                if n == 0:
                    continue
                if op[0] == "write":
                    img.write(off, bytes([op[3]]) * n)
                    model[off:off + n] = bytes([op[3]]) * n
                    cmds.append("write -P %d %d %d" % (op[3], off, n))
                elif op[0] == "zero":
                    img.write_zeroes(off, n, unmap=op[3])
                    model[off:off + n] = bytes(n)
                    cmds.append("write -z %s%d %d" % ("-u " if op[3] else "", off, n))
                else:
                    img.discard(off, n)
                    model[off:off + n] = bytes(n)           # v3, no backing: zeros
                    cmds.append("discard %d %d" % (off, n))
            img.flush()
            assert img.read(0, SIZE) == bytes(model), "our reads differ from the model (%s)" % tag
        if cmds:
            qemu_io(_opts(theirs, kind), *cmds, objects=_objects(base_dir, kind))
        objs = ["--object", qemu_secret(d, PW, "s")] if kind.startswith("luks") else []
        proc = qemu_img("compare", *objs, "--image-opts", _opts(ours, kind), _opts(theirs, kind),
                        check=False)
        assert proc.returncode == 0, (tag, ops, proc.stdout, proc.stderr)
        proc = qemu_img("check", *objs, "--image-opts", _opts(ours, kind), check=False)
        assert proc.returncode == 0, (tag, ops, proc.stdout, proc.stderr)
    finally:
        shutil.rmtree(d, ignore_errors=True)


COUNTS = {"plain-4k": 30, "plain-64k": 25, "luks-64k": 20}


@pytest.mark.parametrize("kind", sorted(COUNTS))
def test_random_sequences_match_qemu(kind):
    cluster = 4096 if kind.endswith("4k") else 65536
    runs = []

    @seed(zlib.crc32(("test_write_sequences::" + kind).encode()))
    @settings(max_examples=COUNTS[kind], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_ops(cluster))
    def check(ops):
        runs.append(len(ops))
        _run(kind, ops, kind)

    check()
    print("%s: %d sequences, %d operations" % (kind, len(runs), sum(runs)))
