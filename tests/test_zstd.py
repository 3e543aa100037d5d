# SPDX-License-Identifier: LGPL-2.1-or-later
"""zstd-compressed qcow2 images (``compression_type=zstd``) from qemu-img 7.2.

Images made by ``qemu-img convert -c -o compression_type=zstd`` read back
through pyqcrypt byte for byte at every cluster size, convert to raw and to
qcow2-luks (read back by qemu), take writes into their compressed clusters
(read back by qemu-io, ``qemu-img check`` clean), and ``info`` matches
qemu-img.  Hostile compressed data and headers give a FormatError, never
another exception; a build without libzstd names the package to install.
"""

import json
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyqcrypt
from pyqcrypt import _native
from pyqcrypt.errors import FormatError, MissingDependency

from conftest import qemu_img, qemu_io, qemu_secret, write_file

pytestmark = pytest.mark.interop

if not _native.have_zstd():   # pragma: no cover - ci/setup installs libzstd-dev
    pytest.skip("pyqcrypt was built without libzstd (Debian package libzstd-dev)",
                allow_module_level=True)

MiB = 1 << 20
PW = b"zstd to luks"


def _payload(size):
    """Random, repetitive and zero stretches: clusters qemu stores compressed,
    ones it keeps uncompressed (incompressible), and unallocated ones."""
    out = bytearray(size)
    step = 96 << 10
    for i, off in enumerate(range(0, size, step)):
        n = min(step, size - off)
        kind = i % 4
        if kind == 0:
            out[off:off + n] = os.urandom(n)
        elif kind == 1:
            out[off:off + n] = (b"pyqcrypt zstd %d " % i * (n // 16 + 1))[:n]
        elif kind == 2:
            out[off:off + n // 3] = os.urandom(n // 3)
    return bytes(out)


def _zstd_image(workdir, cluster_size, size=5 * MiB + 4096, name="z.qcow2"):
    data = _payload(size)
    src = write_file(os.path.join(workdir, "src-%d.raw" % cluster_size), data)
    path = os.path.join(workdir, name)
    qemu_img("convert", "-c", "-O", "qcow2", "-o",
             "compression_type=zstd,cluster_size=%d" % cluster_size, src, path)
    return path, data


def _compressed_entries(path):
    """(guest cluster, L2 entry) for every compressed cluster, read with
    struct so the test does not trust pyqcrypt's own parser."""
    with open(path, "rb") as fh:
        hdr = fh.read(112)
        cbits = struct.unpack(">I", hdr[20:24])[0]
        l1_size, l1_off = struct.unpack(">IQ", hdr[36:48])
        cs = 1 << cbits
        fh.seek(l1_off)
        l1 = struct.unpack(">%dQ" % l1_size, fh.read(8 * l1_size))
        found = []
        for i, l1e in enumerate(l1):
            l2_off = l1e & 0x00FFFFFFFFFFFE00
            if not l2_off:
                continue
            fh.seek(l2_off)
            l2 = struct.unpack(">%dQ" % (cs // 8), fh.read(cs))
            for j, e in enumerate(l2):
                if e & (1 << 62):
                    found.append((i * (cs // 8) + j, e, cbits))
    return found


@pytest.mark.parametrize("cs", [4096, 65536, 2 * MiB])
def test_qemu_zstd_image_reads_back(workdir, cs):
    path, data = _zstd_image(workdir, cs)
    assert _compressed_entries(path), "qemu-img stored nothing compressed"
    with pyqcrypt.open(path) as img:
        assert img.read(0, img.size) == data
        for off, n in [(1, 4095), (cs - 7, 300), (3 * MiB + 11, cs + 1000), (len(data) - 5, 5)]:
            n = min(n, len(data) - off)
            assert img.read(off, n) == data[off:off + n], (off, n)
    out = os.path.join(workdir, "out.raw")
    subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "-O", "raw", path, out], check=True)
    assert open(out, "rb").read() == data


def test_info_matches_qemu_img(workdir):
    path, _ = _zstd_image(workdir, 65536)
    for extra in ([], ["--output=json"]):
        ours = subprocess.run([sys.executable, "-m", "pyqcrypt", "info"] + extra + [path],
                              capture_output=True, text=True, check=True).stdout
        theirs = qemu_img("info", *extra, path).stdout.decode()
        if extra:
            ours, theirs = json.loads(ours), json.loads(theirs)
            assert ours["format-specific"]["data"]["compression-type"] == "zstd"
        assert ours == theirs


def test_zstd_disk_to_qcow2_luks_read_by_qemu(workdir):
    """The everyday job: encrypt an existing zstd-compressed VM disk."""
    path, data = _zstd_image(workdir, 65536)
    enc = os.path.join(workdir, "enc.qcow2")
    obj = qemu_secret(workdir, PW)
    subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "--object", obj, "-O", "qcow2",
                    "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
                    path, enc], check=True)
    out = os.path.join(workdir, "dec.raw")
    qemu_img("convert", "--object", obj, "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % enc, "-O", "raw", out)
    assert open(out, "rb").read() == data


@pytest.mark.parametrize("cs", [4096, 65536])
def test_writes_into_compressed_clusters(workdir, cs):
    path, data = _zstd_image(workdir, cs)
    gcl = _compressed_entries(path)[1][0]
    model = bytearray(data)
    writes = [(gcl * cs - 50, b"\x6b" * (cs + 100)),       # across it and its neighbours
              ((gcl + 4) * cs + 100, b"\x5a" * 200),      # inside one cluster
              (len(data) - 3000, b"\x7c" * 3000)]
    with pyqcrypt.open(path, writable=True) as img:
        for off, buf in writes:
            img.write(off, buf)
            model[off:off + len(buf)] = buf
    chk = qemu_img("check", "--output=json", path, check=False)
    report = json.loads(chk.stdout)
    assert report.get("corruptions", 0) == 0, report
    qemu_io(path, *["read -P 0x%02x %d %d" % (buf[0], off, len(buf)) for off, buf in writes],
            fmt="qcow2")
    out = os.path.join(workdir, "w.raw")
    qemu_img("convert", "-O", "raw", path, out)
    assert open(out, "rb").read() == bytes(model)


# ---- hostile input ------------------------------------------------------------------------

def _cli_error(path):
    proc = subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "-O", "raw", path,
                           os.path.join(os.path.dirname(path), "never.raw")],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(os.path.dirname(path), "never.raw"))
    return proc.stderr


def test_corrupt_zstd_cluster_is_named(workdir):
    path, _ = _zstd_image(workdir, 65536)
    gcl, entry, cbits = _compressed_entries(path)[0]
    x = 62 - (cbits - 8)
    off = entry & ((1 << x) - 1)
    with open(path, "r+b") as fh:
        fh.seek(off + 4)              # past the frame magic: inside the frame header/blocks
        fh.write(b"\xff" * 16)
    with pyqcrypt.open(path) as img:
        with pytest.raises(FormatError, match="guest cluster %d" % gcl):
            img.read(gcl * 65536, 65536)
    assert "guest cluster %d" % gcl in _cli_error(path)


def _set_header(path, compression_type=None, incompat=None):
    with open(path, "r+b") as fh:
        if compression_type is not None:
            fh.seek(104)
            fh.write(bytes([compression_type]))
        if incompat is not None:
            fh.seek(72)
            fh.write(struct.pack(">Q", incompat))


@pytest.mark.parametrize("ctype,incompat,match", [
    (2, 1 << 3, "unknown compression type 2"),
    (1, 0, "feature bit clear"),
    (0, 1 << 3, "zlib must not set it"),
])
def test_hostile_compression_headers(workdir, ctype, incompat, match):
    path, _ = _zstd_image(workdir, 65536)
    _set_header(path, ctype, incompat)
    with pytest.raises(FormatError, match=match):
        pyqcrypt.open(path)
    assert match in _cli_error(path)


_MUTATED = {}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_zstd_cluster_decodes_or_is_refused(tmp_path_factory, data):
    """Any change to a compressed cluster's bytes (or its sector count)
    decodes to exactly one cluster or is a FormatError: no other exception,
    no hang, no out-of-bounds write."""
    if not _MUTATED:
        wd = str(tmp_path_factory.mktemp("zstd-fuzz"))
        path, _ = _zstd_image(wd, 4096, size=256 << 10)
        gcl, entry, cbits = _compressed_entries(path)[0]
        _MUTATED.update(path=path, gcl=gcl, entry=entry, cbits=cbits,
                        image=open(path, "rb").read())
    m = _MUTATED
    image = bytearray(m["image"])
    x = 62 - (m["cbits"] - 8)
    off = m["entry"] & ((1 << x) - 1)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = off + data.draw(st.integers(0, 600))
        image[pos] = data.draw(st.integers(0, 255))
    work = m["path"] + ".mut"
    write_file(work, bytes(image))
    with pyqcrypt.open(work) as img:
        try:
            out = img.read(m["gcl"] * 4096, 4096)
        except FormatError as exc:
            assert "guest cluster %d" % m["gcl"] in str(exc)
        else:
            assert len(out) == 4096


def test_missing_libzstd_names_the_package(workdir, monkeypatch):
    path, _ = _zstd_image(workdir, 65536)
    monkeypatch.delitem(_native._MODULES, "zstd", raising=False)
    monkeypatch.setitem(sys.modules, "pyqcrypt._zstd_native", None)   # import now fails
    monkeypatch.delattr(pyqcrypt, "_zstd_native", raising=False)
    with pytest.raises(MissingDependency, match="libzstd-dev"):
        pyqcrypt.open(path)
