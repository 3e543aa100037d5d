# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt map`` against ``qemu-img map`` on the same images: stdout
(the human table and the JSON list) and the exit status byte for byte,
and the error of an image the table cannot show (compressed, encrypted:
no host offset) in the same words.  Images are made by qemu-img/qemu-io
(writes, zero writes, discards, compression, chains, data files, extended
L2, LUKS) in the test's scratch directory, named relative to it as a
script would name them."""

import os
import subprocess
import sys

import pytest

from conftest import cs_format, qemu_img, qemu_io, qemu_secret, tool, write_file

pytestmark = pytest.mark.interop

PW = b"map passphrase"


def _run(cmd, args):
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True)


def same_map(*args, outputs=("human", "json")):
    """Both tools, each output format: the same stdout and exit status;
    the table's refusal in the same words.  Returns
    qemu-img's run of the first format."""
    first = None
    for out in outputs:
        theirs = _run([tool("qemu-img"), "map", "--output=" + out], args)
        ours = _run([sys.executable, "-m", "pyqcrypt", "map", "--output=" + out], args)
        assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), \
            (out, args, theirs.stderr, ours.stderr)
        if "File contains" in theirs.stderr:       # the table's own refusal
            assert ours.stderr.replace("pyqcrypt: ", "qemu-img: ") == theirs.stderr
        first = first or theirs
    return first


def test_empty_qcow2():
    qemu_img("create", "-f", "qcow2", "e.qcow2", "4M")
    same_map("e.qcow2")
    same_map("--start-offset", "5M", "e.qcow2")        # past the end: one empty entry


def _written(name="w.qcow2", *opts):
    qemu_img("create", "-f", "qcow2", *opts, name, "8M")
    qemu_io(name, "write -P 1 0 64k", "write -P 2 1M 200k", "write -z 2M 128k",
            "write -P 3 3M 64k", "discard 3M 64k", "write -P 4 4M 64k", "write -z 4M 64k",
            "write -P 5 6M 64k", "write -P 6 5M 64k", "write -P 7 960k 64k", fmt="qcow2")
    return name


def test_written_zeroed_discarded_qcow2():
    same_map(_written())


@pytest.mark.parametrize("start,length", [("0", "1"), ("1000", "1100000"), ("1M", "64k"),
                                          ("4M", None), ("3100000", "2M"), ("8M", None)])
def test_start_offset_and_max_length(start, length):
    name = _written()
    args = ["--start-offset", start] + (["--max-length", length] if length else [])
    same_map(*args, name)


def test_compressed_clusters_have_no_offset():
    name = _written()
    qemu_img("convert", "-c", "-O", "qcow2", name, "c.qcow2")
    proc = same_map("c.qcow2")
    assert proc.returncode == 1 and "compressed clusters" in proc.stderr


def test_backing_chain_of_three():
    _written("base.qcow2")
    os.mkdir("sub")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2", "10M")
    qemu_io("mid.qcow2", "write -P 7 1M 64k", "write -z 0 32k", "write -z 3M 64k", fmt="qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "../mid.qcow2", "-F", "qcow2", "sub/top.qcow2", "12M")
    qemu_io("sub/top.qcow2", "write -P 8 5M 64k", "discard 1M 64k", fmt="qcow2")
    same_map("sub/top.qcow2")
    same_map(os.path.abspath("sub/top.qcow2"))
    same_map("--start-offset", "9M", "sub/top.qcow2")


@pytest.mark.parametrize("raw", ["off", "on"])
def test_data_file(raw):
    os.mkdir("d")
    qemu_img("create", "-f", "qcow2", "-o", "data_file=d/x.raw,data_file_raw=" + raw, "df.qcow2", "4M")
    qemu_io("df.qcow2", "write -P 1 64k 128k", "write -z 1M 64k", fmt="qcow2")
    same_map("df.qcow2")


def test_extended_l2_subclusters():
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on", "x.qcow2", "4M")
    qemu_io("x.qcow2", "write -P 1 2k 2k", "write -P 2 8k 4k", "write -z 64k 6k",
            "write -P 3 128k 64k", "write -z 130k 2k", "discard 128k 64k", "write -P 4 1M 70k",
            fmt="qcow2")
    same_map("x.qcow2")
    _written("b.qcow2")
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on", "-b", "b.qcow2", "-F", "qcow2",
             "xo.qcow2", "8M")
    qemu_io("xo.qcow2", "write -P 5 1M 2k", "write -z 1100k 2k", "write -P 6 4M 6k", fmt="qcow2")
    same_map("xo.qcow2")


def test_qcow2_luks_with_secret(workdir):
    obj = qemu_secret(workdir, PW)
    qemu_img("create", "-f", "qcow2", "--object", obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", "q.qcow2", "4M")
    opts = "driver=qcow2,file.filename=q.qcow2,encrypt.key-secret=sec0"
    qemu_io(opts, "write -P 1 64k 64k", "write -z 1M 64k", objects=[obj])
    proc = same_map("--object", obj, "--image-opts", opts)
    assert proc.returncode == 1 and "encrypted" in proc.stderr
    same_map("--object", obj, "--start-offset", "1000", "--max-length", "70000", "--image-opts", opts)
    assert same_map("q.qcow2").returncode == 1         # no secret: neither opens it


def test_raw_with_holes():
    with open("r.raw", "wb") as fh:
        fh.truncate(4 << 20)
        fh.seek(3 << 16)
        fh.write(os.urandom(2 << 16))
        fh.seek((4 << 20) - 1024)
        fh.write(b"\1" * 1024)
    same_map("r.raw")
    same_map("-f", "raw", "--start-offset", "100", "--max-length", "300000", "r.raw")
    write_file("odd.raw", bytes(4096) + b"x" * 907)     # not whole sectors: QEMU rounds up
    with open("odd.raw", "r+b") as fh:
        fh.truncate(5003)
    same_map("odd.raw")


def test_luks1_volume(workdir):
    obj = qemu_secret(workdir, PW)
    cs_format(os.getcwd(), "v.luks", PW)
    opts = "driver=luks,file.filename=v.luks,key-secret=sec0"
    proc = same_map("--object", obj, "--image-opts", opts)
    assert proc.returncode == 1 and "encrypted" in proc.stderr
    same_map("--object", obj, "--start-offset", "1M", "--max-length", "5", "--image-opts", opts,
             outputs=("json",))


def test_luks2_volume_is_data_without_offset(workdir):
    """qemu-img 7.2's luks driver reads LUKS1 only: the LUKS2 answer is the
    one its driver gives LUKS1 payloads (one data entry, no offset)."""
    obj = qemu_secret(workdir, PW)
    vol = cs_format(os.getcwd(), "v2.luks", PW, size=24 << 20,
                    extra=("--type", "luks2", "--pbkdf", "pbkdf2"))
    proc = _run([sys.executable, "-m", "pyqcrypt", "map", "--output=json", "--object", obj,
                 "--image-opts"], ["driver=luks,file.filename=%s,key-secret=sec0" % vol])
    assert proc.returncode == 0, proc.stderr
    payload = os.path.getsize(vol) - (16 << 20)           # cryptsetup's default LUKS2 header
    assert proc.stdout == ('[{ "start": 0, "length": %d, "depth": 0, "present": true, '
                           '"zero": false, "data": true}]\n' % payload), proc.stdout


def test_keep_ciphertext_pair_maps_as_qemu_maps_it(workdir):
    """A pyqcrypt-made qcow2-luks image with a raw data file."""
    obj = qemu_secret(workdir, PW)
    cs_format(os.getcwd(), "k.luks", PW)
    proc = _run([sys.executable, "-m", "pyqcrypt", "convert", "--keep-ciphertext", "-O", "qcow2",
                 "-o", "data_file=k.data,data_file_raw=on"], ["k.luks", "k.qcow2"])
    assert proc.returncode == 0, proc.stderr
    same_map("--object", obj, "--image-opts",
             "driver=qcow2,file.filename=k.qcow2,encrypt.key-secret=sec0", outputs=("json",))


def test_invalid_subcluster_bitmap_is_one_line_error():
    """A bitmap saying "allocated" and "zero" for one subcluster: both
    tools stop with an error (map 1, compare 3 as qemu-img's "Sector
    allocation test failed"), never a traceback."""
    import struct
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on", "h.qcow2", "1M")
    qemu_io("h.qcow2", "write -P 1 0 4k", fmt="qcow2")
    with open("h.qcow2", "r+b") as fh:
        fh.seek(40)
        l1 = struct.unpack(">Q", fh.read(8))[0]
        fh.seek(l1)
        l2 = struct.unpack(">Q", fh.read(8))[0] & 0x00FFFFFFFFFFFE00
        fh.seek(l2 + 8)
        fh.write(struct.pack(">Q", (1 << 32) | 1))
    same_map("h.qcow2")
    write_file("z.raw", bytes(1 << 20))
    for cmd in ([tool("qemu-img")], [sys.executable, "-m", "pyqcrypt"]):
        proc = _run(cmd + ["compare"], ["h.qcow2", "z.raw"])
        assert proc.returncode == 3 and "Sector allocation test failed for h.qcow2" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("data_file", [False, True])
def test_metadata_preallocation_reports_file_holes_as_zeros(data_file):
    """preallocation=metadata maps every cluster to a hole of the file:
    qemu-img guesses so from the refcounts and asks the file for holes."""
    opts = "preallocation=metadata" + (",data_file=pm.data" if data_file else "")
    qemu_img("create", "-f", "qcow2", "-o", opts, "pm.qcow2", "4M")
    qemu_io("pm.qcow2", "write -P 1 64k 64k", "write -P 2 1M 4k", "write -z 2M 64k", fmt="qcow2")
    same_map("pm.qcow2")
    qemu_img("convert", "-O", "raw", "pm.qcow2", "pm.raw")
    for strict in ((), ("-s",)):
        theirs = _run([tool("qemu-img"), "compare", *strict], ["pm.qcow2", "pm.raw"])
        ours = _run([sys.executable, "-m", "pyqcrypt", "compare", *strict], ["pm.qcow2", "pm.raw"])
        assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode)
