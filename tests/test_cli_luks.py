# SPDX-License-Identifier: LGPL-2.1-or-later
"""The LUKS commands end to end, checked with cryptsetup and qemu-img."""

import base64
import os
import subprocess
import sys

import pytest

import pyqcrypt

from conftest import (cs_accepts, cs_format, qemu_img, qemu_io, qemu_io_refused, qemu_secret, run, tool,
                      write_file)

PW, PW2, PW3 = b"one \xff\x00", b"two", b"three"


def cli(*args, stdin=subprocess.DEVNULL, input=None):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, stdin=None if input is not None else stdin,
                          input=input)


def ok(*args, **kw):
    proc = cli(*args, **kw)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


@pytest.fixture
def keys(workdir):
    return {name: write_file(os.path.join(workdir, name), pw)
            for name, pw in (("k1", PW), ("k2", PW2), ("k3", PW3))}


def test_format_refuses_without_confirmation(workdir, keys):
    vol = write_file(os.path.join(workdir, "v.img"), bytes(4 << 20))
    proc = cli("format", "--key-file", keys["k1"], vol)
    assert proc.returncode == 1 and b"--batch-mode" in proc.stderr
    assert open(vol, "rb").read(6) == bytes(6)            # untouched


def test_keyslot_verbs(workdir, keys):
    vol = write_file(os.path.join(workdir, "v.img"), bytes(4 << 20))
    ok("format", "-q", "--key-file", keys["k1"], "--pbkdf-force-iterations", 1000, vol)
    assert cs_accepts(vol, PW, workdir)
    ok("add-key", "--key-file", keys["k1"], "--pbkdf-force-iterations", 1000, "-S", 4, vol, keys["k2"])
    assert cs_accepts(vol, PW2, workdir, slot=4)
    proc = cli("test-passphrase", "-v", "--key-file", keys["k2"], vol)
    assert proc.returncode == 0 and b"Key slot 4 unlocked." in proc.stdout
    proc = cli("test-passphrase", "--key-file", keys["k3"], vol)
    assert proc.returncode == 2
    assert proc.stderr.decode() == "pyqcrypt: No key available with this passphrase.\n"
    ok("change-key", "--key-file", keys["k2"], "--new-key-file", keys["k3"],
       "--pbkdf-force-iterations", 1000, vol)
    assert cs_accepts(vol, PW3, workdir) and not cs_accepts(vol, PW2, workdir)
    ok("remove-key", vol, keys["k3"])
    assert not cs_accepts(vol, PW3, workdir)
    # The last keyslot needs confirmation.
    proc = cli("remove-key", "--key-file", keys["k1"], vol)
    assert proc.returncode == 1 and b"last keyslot" in proc.stderr
    assert cs_accepts(vol, PW, workdir)
    ok("add-key", "--key-file", keys["k1"], "--new-key-file", keys["k2"],
       "--pbkdf-force-iterations", 1000, vol)
    proc = cli("kill-slot", "--key-file", keys["k3"], vol, 0)     # wrong proof
    assert proc.returncode == 2
    ok("kill-slot", "--key-file", keys["k2"], vol, 0)
    assert not cs_accepts(vol, PW, workdir) and cs_accepts(vol, PW2, workdir)
    proc = cli("erase", vol)
    assert proc.returncode == 1 and b"--batch-mode" in proc.stderr
    ok("erase", "-q", vol)
    assert not cs_accepts(vol, PW2, workdir)


def test_key_file_from_stdin_offset_and_size(workdir, keys):
    vol = cs_format(workdir, "cs.luks", b"middle")
    ok("test-passphrase", "--key-file", "-", vol, input=b"middle")
    blob = write_file(os.path.join(workdir, "blob"), b"xxxxmiddleyyyy")
    ok("test-passphrase", "--key-file", blob, "--keyfile-offset", 4, "--keyfile-size", 6, vol)
    proc = cli("test-passphrase", "--key-file", blob, vol)
    assert proc.returncode == 2


def test_detached_header_cli(workdir, keys):
    data = write_file(os.path.join(workdir, "data.img"), bytes(2 << 20))
    hdr = os.path.join(workdir, "hdr.img")
    ok("format", "-q", "--key-file", keys["k1"], "--pbkdf-force-iterations", 1000, "--header", hdr, data)
    assert open(data, "rb").read() == bytes(2 << 20)           # payload untouched
    assert cs_accepts(data, PW, workdir, header=hdr)
    dump = ok("dump", "--header", hdr, data).stdout
    assert dump == run([tool("cryptsetup"), "luksDump", "--header", hdr, data]).stdout
    ok("add-key", "--header", hdr, "--key-file", keys["k1"], "--pbkdf-force-iterations", 1000, data, keys["k2"])
    assert cs_accepts(data, PW2, workdir, header=hdr)


def test_dump_volume_key_matches_cryptsetup(workdir, keys):
    vol = cs_format(workdir, "cs.luks", PW, "aes-cbc-essiv:sha256", 192)
    ours = ok("dump", "-q", "--dump-volume-key", "--key-file", keys["k1"], vol).stdout
    theirs = run([tool("cryptsetup"), "luksDump", "-q", "--dump-volume-key", "--key-file",
                  keys["k1"], vol]).stdout
    assert ours == theirs


def test_create_luks_qemu_syntax_and_amend(workdir):
    vol = os.path.join(workdir, "new.luks")
    s0 = qemu_secret(workdir, b"secret zero", "sec0")
    s1 = qemu_secret(workdir, b"secret one", "sec1")
    ok("create", "-f", "luks", "--object", s0, "-o", "key-secret=sec0,iter-time=10,"
       "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256", vol, "1M")
    image = "driver=luks,file.filename=%s,key-secret=sec0" % vol
    # (qemu-img info opens without I/O and never tries the key: metadata only.)
    info = qemu_img("info", "--object", s0, "--image-opts", image).stdout.decode()
    assert "virtual size: 1 MiB" in info
    # QEMU unlocks our volume: what pyqcrypt writes, qemu-io reads back.
    with pyqcrypt.open(vol, passphrase=b"secret zero", writable=True) as img:
        img.write(4096, b"\x5a" * 8192)
    qemu_io(image, "read -P 0x5a 4096 8192", objects=[s0])
    # ... and that check can fail: a wrong secret is refused.
    wrong = "secret,id=sec0,file=%s" % write_file(os.path.join(workdir, "wrong"), b"secret zer0")
    qemu_io_refused(image, "read -P 0x5a 4096 8192", objects=[wrong])
    ok("amend", "--object", s0, "--object", s1, "--image-opts", image,
       "-o", "state=active,keyslot=3,new-secret=sec1,iter-time=10")
    assert cs_accepts(vol, b"secret one", workdir, slot=3)
    qemu_io("driver=luks,file.filename=%s,key-secret=sec1" % vol, "read -P 0x5a 4096 8192",
            objects=[s1])
    proc = cli("amend", "--object", s0, "--object", s1, "--image-opts", image,
               "-o", "state=active,keyslot=3,new-secret=sec1")
    assert proc.returncode == 1 and b"refusing to overwrite active keyslot 3" in proc.stderr
    ok("amend", "--object", s0, "--image-opts", image, "-o", "state=inactive,old-secret=sec0")
    assert not cs_accepts(vol, b"secret zero", workdir)
    image1 = "driver=luks,file.filename=%s,key-secret=sec1" % vol
    proc = cli("amend", "--object", s1, "--image-opts", image1, "-o", "state=inactive,keyslot=3")
    assert proc.returncode == 1 and b"only active keyslot" in proc.stderr
    ok("amend", "--object", s1, "--image-opts", image1, "--force", "-o", "state=inactive,keyslot=3")
    assert not cs_accepts(vol, b"secret one", workdir)


def test_create_leaves_nothing_on_failure(workdir):
    vol = os.path.join(workdir, "never.luks")
    s0 = qemu_secret(workdir, b"x", "sec0")
    for opts in ("key-secret=sec0,cipher-alg=cast6-256", "key-secret=nosuch",
                 "key-secret=sec0,hash-alg=nohash", "key-secret=sec0,bogus=1"):
        proc = cli("create", "-f", "luks", "--object", s0, "-o", opts, vol, "1M")
        assert proc.returncode == 1, opts
        assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr
        assert os.listdir(workdir) == ["sec0.secret"], (opts, os.listdir(workdir))


def test_data_secret_warns(workdir):
    vol = os.path.join(workdir, "w.luks")
    proc = ok("create", "-q", "-f", "luks", "--object", "secret,id=s,data=visible", "-o",
              "key-secret=s,iter-time=10", vol, "64K")
    assert b"process list" in proc.stderr and b"visible" not in proc.stderr


def test_encrypted_secret_same_as_qemu(workdir):
    """keyid/iv secrets decrypt to what QEMU decrypts them to: a volume we
    create with one is read by qemu-io with the same --object lines."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    master, iv = os.urandom(32), os.urandom(16)
    secret = "pässword".encode()
    pad = 16 - len(secret) % 16
    enc = Cipher(algorithms.AES(master), modes.CBC(iv)).encryptor()
    ct = enc.update(secret + bytes([pad]) * pad) + enc.finalize()
    mfile = write_file(os.path.join(workdir, "master.key"), base64.b64encode(master))
    objs = ["--object", "secret,id=master,file=%s,format=base64" % mfile,
            "--object", "secret,id=sec0,data=%s,format=base64,keyid=master,iv=%s"
            % (base64.b64encode(ct).decode(), base64.b64encode(iv).decode())]
    vol = os.path.join(workdir, "e.luks")
    ok("create", "-q", "-f", "luks", *objs, "-o", "key-secret=sec0,iter-time=10", vol, "1M")
    assert cs_accepts(vol, secret, workdir)
    # QEMU decrypts the same secret: it reads what we wrote with the passphrase.
    with pyqcrypt.open(vol, passphrase=secret, writable=True) as img:
        img.write(0, b"\xe7" * 65536)
    image = "driver=luks,file.filename=%s,key-secret=sec0" % vol
    qemu_io(image, "read -P 0xe7 0 65536", objects=objs[1::2])
    # A different IV decrypts the secret to something else: refused.
    bad_iv = base64.b64encode(bytes(b ^ 1 for b in iv)).decode()
    qemu_io_refused(image, "read -P 0xe7 0 65536",
                    objects=[objs[1], objs[3].replace(base64.b64encode(iv).decode(), bad_iv)])
