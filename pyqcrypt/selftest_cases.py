# SPDX-License-Identifier: LGPL-2.1-or-later
"""The ``pyqcrypt selftest`` cases, in the order they run: each makes
images with pyqcrypt or with the tools, crosses them and compares the
decrypted bytes, and returns what it found or raises ``CaseFailed`` /
``CaseSkipped``.  ``CASES`` lists them as ``case()`` registers them;
``selftest.py`` runs them through a ``selftest_context.Context``.
"""

import os
import re
import struct
from typing import Callable, List, Tuple

from .selftest_context import (BINARY, ITERATIONS, PASSPHRASE, QEMU_ITER_TIME, SECOND, THIRD, CaseFailed, Context,
                               MiB, last_line)


def _same(what, got, want):
    if got != want:
        if len(got) != len(want):
            raise CaseFailed("%s: %d bytes, expected %d" % (what, len(got), len(want)))
        first = next(i for i in range(len(got)) if got[i] != want[i])
        raise CaseFailed("%s: bytes differ from offset %d on" % (what, first))


def _data(size):
    """Test content: random bytes with a zero hole in the middle (so sparse
    paths and unallocated clusters are crossed too)."""
    data = bytearray(os.urandom(size))
    data[size // 4:size // 2] = bytes(size // 4)
    return bytes(data)


def _pyqcrypt_read(path, passphrase, size=None):
    import pyqcrypt
    with pyqcrypt.open(path, passphrase=passphrase) as img:
        return img.read(0, img.size if size is None else size)


def _pyqcrypt_write(path, passphrase, data):
    import pyqcrypt
    with pyqcrypt.open(path, passphrase=passphrase, writable=True) as img:
        img.write(0, data)
        img.flush()


def _pyqcrypt_add_key(path, passphrase, new_passphrase):
    from . import luks
    from .image import open_luks_area
    with open_luks_area(path, writable=True) as area:
        _, mk = luks.unlock(area, passphrase)
        with mk:
            return luks.add_key(area, mk, new_passphrase, iterations=ITERATIONS)


def _luks1_payload(path):
    """(payload offset in bytes, header bytes) of a LUKS1 volume, parsed here
    rather than by pyqcrypt, so the round trip is not checked against itself."""
    with open(path, "rb") as fh:
        hdr = fh.read(592)
    if hdr[:6] != b"LUKS\xba\xbe":
        raise CaseFailed("%s has no LUKS header" % os.path.basename(path))
    return struct.unpack_from(">I", hdr, 104)[0] * 512


# -- the cases ---------------------------------------------------------------

CASES: "List[Tuple[str, Tuple[str, ...], str, Callable[[Context], str]]]" = []


def case(name, tools, summary):
    def register(fn):
        CASES.append((name, tools, summary, fn))
        return fn
    return register


def _ours_luks(ctx, name="ours.luks", size=MiB):
    import pyqcrypt
    data = _data(size)
    vol = ctx.path(name)
    pyqcrypt.create(vol, size, "luks", passphrase=PASSPHRASE, spec="aes-xts-plain64", key_bits=512,
                    hash_name="sha256", iterations=ITERATIONS)
    _pyqcrypt_write(vol, PASSPHRASE, data)
    return vol, data


def _ours_qcow2(ctx, name="ours.qcow2", size=2 * MiB):
    import pyqcrypt
    data = _data(size)
    img = ctx.path(name)
    pyqcrypt.create(img, size, "qcow2", passphrase=PASSPHRASE, iterations=ITERATIONS)
    with pyqcrypt.open(img, passphrase=PASSPHRASE, writable=True) as q:
        for off in range(0, size, 64 << 10):            # leave the zero hole unallocated
            chunk = data[off:off + (64 << 10)]
            if any(chunk):
                q.write(off, chunk)
        q.flush()
    return img, data


def _theirs_luks(ctx, name="theirs.luks", size=MiB, cipher="aes-xts-plain64", key_bits=512):
    ctx.need("cryptsetup", "qemu-img")
    data = _data(size)
    vol = ctx.cryptsetup_format(name, size + 2 * MiB, cipher, key_bits)
    payload = os.path.getsize(vol) - _luks1_payload(vol)
    if payload != size:
        raise CaseFailed("cryptsetup's payload is %d bytes, expected %d" % (payload, size))
    ctx.qemu_fill("luks", vol, data)
    return vol, data


def _theirs_qcow2(ctx, size=2 * MiB):
    ctx.need("qemu-img", "qemu-io")
    data = bytearray(_data(size))
    img = ctx.path("theirs.qcow2")
    ctx.run("qemu-img", "create", "-q", "-f", "qcow2", *ctx.objects("s0"), "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=%s" % QEMU_ITER_TIME,
            img, size, retry_flake=True)
    ctx.qemu_fill("qcow2", img, bytes(data))
    # and an unaligned write from qemu-io on top, across a cluster boundary
    off, n = (64 << 10) - 1000, 3000
    proc = ctx.run("qemu-io", *ctx.objects("s0"), "--image-opts", ctx.qemu_image("qcow2", img),
                   "-c", "write -P 0xa5 %d %d" % (off, n))
    if ("wrote %d/%d bytes at offset %d" % (n, n, off)).encode() not in proc.stdout:
        raise CaseFailed("qemu-io did not report its write: %s" % last_line(proc.stdout.decode()))
    data[off:off + n] = b"\xa5" * n
    return img, bytes(data)


@case("luks1-ours-opened-by-cryptsetup", ("cryptsetup",),
      "cryptsetup accepts pyqcrypt's LUKS1 passphrase, refuses a wrong one, and dumps the header")
def _luks_ours_cryptsetup(ctx):
    ctx.need("cryptsetup")
    vol, _ = _ours_luks(ctx, "ours-cs.luks")
    if not ctx.cryptsetup_accepts(vol, "s0"):
        raise CaseFailed("cryptsetup refuses the passphrase of pyqcrypt's volume")
    if ctx.cryptsetup_accepts(vol, "s1"):
        raise CaseFailed("cryptsetup accepts a wrong passphrase: it cannot be trusted")
    dump = ctx.run("cryptsetup", "luksDump", vol).stdout.decode(errors="replace")
    for want in (r"Version:\s+1\b", r"Cipher name:\s+aes\b", r"Cipher mode:\s+xts-plain64\b",
                 r"MK bits:\s+512\b", r"Key Slot 0: ENABLED"):
        if not re.search(want, dump):
            raise CaseFailed("cryptsetup luksDump lacks %r" % want)
    return "passphrase accepted, wrong one refused, header as written"


@case("luks1-ours-read-by-qemu", ("qemu-img",),
      "qemu-img's luks driver decrypts pyqcrypt's LUKS1 volume to the bytes pyqcrypt wrote")
def _luks_ours_qemu(ctx):
    ctx.need("qemu-img")
    vol, data = _ours_luks(ctx, "ours-qemu.luks")
    _same("qemu-img's reading of pyqcrypt's volume", ctx.qemu_read("luks", vol), data)
    return "%d KiB identical" % (len(data) >> 10)


@case("luks1-theirs-read-by-us", ("cryptsetup", "qemu-img"),
      "pyqcrypt decrypts cryptsetup's LUKS1 volumes (aes-xts-plain64, aes-cbc-essiv:sha256) "
      "filled by qemu-img")
def _luks_theirs_ours(ctx):
    for name, cipher, bits in (("theirs.luks", "aes-xts-plain64", 512),
                               ("theirs-cbc.luks", "aes-cbc-essiv:sha256", 256)):
        vol, data = _theirs_luks(ctx, name, cipher=cipher, key_bits=bits)
        _same("pyqcrypt's reading of cryptsetup's %s volume" % cipher,
              _pyqcrypt_read(vol, PASSPHRASE), data)
    return "2 ciphers, %d KiB identical each" % (MiB >> 10)


@case("qcow2-luks-ours-read-by-qemu", ("qemu-img", "qemu-io"),
      "qemu-img check finds pyqcrypt's qcow2-luks image clean; qemu-img and qemu-io read its bytes")
def _qcow2_ours_qemu(ctx):
    ctx.need("qemu-img", "qemu-io")
    img, data = _ours_qcow2(ctx)
    ctx.run("qemu-img", "check", *ctx.objects("s0"), "--image-opts", ctx.qemu_image("qcow2", img))
    _same("qemu-img's reading of pyqcrypt's qcow2-luks image", ctx.qemu_read("qcow2", img), data)
    # qemu-io's own pattern check over the zero hole pyqcrypt left unallocated
    off, n = len(data) // 4, len(data) // 4
    proc = ctx.run("qemu-io", *ctx.objects("s0"), "--image-opts", ctx.qemu_image("qcow2", img),
                   "-c", "read -P 0 %d %d" % (off, n))
    out = proc.stdout.decode(errors="replace")
    if "Pattern verification failed" in out or ("read %d/%d bytes at offset %d" % (n, n, off)) not in out:
        raise CaseFailed("qemu-io's read of the unallocated range: %s" % last_line(out))
    return "check clean, %d KiB identical" % (len(data) >> 10)


@case("qcow2-luks-theirs-read-by-us", ("qemu-img", "qemu-io"),
      "pyqcrypt decrypts a qcow2-luks image qemu-img created and qemu-img/qemu-io wrote")
def _qcow2_theirs_ours(ctx):
    img, data = ctx.once("qemu's qcow2-luks image", lambda: _theirs_qcow2(ctx))
    _same("pyqcrypt's reading of qemu's qcow2-luks image", _pyqcrypt_read(img, PASSPHRASE), data)
    return "%d KiB identical" % (len(data) >> 10)


@case("luks1-keyslot-added-by-cryptsetup", ("cryptsetup",),
      "cryptsetup luksAddKey (a binary key) on pyqcrypt's volume; pyqcrypt opens it with that key")
def _slot_cryptsetup_ours(ctx):
    ctx.need("cryptsetup")
    vol, data = _ours_luks(ctx, "slot-cs.luks")
    ctx.run("cryptsetup", "luksAddKey", "-q", "--pbkdf-force-iterations", ITERATIONS,
            "--key-file", ctx.path("s0.key"), vol, ctx.path("bin.key"))
    _same("pyqcrypt's reading with cryptsetup's new key", _pyqcrypt_read(vol, BINARY), data)
    return "new key opens the volume; data identical"


@case("luks1-keyslot-added-by-us", ("cryptsetup", "qemu-img"),
      "pyqcrypt adds a keyslot to cryptsetup's volume; cryptsetup and qemu-img open it with the new key")
def _slot_ours_cryptsetup(ctx):
    vol, data = _theirs_luks(ctx, "slot-ours.luks")
    slot = _pyqcrypt_add_key(vol, PASSPHRASE, SECOND)
    if not ctx.cryptsetup_accepts(vol, "s1"):
        raise CaseFailed("cryptsetup refuses the key pyqcrypt added in slot %d" % slot)
    if not ctx.cryptsetup_accepts(vol, "s0"):
        raise CaseFailed("cryptsetup no longer accepts the first passphrase")
    _same("qemu-img's reading with the key pyqcrypt added", ctx.qemu_read("luks", vol, "s1"), data)
    return "slot %d opens in cryptsetup and qemu-img" % slot


@case("qcow2-luks-keyslot-added-by-qemu", ("qemu-img",),
      "qemu-img amend adds a keyslot to pyqcrypt's qcow2-luks image; pyqcrypt opens it with it")
def _slot_qemu_ours(ctx):
    ctx.need("qemu-img")
    img, data = _ours_qcow2(ctx, "slot-qemu.qcow2")
    ctx.run("qemu-img", "amend", *ctx.objects("s0", "s1"), "--image-opts", ctx.qemu_image("qcow2", img),
            "-o", "encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=%s" % QEMU_ITER_TIME,
            retry_flake=True)
    _same("pyqcrypt's reading with qemu's new secret", _pyqcrypt_read(img, SECOND), data)
    return "new secret opens the image; data identical"


@case("qcow2-luks-keyslot-added-by-us", ("qemu-img", "qemu-io"),
      "pyqcrypt adds a keyslot to qemu's qcow2-luks image; qemu-img reads it with the new secret")
def _slot_ours_qemu(ctx):
    img, data = ctx.once("qemu's qcow2-luks image", lambda: _theirs_qcow2(ctx))
    img = ctx.copy(img, "slot-ours.qcow2")
    slot = _pyqcrypt_add_key(img, PASSPHRASE, THIRD)
    _same("qemu-img's reading with the secret pyqcrypt added", ctx.qemu_read("qcow2", img, "s2"), data)
    ctx.run("qemu-img", "check", *ctx.objects("s2"), "--image-opts", ctx.qemu_image("qcow2", img, "s2"))
    return "slot %d opens in qemu-img; check clean" % slot


@case("keep-ciphertext-round-trip", ("cryptsetup", "qemu-img"),
      "cryptsetup's LUKS1 volume -> qcow2-luks -> LUKS1 without decrypting: qemu-img reads both, "
      "cryptsetup opens the result, the payload ciphertext is unchanged")
def _keep_ciphertext(ctx):
    import pyqcrypt
    vol, data = _theirs_luks(ctx, "keep.luks")
    qcow2 = ctx.path("keep.qcow2")
    pyqcrypt.convert(vol, qcow2, dst_format="qcow2", keep_ciphertext=True)
    _same("qemu-img's reading of the qcow2-luks image", ctx.qemu_read("qcow2", qcow2), data)
    back = ctx.path("back.luks")
    pyqcrypt.convert(qcow2, back, dst_format="luks", keep_ciphertext=True)
    if not ctx.cryptsetup_accepts(back, "s0"):
        raise CaseFailed("cryptsetup refuses the passphrase of the round-tripped volume")
    _same("qemu-img's reading of the round-tripped volume", ctx.qemu_read("luks", back), data)
    _same("the round-tripped payload ciphertext", ctx.read(back, _luks1_payload(back)),
          ctx.read(vol, _luks1_payload(vol)))
    return "%d KiB: plaintext and ciphertext identical" % (len(data) >> 10)

