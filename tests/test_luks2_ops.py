# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 headers pyqcrypt writes, checked by cryptsetup.

* ``format --type luks2`` and ``-O luks2``: ``cryptsetup luksDump`` reads
  them, ``open --test-passphrase`` takes the passphrase and refuses a wrong
  one, and cryptsetup's offline decryption of a detached-header volume
  gives back the plaintext pyqcrypt wrote.
* The keyslot verbs on LUKS2 (add, change, remove, kill, test, erase,
  header backup and restore, dump), each judged by cryptsetup.
* Killed at every write (strace's fault injection stops the process before
  the Nth write() call, libcryptsetup's writes included), change-key and
  add-key leave a passphrase that worked before still working.
* QEMU's image locks on LUKS2 volumes and headers.
* Keep-ciphertext from qcow2-luks to LUKS2: the same volume key and UUID,
  in place over the data file (a detached header) or as a new volume.
"""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import cs_accepts, qemu_img, qemu_secret, run, tool, write_file
from luks2util import KDF_ARGS, MiB, PW, cs_decrypt, make_luks2, volume_key
from test_locks import qemu_holding

pytestmark = pytest.mark.interop

PW2 = b"second luks2 passphrase"
PW3 = b"third luks2 passphrase"
CHEAP = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
ARGON = ("--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4",
         "--pbkdf-parallel", "1")

# The pyqcrypt under test (an installed one too), never whatever is on PATH.
PYQCRYPT = [sys.executable, "-m", "pyqcrypt"]


def pyq(*args, check=True):
    proc = subprocess.run(PYQCRYPT + [str(a) for a in args],
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail("pyqcrypt %s: exit %d: %s" % (" ".join(map(str, args)), proc.returncode,
                                                   proc.stderr))
    return proc


def keyfile(workdir, name, data):
    return write_file(os.path.join(workdir, name), data)


def luksdump(vol, header=None):
    args = [tool("cryptsetup"), "luksDump"] + (["--header", header] if header else []) + [vol]
    return run(args, text=True).stdout


def formatted(workdir, name="f.luks2", size=20 * MiB, extra=CHEAP):
    vol = os.path.join(workdir, name)
    with open(vol, "wb") as fh:
        fh.truncate(size)
    kf = keyfile(workdir, name + ".key", PW)
    pyq("format", "-q", "--type", "luks2", *extra, "--key-file", kf, vol)
    return vol, kf


# ---------------------------------------------------------------- format

@pytest.mark.parametrize("sector,kdf", [(None, ARGON), (4096, CHEAP), (512, ARGON), (2048, CHEAP)])
def test_format_luks2_read_by_cryptsetup(workdir, sector, kdf):
    extra = list(kdf) + (["--sector-size", str(sector)] if sector else [])
    vol, _ = formatted(workdir, extra=extra)
    dump = luksdump(vol)
    assert "Version:       \t2" in dump
    if sector:
        assert "sector: %d [bytes]" % sector in dump
    assert ("PBKDF:      argon2id" if "argon2id" in kdf else "PBKDF:      pbkdf2") in dump
    assert cs_accepts(vol, PW, workdir)
    assert not cs_accepts(vol, b"wrong", workdir)
    assert cs_accepts(vol, PW, workdir, slot=0)


def test_format_luks2_default_is_argon2id(workdir):
    """No --pbkdf: argon2id, as cryptsetup luksFormat (memory kept small)."""
    vol, _ = formatted(workdir, extra=["--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4"])
    assert "PBKDF:      argon2id" in luksdump(vol)


def test_format_luks2_detached_then_written_and_decrypted_by_cryptsetup(workdir):
    """A detached LUKS2 header pyqcrypt formats over an existing file; data
    written through pyqcrypt.open; cryptsetup's offline decryption gives
    the plaintext back (the header never touches the data file)."""
    import pyqcrypt
    data = os.path.join(workdir, "d.img")
    plain = os.urandom(6 * MiB)
    write_file(data, bytes(len(plain)))
    hdr = os.path.join(workdir, "d.hdr")
    kf = keyfile(workdir, "d.key", PW)
    pyq("format", "-q", "--type", "luks2", "--sector-size", "4096", *CHEAP, "--header", hdr,
        "--key-file", kf, data)
    with pyqcrypt.open(data, passphrase=PW, header=hdr, writable=True) as img:
        assert img.size == len(plain)
        img.write(0, plain[:100])               # a partial unit: read-modify-write
        img.write(100, plain[100:5 * MiB + 7])
        img.write(5 * MiB + 7, plain[5 * MiB + 7:])
        img.flush()
    run([tool("cryptsetup"), "reencrypt", "--decrypt", "--header", hdr, "--force-offline-reencrypt",
         "-q", "--key-file", kf, data])
    with open(data, "rb") as fh:
        assert fh.read() == plain


def test_format_luks1_options_refused_for_argon(workdir):
    vol = os.path.join(workdir, "x.img")
    with open(vol, "wb") as fh:
        fh.truncate(8 * MiB)
    kf = keyfile(workdir, "x.key", PW)
    proc = pyq("format", "-q", "--pbkdf", "argon2id", "--key-file", kf, vol, check=False)
    assert proc.returncode == 1 and "LUKS1 keyslots use pbkdf2 only" in proc.stderr
    proc = pyq("format", "-q", "--sector-size", "4096", "--key-file", kf, vol, check=False)
    assert proc.returncode == 1 and "--type luks2" in proc.stderr
    with open(vol, "rb") as fh:
        assert fh.read(4096) == bytes(4096)       # nothing written


# ---------------------------------------------------------------- keyslot verbs

def test_keyslot_verbs_judged_by_cryptsetup(workdir):
    vol, kf = formatted(workdir)
    kf2, kf3 = keyfile(workdir, "k2", PW2), keyfile(workdir, "k3", PW3)
    key_before = volume_key(vol, kf)
    out = pyq("add-key", "-v", *CHEAP, "--key-file", kf, vol, kf2).stdout
    assert "Key slot 1 created." in out
    assert cs_accepts(vol, PW2, workdir, slot=1)
    proc = pyq("add-key", *CHEAP, "--key-file", kf3, vol, kf3, check=False)
    assert proc.returncode == 2 and "No key available with this passphrase." in proc.stderr
    out = pyq("test-passphrase", "-v", "--key-file", kf2, vol).stdout
    assert "Key slot 1 unlocked." in out
    assert pyq("test-passphrase", "--key-file", kf3, vol, check=False).returncode == 2
    out = pyq("change-key", "-v", *CHEAP, "--key-file", kf2, vol, kf3).stdout
    assert "Key slot 1 changed (now in slot 2)." in out
    assert cs_accepts(vol, PW3, workdir) and not cs_accepts(vol, PW2, workdir)
    pyq("remove-key", "-q", "--key-file", kf3, vol)
    assert not cs_accepts(vol, PW3, workdir) and cs_accepts(vol, PW, workdir)
    pyq("add-key", *CHEAP, "-S", "5", "--key-file", kf, vol, kf2)
    proc = pyq("kill-slot", "--key-file", kf3, vol, 5, check=False)
    assert proc.returncode == 2                 # proof of access by another slot fails
    pyq("kill-slot", "--key-file", kf, vol, 5)
    assert not cs_accepts(vol, PW2, workdir)
    assert volume_key(vol, kf) == key_before    # the data key never changed


def test_dump_matches_cryptsetup(workdir):
    vol, kf = formatted(workdir)
    pyq("add-key", *CHEAP, "--key-file", kf, vol, keyfile(workdir, "k2", PW2))
    assert pyq("dump", vol).stdout == luksdump(vol)
    ours = pyq("dump", "--dump-volume-key", "-q", "--key-file", kf, vol).stdout
    theirs = run([tool("cryptsetup"), "luksDump", "--dump-volume-key", "-q", "--key-file", kf,
                  vol], text=True).stdout
    assert ours == theirs


def test_erase_and_header_backup_restore(workdir):
    vol, kf = formatted(workdir)
    bak = os.path.join(workdir, "v.bak")
    pyq("header-backup", "--header-backup-file", bak, vol)
    assert os.stat(bak).st_mode & 0o077 == 0
    proc = pyq("header-backup", "--header-backup-file", bak, vol, check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    # cryptsetup restores our backup, and we restore cryptsetup's
    theirs = os.path.join(workdir, "cs.bak")
    run([tool("cryptsetup"), "luksHeaderBackup", "--header-backup-file", theirs, vol])
    pyq("erase", "-q", vol)
    assert not cs_accepts(vol, PW, workdir)
    run([tool("cryptsetup"), "luksHeaderRestore", "-q", "--header-backup-file", bak, vol])
    assert cs_accepts(vol, PW, workdir)
    pyq("erase", "-q", vol)
    pyq("header-restore", "-q", "--header-backup-file", theirs, vol)
    assert cs_accepts(vol, PW, workdir)


# ---------------------------------------------------------------- crash safety

def _killed_at_every_write(workdir, vol, args, check):
    """Run pyqcrypt *args* on copies of *vol*, killed before its 1st, 2nd,
    ... write() until a run completes; *check(copy)* after each."""
    strace = tool("strace")
    n = 0
    while True:
        n += 1
        assert n < 200, "never completed"
        copy = os.path.join(workdir, "crash%d.img" % n)
        shutil.copyfile(vol, copy)
        cmd = [strace, "-f", "-o", "/dev/null", "-e", "trace=write,pwrite64,pwritev,pwritev2",
               "-e", "inject=write,pwrite64,pwritev,pwritev2:signal=KILL:when=%d" % n,
               ] + PYQCRYPT + [copy if a is None else a for a in args]
        proc = subprocess.run(cmd, capture_output=True)
        check(copy)
        os.unlink(copy)
        if proc.returncode == 0:
            return n
        assert proc.returncode in (-9, 137), proc.stderr


def test_change_key_killed_at_every_write_keeps_a_passphrase(workdir):
    vol, kf = formatted(workdir)
    kf2 = keyfile(workdir, "k2", PW2)
    key = volume_key(vol, kf)
    seen = set()

    def check(copy):
        old, new = cs_accepts(copy, PW, workdir), cs_accepts(copy, PW2, workdir)
        assert old or new, "neither passphrase opens after the kill"
        seen.add((old, new))
        assert volume_key(copy, kf if old else kf2) == key

    runs = _killed_at_every_write(workdir, vol, ["change-key", *CHEAP, "--key-file", kf, None, kf2],
                                  check)
    assert runs > 3
    assert (True, False) in seen and (False, True) in seen     # both sides of the switch seen


def test_add_key_killed_at_every_write_keeps_the_old_one(workdir):
    vol, kf = formatted(workdir)
    kf2 = keyfile(workdir, "k2", PW2)

    def check(copy):
        assert cs_accepts(copy, PW, workdir)

    assert _killed_at_every_write(workdir, vol, ["add-key", *CHEAP, "--key-file", kf, None, kf2],
                                  check) > 3


# ---------------------------------------------------------------- locks

def test_luks2_locked_against_qemu(workdir):
    """A qemu-io writing the volume (as raw: QEMU has no LUKS2) keeps every
    pyqcrypt writer and the convert out; while pyqcrypt writes it, qemu-io
    cannot write."""
    import pyqcrypt
    v = make_luks2(workdir, unit=4096)
    obj = qemu_secret(workdir, PW, "s")
    kf2 = keyfile(workdir, "k2", PW2)
    out = os.path.join(workdir, "out.qcow2")
    with qemu_holding(v.vol, "-f", "raw", v.vol):
        for args in (["add-key", *CHEAP, "--key-file", v.keyfile, v.vol, kf2],
                     ["convert", "--object", obj, "--image-opts", v.image_opts(), "-O", "qcow2",
                      "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", out],
                     ["convert", "--keep-ciphertext", "--object", obj, "--image-opts",
                      v.image_opts(), "-O", "qcow2", out]):
            proc = pyq(*args, check=False)
            busy = 5 if args[0] == "add-key" else 1         # cryptsetup's "busy"; qemu-img's 1
            assert proc.returncode == busy and "lock" in proc.stderr, proc.stderr
            assert not os.path.exists(out)
        with pytest.raises(pyqcrypt.Error, match="lock"):
            pyqcrypt.open(v.vol, passphrase=PW, writable=True)
        # -U reads beside a writer, as qemu-img -U does
        pyq("convert", "-U", "--object", obj, "--image-opts", v.image_opts(), "-O", "raw", out)
        os.unlink(out)
    with pyqcrypt.open(v.vol, passphrase=PW, writable=True):
        proc = subprocess.run([tool("qemu-io"), "-f", "raw", v.vol, "-c", "write 0 512"],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and "lock" in proc.stderr
    assert cs_accepts(v.vol, PW, workdir)


# ---------------------------------------------------------------- qcow2-luks -> LUKS2

def _qcow2_with_data_file(workdir, plain):
    raw = write_file(os.path.join(workdir, "plain.raw"), plain)
    obj = qemu_secret(workdir, PW, "s")
    img = os.path.join(workdir, "q.qcow2")
    pyq("convert", "--object", obj, "-O", "qcow2", "-o",
        "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10,data_file=%s.data,"
        "data_file_raw=on" % img, raw, img)
    return img, obj, raw


def test_keep_ciphertext_qcow2_to_luks2_detached_in_place(workdir):
    """The LUKS2 header pyqcrypt writes for the qcow2 image's own data file:
    cryptsetup opens it, its volume key is the image's, the UUID is kept,
    and cryptsetup's offline decryption of the data file gives the
    plaintext qemu-img reads from the qcow2 image."""
    plain = os.urandom(8 * MiB)
    img, obj, raw = _qcow2_with_data_file(workdir, plain)
    data = img + ".data"
    with open(data, "rb") as fh:
        ciphertext = fh.read()
    hdr = os.path.join(workdir, "q.hdr")
    pyq("convert", "--keep-ciphertext", "--verify", "--object", obj, "--image-opts",
        "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % img, "-O", "luks2",
        "-o", "pbkdf=pbkdf2,pbkdf-force-iterations=1000", "--header", hdr)
    with open(data, "rb") as fh:
        assert fh.read() == ciphertext                  # nothing copied, nothing changed
    kf = keyfile(workdir, "k", PW)
    assert cs_accepts(data, PW, workdir, header=hdr)
    assert not cs_accepts(data, PW2, workdir, header=hdr)
    qkey = pyq("dump", "--dump-volume-key", "-q", "--key-file", kf, img).stdout
    assert volume_key(data, kf, header=hdr).hex() in qkey.replace(" ", "").replace("\n", "").replace("\t", "")
    uuid = [ln.split()[-1] for ln in pyq("dump", img).stdout.splitlines() if ln.startswith("UUID")]
    assert "UUID:          \t%s" % uuid[0] in luksdump(data, hdr)
    # qemu-img still reads the image (the data file is untouched) ...
    qemu_img("compare", "--object", obj, "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % img,
             "driver=raw,file.filename=%s" % raw)
    # ... and cryptsetup decrypts a copy of it through our header
    copy = os.path.join(workdir, "copy.data")
    shutil.copyfile(data, copy)
    hcopy = os.path.join(workdir, "copy.hdr")
    shutil.copyfile(hdr, hcopy)
    run([tool("cryptsetup"), "reencrypt", "--decrypt", "--header", hcopy,
         "--force-offline-reencrypt", "-q", "--key-file", kf, copy])
    with open(copy, "rb") as fh:
        assert fh.read() == plain


def test_keep_ciphertext_qcow2_to_luks2_new_volume(workdir):
    import pyqcrypt
    plain = os.urandom(6 * MiB)
    img, obj, raw = _qcow2_with_data_file(workdir, plain)
    out = os.path.join(workdir, "n.luks2")
    obj2 = qemu_secret(workdir, PW2, "t")
    pyq("convert", "--keep-ciphertext", "--verify", "--object", obj, "--object", obj2,
        "--image-opts", "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % img, "-O", "luks2",
        "-o", "key-secret=t,pbkdf=pbkdf2,pbkdf-force-iterations=1000", out)
    assert cs_accepts(out, PW2, workdir) and not cs_accepts(out, PW, workdir)
    kf = keyfile(workdir, "k", PW)
    kf2 = keyfile(workdir, "k2", PW2)
    qkey = pyq("dump", "--dump-volume-key", "-q", "--key-file", kf, img).stdout
    assert volume_key(out, kf2).hex() in qkey.replace(" ", "").replace("\n", "").replace("\t", "")
    with pyqcrypt.open(out, passphrase=PW2) as vol:
        assert vol.read(0, len(plain)) == plain


def test_keep_ciphertext_to_luks2_refusals_leave_nothing(workdir):
    plain = os.urandom(2 * MiB)
    img, obj, raw = _qcow2_with_data_file(workdir, plain)
    out = os.path.join(workdir, "r.luks2")
    for extra, words in (([], "needs the image's passphrase"),
                         (["sector-size=4096"], "sector-size=512")):
        opts = ["pbkdf=pbkdf2", "pbkdf-force-iterations=1000"] + extra
        src = img if not words.startswith("needs") else img
        args = ["convert", "--keep-ciphertext", "--object", obj]
        args += (["--image-opts", "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % src]
                 if extra else [src])
        proc = pyq(*args, "-O", "luks2", "-o", ",".join(opts), out, check=False)
        assert proc.returncode == 1 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not [n for n in os.listdir(workdir) if n.startswith("r.luks2")]


# ---------------------------------------------------------------- re-encrypting into LUKS2

def test_reencrypt_luks1_into_luks2_detached(workdir):
    """-O luks2 with a detached header from a LUKS1 source: cryptsetup's
    offline decryption of the new payload is the source's plaintext."""
    plain = os.urandom(5 * MiB)
    raw = write_file(os.path.join(workdir, "p.raw"), plain)
    obj = qemu_secret(workdir, PW, "s")
    l1 = os.path.join(workdir, "v1.luks")
    pyq("convert", "--object", obj, "-O", "luks", "-o", "key-secret=s,iter-time=10", raw, l1)
    out, hdr = os.path.join(workdir, "o.data"), os.path.join(workdir, "o.hdr")
    pyq("convert", "--verify", "--object", obj, "--image-opts",
        "driver=luks,file.filename=%s,key-secret=s" % l1, "-O", "luks", "--type", "luks2",
        "-o", "key-secret=s,sector-size=4096,pbkdf=pbkdf2,pbkdf-force-iterations=1000,header=%s"
        % hdr, out)
    assert "sector: 4096 [bytes]" in luksdump(out, hdr)
    kf = keyfile(workdir, "k", PW)
    run([tool("cryptsetup"), "reencrypt", "--decrypt", "--header", hdr,
         "--force-offline-reencrypt", "-q", "--key-file", kf, out])
    with open(out, "rb") as fh:
        assert fh.read() == plain


def test_luks2_detached_roundtrip_through_cs_decrypt(workdir):
    """Our writes into a cryptsetup-made detached LUKS2 volume decrypt with
    cryptsetup to exactly what we wrote."""
    import pyqcrypt
    v = make_luks2(workdir, unit=4096, detached=True)
    new = bytearray(v.plain)
    patch = os.urandom(10000)
    with pyqcrypt.open(v.vol, passphrase=PW, header=v.header, writable=True) as img:
        img.write(12345, patch)
    new[12345:12345 + len(patch)] = patch
    v.plain = bytes(new)
    assert cs_decrypt(v) == v.plain


def test_info_luks2(workdir):
    import json
    v = make_luks2(workdir, unit=4096)
    info = json.loads(pyq("info", "--output", "json", v.vol).stdout)
    data = info["format-specific"]["data"]
    assert info["format"] == "luks2" and info["virtual-size"] == v.size
    assert data["sector-size"] == 4096 and data["readable"] is True
    assert data["uuid"] == run([tool("cryptsetup"), "luksUUID", v.vol], text=True).stdout.strip()
    assert [s["keyslot"] for s in data["slots"]] == [0]
    assert KDF_ARGS and data["slots"][0]["kdf"] in ("pbkdf2", "argon2id")


# ---------------------------------------------------------------- serpent, loop devices

def test_serpent_luks2_read_against_qemu(workdir):
    """serpent-xts-plain64 on LUKS2: cryptsetup cannot run serpent here (no
    dm-crypt, no AF_ALG), so QEMU encrypts the data (a LUKS1 volume made by
    qemu-img convert) and cryptsetup makes the LUKS2 header around the same
    volume key; the segment's cipher is then set to serpent (the keyslot
    area stays AES, which cryptsetup can open).  pyqcrypt must read QEMU's
    plaintext through the LUKS2 header, and convert it to a qcow2-luks image
    that qemu-img compares equal."""
    import pyqcrypt
    from luks2util import read_json, write_json
    plain = os.urandom(3 * MiB)
    raw = write_file(os.path.join(workdir, "p.raw"), plain)
    obj = qemu_secret(workdir, PW, "s")
    l1 = os.path.join(workdir, "q.luks")
    qemu_img("convert", "--object", obj, "-O", "luks", "-o",
             "key-secret=s,cipher-alg=serpent-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=10",
             raw, l1)
    kf = keyfile(workdir, "k", PW)
    mkfile = os.path.join(workdir, "mk")
    text = pyq("dump", "--dump-volume-key", "-q", "--key-file", kf, l1).stdout
    hexkey = "".join(text.split("MK dump:", 1)[1].split())
    write_file(mkfile, bytes.fromhex(hexkey))
    offset = int(text.split("Payload offset:", 1)[1].split()[0]) * 512
    data = os.path.join(workdir, "d.img")
    with open(l1, "rb") as src, open(data, "wb") as dst:
        src.seek(offset)
        dst.write(src.read())
    hdr = os.path.join(workdir, "d.hdr")
    run([tool("cryptsetup"), "luksFormat", "-q", "--type", "luks2", "--header", hdr,
         "--volume-key-file", mkfile, "--key-size", "512", "--cipher", "aes-xts-plain64",
         "--sector-size", "512", "--key-file", kf, *CHEAP, "--luks2-keyslots-size", "1M", data])
    doc = read_json(hdr)
    doc["segments"]["0"]["encryption"] = "serpent-xts-plain64"
    write_json(hdr, doc)
    assert "cipher: serpent-xts-plain64" in luksdump(data, hdr)
    with pyqcrypt.open(data, passphrase=PW, header=hdr) as vol:
        assert vol.read(0, len(plain)) == plain
    out = os.path.join(workdir, "s.qcow2")
    pyq("convert", "--object", obj, "--image-opts",
        "driver=luks,file.filename=%s,header=%s,key-secret=s" % (data, hdr), "-O", "qcow2",
        "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", out)
    qemu_img("compare", "--object", obj, "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % out,
             "driver=raw,file.filename=%s" % raw)


def test_keep_ciphertext_luks2_from_loop_device(workdir, loop_devices):
    """A LUKS2 volume with 512-byte sectors reached as a block device: kept
    as ciphertext with -p and --verify; qemu-img reads the plaintext."""
    v = make_luks2(workdir, unit=512, kdf="argon2id")
    dev = loop_devices(v.vol)
    obj = qemu_secret(workdir, PW, "s")
    out = os.path.join(workdir, "k.qcow2")
    proc = pyq("convert", "-p", "--verify", "--keep-ciphertext", "--object", obj, "--image-opts",
               "driver=luks,file.filename=%s,key-secret=s" % dev, "-O", "qcow2",
               "-o", "encrypt.iter-time=10", out)
    assert "100.00/100%" in proc.stdout
    want = write_file(os.path.join(workdir, "want.raw"), v.plain)
    qemu_img("compare", "--object", obj, "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % out,
             "driver=raw,file.filename=%s" % want)
    uuid = run([tool("cryptsetup"), "luksUUID", v.vol], text=True).stdout.strip()
    assert "UUID:          \t%s" % uuid in pyq("dump", out).stdout


def test_format_luks2_on_loop_device_then_written(workdir, loop_devices):
    """format --type luks2 on a block device (sector size as libcryptsetup
    picks it), then convert -n writes through its header; the pyca oracle
    decrypts the device with the key cryptsetup dumps."""
    from luks2util import pyca_crypt, segment
    backing = os.path.join(workdir, "dev.img")
    with open(backing, "wb") as fh:
        fh.truncate(40 * MiB)
    dev = loop_devices(backing)
    kf = keyfile(workdir, "k", PW)
    pyq("format", "-q", "--type", "luks2", *CHEAP, "--key-file", kf, dev)
    assert cs_accepts(dev, PW, workdir)
    plain = os.urandom(8 * MiB)
    raw = write_file(os.path.join(workdir, "r.raw"), plain)
    obj = qemu_secret(workdir, PW, "s")
    pyq("convert", "-n", "--object", obj, raw, "--target-image-opts",
        "driver=luks,file.filename=%s,key-secret=s" % dev)
    seg = segment(dev)
    key = volume_key(dev, kf)
    with open(dev, "rb") as fh:
        fh.seek(seg["offset"])
        ct = fh.read(len(plain))
    assert pyca_crypt(seg["cipher"], key, ct, seg["sector"], 0, False) == plain
