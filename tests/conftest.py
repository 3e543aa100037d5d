# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shared fixtures: scratch space, the peer tools, and a test-side LUKS1 parser.

The parser here is deliberately independent of pyqcrypt's own (it is a few
lines of ``struct``), so interop tests do not check pyqcrypt against itself.
"""

import os
import shutil
import struct
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEROP_DIR = os.path.join(os.path.dirname(ROOT), "shared", "interop")


def tool(name):
    """Path of a peer tool, or skip the test naming what is missing."""
    path = shutil.which(name) or (os.path.join("/usr/sbin", name)
                                  if os.path.exists(os.path.join("/usr/sbin", name)) else None)
    if path is None:
        package = {"qemu-img": "qemu-utils", "qemu-io": "qemu-utils",
                   "cryptsetup": "cryptsetup-bin"}.get(name, name)
        pytest.skip("%s is not installed (Debian package %s)" % (name, package))
    return path


def run(args, **kw):
    """Run a command, failing the test with its output if it fails."""
    kw.setdefault("capture_output", True)
    proc = subprocess.run(args, **kw)
    if proc.returncode != 0:
        pytest.fail("command failed (%d): %s\nstdout: %s\nstderr: %s" % (
            proc.returncode, " ".join(map(str, args)), proc.stdout, proc.stderr))
    return proc


@pytest.fixture
def workdir():
    """A scratch directory, in RAM (/dev/shm) where the machine has it."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="pyqcrypt-test-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def parse_luks1(data):
    """Minimal LUKS1 header parse for tests: a dict of the fields."""
    assert data[:6] == b"LUKS\xba\xbe", "not a LUKS header"
    (version,) = struct.unpack_from(">H", data, 6)
    cstr = lambda off, n: data[off:off + n].split(b"\0", 1)[0].decode()
    hdr = {
        "version": version,
        "cipher_name": cstr(8, 32),
        "cipher_mode": cstr(40, 32),
        "hash_spec": cstr(72, 32),
        "payload_offset": struct.unpack_from(">I", data, 104)[0],
        "key_bytes": struct.unpack_from(">I", data, 108)[0],
        "mk_digest": data[112:132],
        "mk_digest_salt": data[132:164],
        "mk_digest_iter": struct.unpack_from(">I", data, 164)[0],
        "uuid": cstr(168, 40),
        "slots": [],
    }
    for i in range(8):
        active, iters = struct.unpack_from(">II", data, 208 + 48 * i)
        salt = data[216 + 48 * i:248 + 48 * i]
        km_off, stripes = struct.unpack_from(">II", data, 248 + 48 * i)
        hdr["slots"].append({"active": active == 0x00AC71F3, "iterations": iters,
                             "salt": salt, "km_offset": km_off, "stripes": stripes})
    return hdr


def luks1_master_key(path, passphrase, header_path=None):
    """Recover a LUKS1 master key with pyqcrypt's primitives (PBKDF2, the
    sector cipher, AF merge) and this file's independent header parser.
    Returns (header dict, master key bytes, slot number)."""
    import hashlib
    from pyqcrypt.crypto import CipherSpec, SectorCipher, af_merge, pbkdf2
    with open(header_path or path, "rb") as fh:
        data = fh.read(1 << 20)
    hdr = parse_luks1(data)
    spec = CipherSpec.from_luks(hdr["cipher_name"], hdr["cipher_mode"], hdr["key_bytes"])
    kb = hdr["key_bytes"]
    for n, slot in enumerate(hdr["slots"]):
        if not slot["active"]:
            continue
        split_key = pbkdf2(hdr["hash_spec"], passphrase, slot["salt"], slot["iterations"], kb)
        sectors = (kb * slot["stripes"] + 511) // 512
        material = bytearray(data[slot["km_offset"] * 512:(slot["km_offset"] + sectors) * 512])
        with SectorCipher(spec, split_key) as cipher:
            cipher.decrypt(material, 0)
        mk = af_merge(material, kb, slot["stripes"], hdr["hash_spec"]).reveal()
        try:
            digest = hashlib.pbkdf2_hmac(hdr["hash_spec"], mk, hdr["mk_digest_salt"],
                                         hdr["mk_digest_iter"], 20)
        except ValueError:      # e.g. whirlpool, which hashlib may lack
            digest = pbkdf2(hdr["hash_spec"], mk, hdr["mk_digest_salt"],
                            hdr["mk_digest_iter"], 20).reveal()
        if digest == hdr["mk_digest"]:
            return hdr, mk, n
    raise AssertionError("no keyslot opened")


def write_file(path, data):
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def cs_format(workdir, name, passphrase, cipher="aes-xts-plain64", bits=512, hash_name="sha256",
              size=4 << 20, header=None, extra=()):
    """A LUKS1 volume made by cryptsetup (1000 iterations); returns its path."""
    cs = tool("cryptsetup")
    vol = os.path.join(workdir, name)
    with open(vol, "wb") as fh:
        fh.truncate(size)
    keyfile = write_file(os.path.join(workdir, name + ".key"), passphrase)
    args = [cs, "luksFormat", "--type", "luks1", "-q", "--cipher", cipher, "--key-size", str(bits),
            "--hash", hash_name, "--pbkdf-force-iterations", "1000", "--key-file", keyfile]
    if header:
        args += ["--header", header]
    run(args + list(extra) + [vol])
    return vol


def cs_accepts(vol, passphrase, workdir, header=None, slot=None):
    """True when cryptsetup --test-passphrase accepts *passphrase*."""
    cs = tool("cryptsetup")
    keyfile = write_file(os.path.join(workdir, "probe.key"), passphrase)
    args = [cs, "luksOpen", "--test-passphrase", "--key-file", keyfile]
    if header:
        args += ["--header", header]
    if slot is not None:
        args += ["--key-slot", str(slot)]
    proc = subprocess.run(args + [vol], capture_output=True)
    if proc.returncode == 1 and b"No usable keyslot" in proc.stderr:
        return False          # cryptsetup's answer when no keyslot is active
    if proc.returncode not in (0, 2):
        pytest.fail("cryptsetup failed unexpectedly: %s" % proc.stderr)
    return proc.returncode == 0


def qemu_secret(workdir, passphrase, sid="sec0"):
    path = write_file(os.path.join(workdir, sid + ".secret"), passphrase)
    return "secret,id=%s,file=%s" % (sid, path)


def qemu_img_create(args, attempts=5):
    """Run ``qemu-img create`` (args after the command name), retrying when
    QEMU's own PBKDF benchmark gives up under load ("Unable to get accurate
    CPU usage", which tiny iter-time values provoke on a busy machine)."""
    qemu_img = tool("qemu-img")
    for _ in range(attempts):
        proc = subprocess.run([qemu_img, "create", "-q"] + list(args), capture_output=True)
        if proc.returncode == 0:
            return proc
        if b"Unable to get accurate CPU usage" not in proc.stderr:
            break
    pytest.fail("qemu-img create failed: %s" % proc.stderr.decode(errors="replace"))


def two_key_volume(path, pw1, pw2):
    """A small pyqcrypt LUKS1 volume (aes-xts-256) with pw1 in slot 0 and
    pw2 in slot 1; the starting point of the keyslot fault tests."""
    import pyqcrypt
    from pyqcrypt import luks
    pyqcrypt.create(path, 64 << 10, "luks", passphrase=pw1, spec="aes-xts-plain64", key_bits=256,
                    iterations=1000)
    with luks.open_area(path, writable=True) as area:
        _, mk = luks.unlock(area, pw1)
        with mk:
            luks.add_key(area, mk, pw2, iterations=1000)
    return path


def luks_opens(vol, pw):
    """True when *pw* unlocks the LUKS1 volume *vol* (with pyqcrypt)."""
    import pyqcrypt
    from pyqcrypt import luks
    try:
        with luks.open_area(vol) as area:
            luks.unlock(area, pw)[1].wipe()
        return True
    except pyqcrypt.WrongPassphrase:
        return False
