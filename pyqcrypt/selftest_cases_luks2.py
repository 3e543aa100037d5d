# SPDX-License-Identifier: LGPL-2.1-or-later
"""The ``pyqcrypt selftest`` cases for LUKS2 sector sizes and detached
headers (registered into ``selftest_cases.CASES`` on import, after the
LUKS1 and qcow2-luks cases).

QEMU 7.2's luks driver reads LUKS1 only, and cryptsetup decrypts data only
through dm-crypt (which a selftest cannot count on) or its offline
``reencrypt``.  So LUKS2 bytes are checked against cryptsetup this way:
``cryptsetup reencrypt --encrypt`` encrypts known plaintext in place
(detached header, no dm-crypt needed); pyqcrypt must decrypt it to that
plaintext, and writing the same plaintext back through pyqcrypt must give
cryptsetup's ciphertext byte for byte.  A LUKS2 volume from ``cryptsetup
luksFormat`` is written by pyqcrypt and converted (decrypting) to
qcow2-luks, which qemu-img reads; volumes pyqcrypt formats must open in
``cryptsetup open --test-passphrase``.
"""

import os
import re

from .selftest_cases import _data, _same, case
from .selftest_context import ITERATIONS, PASSPHRASE, CaseFailed, MiB


def _read(path, header=None):
    import pyqcrypt
    with pyqcrypt.open(path, passphrase=PASSPHRASE, header=header) as img:
        return img.read(0, img.size)


def _write_in_pieces(path, data, header=None):
    """Junk over an unaligned stretch first, then *data* back in unaligned
    pieces that straddle sector boundaries: what lands must not depend on
    how it was cut."""
    import pyqcrypt
    cuts = [0, 1000, 5000, 70001, len(data) // 2 + 3, len(data)]
    with pyqcrypt.open(path, passphrase=PASSPHRASE, header=header, writable=True) as img:
        img.write(999, os.urandom(9000))
        img.flush()
        for start, end in zip(cuts, cuts[1:]):
            img.write(start, data[start:end])
        img.flush()


def _pbkdf():
    from .luks.luks2_format import Pbkdf
    return Pbkdf("pbkdf2", iterations=ITERATIONS)


def _cryptsetup_encrypted(ctx, unit):
    """(volume, detached header, plaintext): plaintext encrypted in place by
    ``cryptsetup reencrypt --encrypt`` with *unit*-byte sectors."""
    data = _data(MiB)
    vol = ctx.write("cs-enc-%d.img" % unit, data)
    hdr = ctx.path("cs-enc-%d.hdr" % unit)
    ctx.run("cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--force-offline-reencrypt", "-q",
            "--cipher", "aes-xts-plain64", "--key-size", 512, "--sector-size", unit,
            "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", ITERATIONS,
            "--header", hdr, "--key-file", ctx.path("s0.key"), vol)
    return vol, hdr, data


def _cryptsetup_luks2(ctx, name, unit, size):
    vol = ctx.path(name)
    with open(vol, "wb") as fh:
        fh.truncate(size)
    ctx.run("cryptsetup", "luksFormat", "--type", "luks2", "-q", "--cipher", "aes-xts-plain64",
            "--key-size", 512, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", ITERATIONS,
            "--sector-size", unit, "--key-file", ctx.path("s0.key"), vol)
    return vol


def _luks2_sectors(ctx, unit):
    import pyqcrypt
    ctx.need("cryptsetup", "qemu-img")
    # cryptsetup's encryption: pyqcrypt decrypts it, and re-encrypts to the same bytes
    vol, hdr, data = _cryptsetup_encrypted(ctx, unit)
    theirs = ctx.read(vol)
    if theirs == data:
        raise CaseFailed("cryptsetup reencrypt --encrypt left the data in the clear")
    _same("pyqcrypt's reading of cryptsetup's encryption", _read(vol, hdr), data)
    _write_in_pieces(vol, data, hdr)
    _same("pyqcrypt's ciphertext of the same plaintext, against cryptsetup's", ctx.read(vol), theirs)
    # cryptsetup's luksFormat: pyqcrypt writes it, qemu-img reads the qcow2-luks it converts to
    vol = _cryptsetup_luks2(ctx, "cs-fmt-%d.luks2" % unit, unit, 16 * MiB + MiB)
    data = _data(MiB)
    _write_in_pieces(vol, data)
    qcow2 = ctx.path("cs-fmt-%d.qcow2" % unit)
    pyqcrypt.convert(vol, qcow2, dst_format="qcow2", src_passphrase=PASSPHRASE, dst_passphrase=PASSPHRASE,
                     iterations=ITERATIONS)
    _same("qemu-img's reading of the qcow2-luks pyqcrypt converted it to", ctx.qemu_read("qcow2", qcow2), data)
    # pyqcrypt's own LUKS2 with this sector size, opened by cryptsetup
    ours = ctx.path("ours-%d.luks2" % unit)
    pyqcrypt.create(ours, MiB, "luks2", passphrase=PASSPHRASE, spec="aes-xts-plain64", key_bits=512,
                    sector_size=unit, pbkdf=_pbkdf())
    ctx.cryptsetup_agrees(ours, "pyqcrypt's LUKS2 volume", luks_type="luks2")
    dump = ctx.run("cryptsetup", "luksDump", ours).stdout.decode(errors="replace")
    if not re.search(r"^\s*sector:\s+%d \[bytes\]" % unit, dump, re.M):
        raise CaseFailed("cryptsetup luksDump of pyqcrypt's volume does not say sector: %d" % unit)
    return ("cryptsetup's ciphertext decrypted and reproduced byte for byte; its luksFormat written, "
            "read by qemu-img via qcow2-luks; ours opened by cryptsetup")


@case("luks2-512-byte-sectors", ("cryptsetup", "qemu-img"),
      "LUKS2 with 512-byte sectors: cryptsetup's offline encryption decrypted and reproduced by "
      "pyqcrypt; its luksFormat volume written by pyqcrypt and read by qemu-img through qcow2-luks; "
      "pyqcrypt's volume opened by cryptsetup")
def _luks2_512(ctx):
    return _luks2_sectors(ctx, 512)


@case("luks2-4096-byte-sectors", ("cryptsetup", "qemu-img"),
      "LUKS2 with 4096-byte sectors: as the 512-byte case")
def _luks2_4096(ctx):
    return _luks2_sectors(ctx, 4096)


def _keep_ciphertext_read(ctx, vol, hdr, name):
    """*vol* with its detached *hdr* converted keeping the ciphertext to
    qcow2-luks: what qemu-img reads of it (QEMU 7.2 takes no detached header)."""
    import pyqcrypt
    qcow2 = ctx.path(name)
    pyqcrypt.convert(vol, qcow2, dst_format="qcow2", keep_ciphertext=True, src_header=hdr)
    return ctx.qemu_read("qcow2", qcow2)


@case("detached-headers", ("cryptsetup", "qemu-img"),
      "cryptsetup's detached LUKS1 header read and written by pyqcrypt (bytes checked by qemu-img after a "
      "keep-ciphertext conversion); pyqcrypt's detached LUKS1 and LUKS2 headers opened by cryptsetup --header")
def _detached(ctx):
    import pyqcrypt
    ctx.need("cryptsetup", "qemu-img")
    vol, hdr = ctx.path("det-cs.img"), ctx.path("det-cs.hdr")
    with open(vol, "wb") as fh:
        fh.truncate(MiB)
    ctx.run("cryptsetup", "luksFormat", "--type", "luks1", "-q", "--cipher", "aes-xts-plain64", "--key-size", 512,
            "--hash", "sha256", "--pbkdf-force-iterations", ITERATIONS, "--header", hdr,
            "--key-file", ctx.path("s0.key"), vol)
    data = _data(MiB)
    _write_in_pieces(vol, data, hdr)
    if ctx.read(vol) == data:
        raise CaseFailed("pyqcrypt wrote cryptsetup's detached-header volume in the clear")
    _same("qemu-img's reading of cryptsetup's detached-header volume", _keep_ciphertext_read(
        ctx, vol, hdr, "det-cs.qcow2"), data)
    ours, ours_hdr = ctx.path("det-ours.img"), ctx.path("det-ours.hdr")
    pyqcrypt.create(ours, MiB, "luks", passphrase=PASSPHRASE, spec="aes-xts-plain64", key_bits=512,
                    iterations=ITERATIONS, header=ours_hdr)
    ctx.cryptsetup_agrees(ours, "pyqcrypt's detached LUKS1 header", header=ours_hdr)
    _write_in_pieces(ours, data, ours_hdr)
    _same("qemu-img's reading of pyqcrypt's detached-header volume", _keep_ciphertext_read(
        ctx, ours, ours_hdr, "det-ours.qcow2"), data)
    ours2, ours2_hdr = ctx.path("det-ours2.img"), ctx.path("det-ours2.hdr")
    pyqcrypt.create(ours2, MiB, "luks2", passphrase=PASSPHRASE, spec="aes-xts-plain64", key_bits=512,
                    pbkdf=_pbkdf(), header=ours2_hdr)
    ctx.cryptsetup_agrees(ours2, "pyqcrypt's detached LUKS2 header", header=ours2_hdr, luks_type="luks2")
    return "cryptsetup's LUKS1 header: %d KiB identical in qemu-img; ours (LUKS1, LUKS2) open in cryptsetup" % (
        MiB >> 10)
