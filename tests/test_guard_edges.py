# SPDX-License-Identifier: LGPL-2.1-or-later
"""Edges where data is guarded by one comparison:

(a) ``convert -n -O luks`` into a target exactly the source's size (the
    header area forgotten) is refused, saying how many bytes are missing,
    and the target is untouched; one byte short is refused too, and a
    target exactly large enough is accepted.
(b) ``--verify`` sees a difference in nothing but the LAST byte of an 8 MiB
    chunk, or nothing but the last byte of the image, on the re-encrypting
    path (new file and ``-n``) and the keep-ciphertext path (both ways).
    The conversions run end to end through the Python API; the one byte is
    changed between the conversion's write of it and the verification, by
    the storage fault hook at each sync of that file after that write (the
    copy is synced before it is verified), through a descriptor of its own:
    in the destination, or, where the destination is encrypted and the
    comparison is of decrypted bytes, in the source after it was copied.
"""

import hashlib
import os
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt import storage
from pyqcrypt.pipeline import CHUNK

from conftest import cs_format, parse_luks1, qemu_secret, write_file

PW, PW2 = b"edge passphrase", b"another edge passphrase"
SIZE = CHUNK + (4 << 20)            # one whole chunk, then a short one
SRC_SIZE = 4 << 20                  # for (a)


def _pyq(*args):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _one_line_error(proc):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyqcrypt: "), proc.stderr
    return lines[0]


def _cs_payload_bytes(workdir):
    """The header area cryptsetup reserves for aes-xts-plain64 with a 512-bit
    key (its payload offset): what a LUKS volume needs beyond the data."""
    ref = cs_format(workdir, "ref.luks", PW, size=8 << 20)
    with open(ref, "rb") as fh:
        return parse_luks1(fh.read(592))["payload_offset"] * 512


# ---------------------------------------------------------------- (a) the header area

def test_n_luks_target_of_the_source_size_is_refused(workdir):
    area = _cs_payload_bytes(workdir)
    src = write_file(os.path.join(workdir, "src.raw"), os.urandom(SRC_SIZE))
    obj = qemu_secret(workdir, PW, "t")
    for short_by in (area, 1):
        target = write_file(os.path.join(workdir, "t%d.img" % short_by),
                            b"\xee" * (SRC_SIZE + area - short_by))
        before = sorted(os.listdir(workdir))
        proc = _pyq("convert", "-n", "-f", "raw", "-O", "luks", "--object", obj, "-o",
                    "key-secret=t,iter-time=10", src, target)
        line = _one_line_error(proc)
        assert target in line and "too small" in line, line
        assert ", %d bytes (" % short_by in line and "more" in line, line
        assert "holds %d bytes" % (SRC_SIZE + area - short_by) in line, line
        assert "needs %d" % (SRC_SIZE + area) in line, line
        with open(target, "rb") as fh:
            assert fh.read() == b"\xee" * (SRC_SIZE + area - short_by)       # untouched
        assert sorted(os.listdir(workdir)) == before
        with pytest.raises(pyqcrypt.Error, match=r"%d bytes \(" % short_by):
            pyqcrypt.convert(src, target, src_format="raw", dst_format="luks",
                             existing_target=True, dst_passphrase=PW, iterations=1000)
    # Exactly the source plus the header area: accepted, and it reads back.
    target = write_file(os.path.join(workdir, "exact.img"), b"\xee" * (SRC_SIZE + area))
    proc = _pyq("convert", "-n", "-f", "raw", "-O", "luks", "--object", obj, "-o",
                "key-secret=t,iter-time=10", "--verify", src, target)
    assert proc.returncode == 0, proc.stderr
    with pyqcrypt.open(target, passphrase=PW) as img, open(src, "rb") as fh:
        assert img.size == SRC_SIZE and img.read(0, SRC_SIZE) == fh.read()


def test_n_keep_ciphertext_luks_target_of_the_image_size_is_refused(workdir):
    vol = cs_format(workdir, "v.luks", PW, size=(2 << 20) + SRC_SIZE)
    with open(vol, "rb") as fh:
        area = parse_luks1(fh.read(592))["payload_offset"] * 512
    payload = os.path.getsize(vol) - area
    qcow = os.path.join(workdir, "k.qcow2")
    pyqcrypt.convert(vol, qcow, keep_ciphertext=True)
    for short_by in (area, 1):
        target = write_file(os.path.join(workdir, "t%d.img" % short_by),
                            b"\xee" * (payload + area - short_by))
        digest = _digest(target)
        line = _one_line_error(_pyq("convert", "--keep-ciphertext", "-n", "-O", "luks", qcow,
                                    target))
        assert target in line and "too small" in line and "%d bytes (" % short_by in line, line
        assert _digest(target) == digest
    target = write_file(os.path.join(workdir, "exact.img"), b"\xee" * (payload + area))
    proc = _pyq("convert", "--keep-ciphertext", "-n", "-O", "luks", "--verify", qcow, target)
    assert proc.returncode == 0, proc.stderr
    assert _digest(target) == _digest(vol)                  # the volume itself again


# ---------------------------------------------------------------- (b) --verify

POSITIONS = {"last byte of a chunk": CHUNK - 1, "last byte of the image": SIZE - 1}


def _corrupting(victim_prefix, offset, value, target_path=None, covering=None):
    """A fault hook: at every sync of a file whose name starts with
    *victim_prefix* (the final name or its temporary) that follows a write
    of its byte *covering* (default *offset*), write the byte *value* at
    *offset* of *target_path* (default: that same file)."""
    covering = offset if covering is None else covering
    written = []

    def hook(kind, st, off, length):
        if not os.path.basename(st.path).startswith(victim_prefix):
            return
        if kind == "write" and off <= covering < off + length:
            written.append(off)
        if kind != "sync" or not written:
            return
        fd = os.open(target_path or st.path, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes([value]), offset)
        finally:
            os.close(fd)
    return hook


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return os.urandom(SIZE)


@pytest.fixture
def luks_volume(workdir, plain):
    """A pyqcrypt LUKS1 volume holding *plain*; (path, payload offset)."""
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, SIZE, "luks", passphrase=PW, iterations=1000)
    with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
        img.write(0, plain)
        img.flush()
    with open(vol, "rb") as fh:
        return vol, parse_luks1(fh.read(592))["payload_offset"] * 512


def _no_leftovers(workdir, stem):
    return [n for n in os.listdir(workdir) if n.startswith(stem)]


@pytest.mark.parametrize("where", sorted(POSITIONS))
def test_reencrypting_verify_sees_one_byte_in_a_new_file(workdir, luks_volume, plain, where):
    pos = POSITIONS[where]
    vol, _ = luks_volume
    dst = os.path.join(workdir, "out.raw")
    hook = _corrupting("out.raw", pos, plain[pos] ^ 0xFF)
    with storage.injected_faults(hook):
        with pytest.raises(pyqcrypt.Error, match=r"verification failed: guest byte %d differs"
                           % pos):
            pyqcrypt.convert(vol, dst, src_passphrase=PW, dst_format="raw", verify=True)
    assert _no_leftovers(workdir, "out.raw") == []
    # The same conversion without the fault verifies.
    pyqcrypt.convert(vol, dst, src_passphrase=PW, dst_format="raw", verify=True)
    with open(dst, "rb") as fh:
        assert fh.read() == plain


@pytest.mark.parametrize("where", sorted(POSITIONS))
def test_reencrypting_verify_sees_one_byte_into_an_existing_luks(workdir, plain, where):
    """-n -O luks: the destination is encrypted, so the one byte that differs
    is put into the source after it was copied (a guest byte, exactly)."""
    pos = POSITIONS[where]
    area = _cs_payload_bytes(workdir)
    src = write_file(os.path.join(workdir, "src.raw"), plain)
    target = write_file(os.path.join(workdir, "target.img"), bytes(area + SIZE))
    hook = _corrupting("target.img", pos, plain[pos] ^ 0x01, target_path=src,
                       covering=area + pos)
    with storage.injected_faults(hook):
        with pytest.raises(pyqcrypt.Error, match=r"verification failed: guest byte %d differs"
                           % pos):
            pyqcrypt.convert(src, target, src_format="raw", dst_format="luks",
                             existing_target=True, dst_passphrase=PW2, iterations=1000,
                             verify=True)
    with pyqcrypt.open(target, passphrase=PW2) as img:
        assert img.read(0, SIZE) == plain                  # the copy itself was right


@pytest.mark.parametrize("where", sorted(POSITIONS))
def test_keep_ciphertext_verify_sees_one_byte_luks_to_qcow2(workdir, luks_volume, where):
    pos = POSITIONS[where]
    vol, start = luks_volume
    with open(vol, "rb") as fh:
        fh.seek(start + pos)
        cipher_byte = fh.read(1)[0]
    dst = os.path.join(workdir, "k.qcow2")
    hook = _corrupting("k.qcow2.data", pos, cipher_byte ^ 0x80)
    with storage.injected_faults(hook):
        with pytest.raises(pyqcrypt.Error, match=r"verification failed: the payload differs at "
                           r"byte %d \(" % pos):
            pyqcrypt.convert(vol, dst, keep_ciphertext=True, verify=True)
    assert _no_leftovers(workdir, "k.qcow2") == []


@pytest.mark.parametrize("where", sorted(POSITIONS))
def test_keep_ciphertext_verify_sees_one_byte_qcow2_to_luks(workdir, luks_volume, where):
    pos = POSITIONS[where]
    vol, start = luks_volume
    qcow = os.path.join(workdir, "k.qcow2")
    pyqcrypt.convert(vol, qcow, keep_ciphertext=True)
    with open(qcow + ".data", "rb") as fh:
        fh.seek(pos)
        cipher_byte = fh.read(1)[0]
    dst = os.path.join(workdir, "back.luks")
    hook = _corrupting("back.luks", start + pos, cipher_byte ^ 0x02)
    with storage.injected_faults(hook):
        with pytest.raises(pyqcrypt.Error, match=r"verification failed: the payload differs at "
                           r"byte %d \(" % pos):
            pyqcrypt.convert(qcow, dst, dst_format="luks", keep_ciphertext=True, verify=True)
    assert _no_leftovers(workdir, "back.luks") == []
    # And into an existing target (-n): the same byte is seen there too.
    target = write_file(os.path.join(workdir, "exist.img"), bytes(start + SIZE))
    hook = _corrupting("exist.img", start + pos, cipher_byte ^ 0x02)
    with storage.injected_faults(hook):
        with pytest.raises(pyqcrypt.Error, match=r"verification failed: the payload differs at "
                           r"byte %d \(" % pos):
            pyqcrypt.convert(qcow, target, dst_format="luks", keep_ciphertext=True,
                             existing_target=True, verify=True)
