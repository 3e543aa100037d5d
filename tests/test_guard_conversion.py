# SPDX-License-Identifier: LGPL-2.1-or-later
"""Tests for conversion mutants ci/mutate.py found surviving (issue 21):
each pins a behaviour of a conversion path no other test reached.

- ``-p`` draws what qemu-img draws (0.00 first, the final figure twice),
  also for an empty image;
- the byte comparison behind ``--verify`` finds a difference in the first
  byte of a chunk, of a 4 KiB step, and in the last byte;
- a keep-ciphertext source qcow2-luks that QEMU is writing is refused;
- pipelined copies (block devices) at a non-zero source offset, over more
  than one chunk, and from a data file that begins with a hole;
- a LUKS1 payload that is not a whole number of sectors;
- the zero-run refusal names three ranges and then "...";
- a detached header over a data file with zero runs is refused;
- keep-ciphertext into LUKS2 copies the payload into a single file, and
  refuses a sector size other than 512.
"""

import json
import os
import re
import struct
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt.conversion import first_difference
from pyqcrypt.pipeline import CHUNK
from pyqcrypt.storage import Storage

from conftest import cs_format, qemu_img, qemu_io, qemu_secret, run, tool, write_file
from test_locks import qemu_holding

PW = b"guard conversion"


def pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, stdin=subprocess.DEVNULL)


def ok(*args):
    proc = pyq(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def refused(*args):
    proc = pyq(*args)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith("pyqcrypt: ") and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- -p

@pytest.mark.parametrize("size", [0, 1 << 20])
def test_progress_is_qemu_imgs(workdir, size):
    src = write_file(os.path.join(workdir, "s.raw"), b"\x5a" * size)
    theirs = run([tool("qemu-img"), "convert", "-p", "-f", "raw", "-O", "qcow2", src,
                  os.path.join(workdir, "q.qcow2")]).stdout
    ours = ok("convert", "-p", "-f", "raw", "-O", "qcow2", src,
              os.path.join(workdir, "p.qcow2")).stdout
    assert ours == theirs


def test_progress_of_a_longer_copy_has_qemu_imgs_frame(workdir):
    src = write_file(os.path.join(workdir, "s.raw"), os.urandom(3 * CHUNK // 2))
    out = ok("convert", "-p", "-f", "raw", "-O", "qcow2", src,
             os.path.join(workdir, "p.qcow2")).stdout.decode()
    assert out.startswith("    (0.00/100%)\r"), repr(out)
    assert out.endswith("    (100.00/100%)\r    (100.00/100%)\r\n"), repr(out)
    figures = [float(m) for m in re.findall(r"\(([\d.]+)/100%\)", out)]
    assert figures == sorted(figures), figures        # steps come now and then, in order


# ---------------------------------------------------------------- --verify's comparison

@pytest.mark.parametrize("where", [0, 1, 4095, 4096, CHUNK - 1, CHUNK, CHUNK + 4096,
                                   2 * CHUNK + 99])
def test_first_difference_finds_every_position(workdir, where):
    size = 2 * CHUNK + 100
    base = bytearray(os.urandom(size))
    a = write_file(os.path.join(workdir, "a"), bytes(base))
    base[where] ^= 0x01
    b = write_file(os.path.join(workdir, "b"), bytes(base))
    with Storage(a) as sa, Storage(b) as sb:
        assert first_difference(sa, 0, sb, 0, size) == where
        assert first_difference(sa, 0, sa, 0, size) is None
        if where >= 4096:       # at offsets: the position is relative to the starts
            assert first_difference(sa, 4096, sb, 4096, size - 4096) == where - 4096


# ---------------------------------------------------------------- keep-ciphertext sources

def _qcow2_luks_raw_data_file(workdir, size=12 << 20, name="k.qcow2"):
    path = os.path.join(workdir, name)
    obj = qemu_secret(workdir, PW, "s")
    qemu_img("create", "-f", "qcow2", "--object", obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10,"
             "data_file=%s.data,data_file_raw=on" % path, path, str(size))
    return path, obj, "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path


@pytest.mark.parametrize("data_file", ["its own", "another"])
def test_keep_ciphertext_refuses_a_source_qemu_is_writing(workdir, data_file):
    """QEMU holding the image refuses the conversion; also when QEMU was
    pointed at another data file, so only the qcow2 file itself is locked."""
    path, obj, opts = _qcow2_luks_raw_data_file(workdir, 4 << 20)
    out = os.path.join(workdir, "out.luks")
    held = opts
    if data_file == "another":
        other = write_file(os.path.join(workdir, "other.data"), open(path + ".data", "rb").read())
        held += ",data-file.driver=file,data-file.filename=" + other
    with qemu_holding(path, "--image-opts", held, objects=[obj]):
        err = refused("convert", "--keep-ciphertext", "-O", "luks", path, out)
        assert "in use" in err and "lock" in err, err
        assert not os.path.exists(out)
    ok("convert", "--keep-ciphertext", "-O", "luks", path, out)


@pytest.mark.blockdev
def test_pipelined_copy_from_a_device_at_an_offset_over_chunks(workdir, loop_devices):
    """LUKS1 on a loop device (payload at 2 MiB, 1.5 chunks long) ->
    qcow2-luks: the data file is the payload, byte for byte."""
    payload = CHUNK + CHUNK // 2
    vol = cs_format(workdir, "v.luks", PW, size=(2 << 20) + payload)
    fill = write_file(os.path.join(workdir, "fill.raw"), os.urandom(payload))
    run([tool("qemu-img"), "convert", "-n", "-f", "raw", "--object", qemu_secret(workdir, PW, "f"),
         "--target-image-opts", fill, "driver=luks,file.filename=%s,key-secret=f" % vol])
    dev = loop_devices(vol)
    dst = os.path.join(workdir, "d.qcow2")
    ok("convert", "--keep-ciphertext", "-O", "qcow2", dev, dst)
    with open(vol, "rb") as fh:
        fh.seek(2 << 20)
        assert open(dst + ".data", "rb").read() == fh.read()


@pytest.mark.blockdev
def test_data_file_with_a_leading_hole_into_a_device(workdir, loop_devices):
    """qcow2-luks whose data file is a hole for its first 4 MiB, -n into a
    device full of 0xAA: the device's payload is the data file (zeros
    where it had holes: no old byte shows through), header first."""
    path, obj, opts = _qcow2_luks_raw_data_file(workdir)
    qemu_io(opts, "write -P 0x5a 4M 1M", "write -P 0x3c 9M 64k", objects=[obj])
    data = open(path + ".data", "rb").read()
    assert data[:4 << 20] == bytes(4 << 20)
    target = write_file(os.path.join(workdir, "t.img"), b"\xaa" * ((2 << 20) + len(data)))
    dev = loop_devices(target)
    ok("convert", "--keep-ciphertext", "-n", "-O", "luks", "--object", obj, "--image-opts", opts, dev)
    with open(dev, "rb") as fh:
        head = fh.read(592)
        payload_offset = struct.unpack(">I", head[104:108])[0] * 512
        fh.seek(payload_offset)
        assert fh.read(len(data)) == data
    qemu_io("driver=luks,file.filename=%s,key-secret=s" % dev, "read -P 0x5a 4M 1M",
            "read -P 0x3c 9M 64k", objects=[obj])


def test_luks1_payload_with_a_partial_sector(workdir):
    """The payload's last 300 bytes are no sector: the image is the whole
    sectors, as every pyqcrypt conversion counts them."""
    vol = cs_format(workdir, "v.luks", PW, size=(2 << 20) + (1 << 20))
    with open(vol, "ab") as fh:
        fh.write(b"\x11" * 300)
    dst = os.path.join(workdir, "d.qcow2")
    ok("convert", "--keep-ciphertext", "-O", "qcow2", vol, dst)
    info = json.loads(run([tool("qemu-img"), "info", "--output=json", dst]).stdout)
    assert info["virtual-size"] == 1 << 20
    assert os.path.getsize(dst + ".data") == 1 << 20
    with open(vol, "rb") as fh:
        fh.seek(2 << 20)
        assert open(dst + ".data", "rb").read() == fh.read(1 << 20)


def _with_zero_runs(workdir, count):
    path, obj, opts = _qcow2_luks_raw_data_file(workdir, 8 << 20)
    qemu_io(opts, "write -P 0x77 0 8M", objects=[obj])
    for i in range(count):
        qemu_io(opts, "write -z %dM 64k" % (i + 1), objects=[obj])
    return path, obj, opts


def test_zero_run_refusal_names_three_ranges_then_dots(workdir):
    path, _, _ = _with_zero_runs(workdir, 4)
    err = refused("convert", "--keep-ciphertext", "-O", "luks", path, os.path.join(workdir, "o"))
    assert "4 range(s), 262144 bytes" in err, err
    assert "bytes 1048576-1114111, 2097152-2162687, 3145728-3211263, ..." in err, err


def test_zero_run_refusal_lists_all_when_three(workdir):
    path, _, _ = _with_zero_runs(workdir, 3)
    err = refused("convert", "--keep-ciphertext", "-O", "luks", path, os.path.join(workdir, "o"))
    assert "3 range(s)" in err and "3145728-3211263)" in err and "..." not in err, err


def test_detached_header_over_zero_runs_refused_even_with_the_passphrase(workdir):
    path, obj, opts = _with_zero_runs(workdir, 1)
    hdr = os.path.join(workdir, "h.hdr")
    for fmt in ("luks", "luks2"):
        err = refused("convert", "--keep-ciphertext", "-O", fmt, "--header", hdr, "--object", obj,
                      "--image-opts", opts)
        assert "detached header" in err and "1 range(s)" in err, err
        assert not os.path.exists(hdr)


def test_keep_ciphertext_into_one_luks2_file(workdir):
    """qcow2-luks -> a LUKS2 file (no --header): the payload is the data
    file's ciphertext after the header, and it reads as the image does."""
    path, obj, opts = _qcow2_luks_raw_data_file(workdir, 4 << 20)
    qemu_io(opts, "write -P 0x42 0 4M", objects=[obj])
    out = os.path.join(workdir, "o.luks2")
    for size in ("4096", "1024"):
        err = refused("convert", "--keep-ciphertext", "-O", "luks2", "-o", "sector-size=" + size,
                      "--object", obj, "--image-opts", opts, out)
        assert "sector-size=512" in err and not os.path.exists(out), err
    ok("convert", "--keep-ciphertext", "-O", "luks2", "--object", obj, "--image-opts", opts, out)
    data = open(path + ".data", "rb").read()
    dump = run([tool("cryptsetup"), "luksDump", out]).stdout.decode()
    offset = int(re.search(r"offset:\s+(\d+) \[bytes\]", dump).group(1))
    with open(out, "rb") as fh:
        fh.seek(offset)
        assert fh.read() == data
    with pyqcrypt.open(out, passphrase=PW) as img:
        assert img.read(0, 4 << 20) == b"\x42" * (4 << 20)


def test_a_source_shorter_than_the_copy_is_refused(workdir):
    """Past its end a file's hole map says "hole": a source that ends early
    must be an error naming where it ended, not zeros in the copy."""
    from pyqcrypt.conversion.copying import copy_payload
    src = write_file(os.path.join(workdir, "short"), os.urandom(1 << 20))
    dst = write_file(os.path.join(workdir, "dst"), b"")
    with Storage(src) as s, Storage(dst, writable=True) as d:
        with pytest.raises(pyqcrypt.FormatError, match="ends at byte 1048576"):
            copy_payload(s, 4096, 1 << 20, d)
        assert copy_payload(s, 4096, (1 << 20) - 4096, d) == (1 << 20) - 4096
    with open(dst, "rb") as fh, open(src, "rb") as fs:
        assert fh.read() == fs.read()[4096:]


@pytest.mark.parametrize("fmt,opts", [("qcow2", {"data_file": "d.data"}),
                                      ("qcow2", {"data_file": "d.data", "data_file_raw": True}),
                                      ("qcow2", {}), ("luks", None), ("raw", None)])
def test_a_failed_reencrypting_conversion_leaves_nothing(workdir, monkeypatch, fmt, opts):
    """A failure after the target exists (here: in the copy) removes every
    file the conversion made, the qcow2 data file included."""
    from pyqcrypt.conversion import reencrypt
    src = write_file(os.path.join(workdir, "s.raw"), os.urandom(1 << 20))

    def failing_copy(*args, **kwargs):
        raise pyqcrypt.Error("injected failure in the copy")
    monkeypatch.setattr(reencrypt, "copy_image", failing_copy)
    before = sorted(os.listdir(workdir))
    kw = {"dst_passphrase": PW, "iterations": 1000} if fmt != "raw" else {}
    with pytest.raises(pyqcrypt.Error, match="injected"):
        pyqcrypt.convert(src, os.path.join(workdir, "out." + fmt), dst_format=fmt,
                         qcow2_options=opts, **kw)
    assert sorted(os.listdir(workdir)) == before
