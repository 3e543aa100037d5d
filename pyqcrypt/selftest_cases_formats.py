# SPDX-License-Identifier: LGPL-2.1-or-later
"""The ``pyqcrypt selftest`` cases for the ciphers OpenSSL lacks (serpent,
twofish, through libgcrypt), a qcow2 data file on a block device, and
zstd-compressed clusters (registered into ``selftest_cases.CASES`` on
import, after the LUKS2 cases).

Where a tool cannot take part here the case says so in its detail rather
than pretending: cryptsetup formats serpent and twofish volumes only with
dm-crypt or the kernel's AF_ALG sockets, so without them qemu-img makes
those volumes; loop devices need root and /dev/loop-control, so without
them the block-device case is skipped with the reason.
"""

import json
import os
import re
import shutil
import subprocess
import time

from . import _native
from .selftest_cases import _data, _same, case
from .selftest_context import (COMMAND_TIMEOUT, ITERATIONS, PASSPHRASE, QEMU_ITER_TIME, CaseFailed, CaseSkipped,
                               MachineLacks, MiB, last_line)
from .selftest_cases_luks2 import _read, _write_in_pieces

# cryptsetup's words when the cipher needs the kernel (dm-crypt or AF_ALG) and it is not there
CRYPTSETUP_NO_KERNEL_CIPHER = ("Cannot initialize device-mapper", "AF_ALG")


def _qemu_luks_args(ctx, vol, alg):
    return ["create", "-q", "-f", "luks", *ctx.objects("s0"), "-o",
            "key-secret=s0,cipher-alg=%s-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256,iter-time=%s"
            % (alg, QEMU_ITER_TIME), vol, str(MiB)]


def _qemu_made_luks(ctx, algs):
    """{alg: volume} made by qemu-img, all at once: each creation spends
    about a second of CPU calibrating PBKDF2 whatever iter-time says."""
    vols = {alg: ctx.path("qemu-%s.luks" % alg) for alg in algs}
    started = {alg: subprocess.Popen([ctx.tools["qemu-img"].path] + _qemu_luks_args(ctx, vol, alg),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ctx.workdir)
               for alg, vol in vols.items()}
    for alg, proc in started.items():
        out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
        if proc.returncode != 0:            # QEMU's benchmark flake, or a real failure: again, alone
            if os.path.exists(vols[alg]):
                os.unlink(vols[alg])
            ctx.run("qemu-img", *_qemu_luks_args(ctx, vols[alg], alg), retry_flake=True)
    return vols


def _cryptsetup_made_luks(ctx, alg):
    """cryptsetup's LUKS1 volume with *alg*-xts-plain64, or None where
    cryptsetup cannot use that cipher here (no dm-crypt, no AF_ALG)."""
    if ctx.tools["cryptsetup"].problem:
        return None
    vol = ctx.path("cs-%s.luks" % alg)
    with open(vol, "wb") as fh:
        fh.truncate(3 * MiB)
    proc = ctx.run("cryptsetup", "luksFormat", "--type", "luks1", "-q", "--cipher", "%s-xts-plain64" % alg,
                   "--key-size", 512, "--hash", "sha256", "--pbkdf-force-iterations", ITERATIONS,
                   "--key-file", ctx.path("s0.key"), vol, expect=None)
    if proc.returncode == 0:
        return vol
    err = (proc.stdout + proc.stderr).decode(errors="replace")
    if not any(words in err for words in CRYPTSETUP_NO_KERNEL_CIPHER):
        raise CaseFailed("cryptsetup luksFormat --cipher %s-xts-plain64 exited %d: %s"
                         % (alg, proc.returncode, last_line(err)))
    os.unlink(vol)
    return None


def _their_volumes(ctx, algs):
    """{alg: (volume, who made it)}: cryptsetup's, or qemu-img's where
    cryptsetup cannot run the cipher here."""
    made = {alg: (_cryptsetup_made_luks(ctx, alg), "cryptsetup") for alg in algs}
    missing = [alg for alg, (vol, _) in made.items() if vol is None]
    for alg, vol in _qemu_made_luks(ctx, missing).items() if missing else ():
        made[alg] = (vol, "qemu-img")
    return made


@case("serpent-and-twofish", ("cryptsetup", "qemu-img"),
      "LUKS1 volumes with serpent-xts-plain64 and twofish-xts-plain64 (cryptsetup's, or qemu-img's where "
      "cryptsetup cannot run them) filled by qemu-img and read by pyqcrypt; pyqcrypt's writes and its own "
      "volumes read by qemu-img")
def _serpent_twofish(ctx):
    import pyqcrypt
    ctx.need("qemu-img")
    if not _native.have_gcrypt():
        raise CaseSkipped("pyqcrypt was built without libgcrypt, which serpent and twofish need")
    makers = []
    for alg, (vol, maker) in _their_volumes(ctx, ("serpent", "twofish")).items():
        data = _data(MiB)
        ctx.qemu_fill("luks", vol, data)
        _same("pyqcrypt's reading of %s's %s volume" % (maker, alg), _read(vol), data)
        _same("qemu-img's reading of the same volume", ctx.qemu_read("luks", vol), data)
        data = _data(MiB)
        _write_in_pieces(vol, data)
        _same("qemu-img's reading of pyqcrypt's writes", ctx.qemu_read("luks", vol), data)
        ours = ctx.path("ours-%s.luks" % alg)
        pyqcrypt.create(ours, MiB, "luks", passphrase=PASSPHRASE, spec="%s-xts-plain64" % alg, key_bits=512,
                        hash_name="sha256", iterations=ITERATIONS)
        _write_in_pieces(ours, data)
        _same("qemu-img's reading of pyqcrypt's %s volume" % alg, ctx.qemu_read("luks", ours), data)
        makers.append("%s by %s" % (alg, maker))
    return "%s; %d KiB identical each way" % (", ".join(makers), MiB >> 10)


def _losetup():
    return shutil.which("losetup") or "/usr/sbin/losetup"


def _attach(backing):
    """A loop device over *backing*, or skip naming why there is none."""
    if os.geteuid() != 0:
        raise MachineLacks("no loop devices: they need root")
    if not os.path.exists("/dev/loop-control") or not os.path.exists(_losetup()):
        raise MachineLacks("no loop devices: no /dev/loop-control or no losetup (Debian package mount)")
    for attempt in range(5):        # processes attaching at the same time race for the free device
        proc = subprocess.run([_losetup(), "-f", "--show", backing], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            return proc.stdout.strip()
        time.sleep(0.2 * (attempt + 1))
    raise MachineLacks("no loop devices: losetup -f failed: %s" % last_line(proc.stderr))


def _detach(dev):
    for _ in range(20):
        proc = subprocess.run([_losetup(), "-d", dev], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 or "No such device" in proc.stderr:
            return
        time.sleep(0.1)             # still held by a closing process
    raise CaseFailed("could not detach %s: %s" % (dev, last_line(proc.stderr)))


@case("qcow2-data-file-on-block-device", ("qemu-img", "qemu-io"),
      "pyqcrypt makes a qcow2-luks image whose data file is a loop device and writes it; qemu-img and "
      "qemu-io read it")
def _data_file_blockdev(ctx):
    import pyqcrypt
    ctx.need("qemu-img", "qemu-io")
    backing = ctx.path("loop-backing.img")
    with open(backing, "wb") as fh:
        fh.truncate(2 * MiB)
    dev = _attach(backing)
    try:
        img = ctx.path("on-device.qcow2")
        pyqcrypt.create(img, 2 * MiB, "qcow2", passphrase=PASSPHRASE, iterations=ITERATIONS, data_file=dev,
                        data_file_existing=True)        # a device is never created: adopted, then wholly written
        data = bytearray(_data(2 * MiB))
        off, n = 3 * MiB // 2 + 7, 5000
        data[off:off + n] = b"\x5a" * n
        _write_in_pieces(img, bytes(data))
        if ctx.read(dev)[off:off + n] == data[off:off + n]:
            raise CaseFailed("the data on the device is not encrypted")
        _same("qemu-img's reading of the image on %s" % dev, ctx.qemu_read("qcow2", img), bytes(data))
        proc = ctx.run("qemu-io", *ctx.objects("s0"), "--image-opts", ctx.qemu_image("qcow2", img),
                       "-c", "read -P 0x5a %d %d" % (off, n))
        out = proc.stdout.decode(errors="replace")
        if "Pattern verification failed" in out or ("read %d/%d bytes at offset %d" % (n, n, off)) not in out:
            raise CaseFailed("qemu-io's read of the pattern pyqcrypt wrote: %s" % last_line(out))
    finally:
        _detach(dev)
    return "data file on a loop device: %d KiB identical, qemu-io's pattern check passed" % (len(data) >> 10)


def _zstd_image(ctx, data):
    raw = ctx.write("zstd-source.raw", data)
    img = ctx.path("qemu-zstd.qcow2")
    ctx.run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", raw, img)
    info = json.loads(ctx.run("qemu-img", "info", "--output=json", img).stdout)
    ctype = info.get("format-specific", {}).get("data", {}).get("compression-type")
    if ctype != "zstd":
        raise CaseFailed("qemu-img made a qcow2 image with compression type %r, not zstd" % (ctype,))
    check = ctx.run("qemu-img", "check", img).stdout.decode(errors="replace")
    share = re.search(r"([\d.]+)% compressed clusters", check)
    if not share or float(share.group(1)) == 0:
        raise CaseFailed("qemu-img convert -c left no compressed cluster: %s" % last_line(check))
    return img, share.group(1)


@case("qcow2-zstd", ("qemu-img", "qemu-io"),
      "pyqcrypt reads a qcow2 image qemu-img compressed with zstd, and converts it to qcow2-luks that "
      "qemu-img and qemu-io read")
def _zstd(ctx):
    import pyqcrypt
    ctx.need("qemu-img", "qemu-io")
    if not _native.have_zstd():
        raise CaseSkipped("pyqcrypt was built without libzstd")
    data = bytearray(_data(2 * MiB))
    off, n = MiB, MiB // 2
    data[off:off + n] = b"\x7e" * n          # compresses: random clusters stay as they are
    data = bytes(data)
    img, share = _zstd_image(ctx, data)
    _same("pyqcrypt's reading of qemu-img's zstd image", _read(img), data)
    out = ctx.path("from-zstd.qcow2")
    pyqcrypt.convert(img, out, dst_format="qcow2", dst_passphrase=PASSPHRASE, iterations=ITERATIONS)
    _same("qemu-img's reading of pyqcrypt's conversion", ctx.qemu_read("qcow2", out), data)
    proc = ctx.run("qemu-io", *ctx.objects("s0"), "--image-opts", ctx.qemu_image("qcow2", out),
                   "-c", "read -P 0x7e %d %d" % (off, n))
    text = proc.stdout.decode(errors="replace")
    if "Pattern verification failed" in text or ("read %d/%d bytes at offset %d" % (n, n, off)) not in text:
        raise CaseFailed("qemu-io's read of the decompressed pattern: %s" % last_line(text))
    return "%s%% of clusters zstd-compressed; %d KiB identical, qemu-io's pattern check passed" % (
        share, len(data) >> 10)
