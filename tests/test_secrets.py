# SPDX-License-Identifier: LGPL-2.1-or-later
"""Secret handling: sources (objects, key files, keyring, prompt), and the
guarantee that a passphrase never shows up in any output, error or repr,
even with --debug."""

import base64
import ctypes
import os
import platform
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

import pyqcrypt
from pyqcrypt.secrets import SecretStore, parse_options

from conftest import qemu_io, qemu_io_refused, write_file

SECRET = b"Sup3r-Secret-Pa55phrase-7f3a"
FORMS = [SECRET, SECRET.hex().encode(), base64.b64encode(SECRET), SECRET[:12], SECRET[-12:]]


def cli(*args, stdin=subprocess.DEVNULL, input=None):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)], capture_output=True,
                          stdin=None if input is not None else stdin, input=input)


def _assert_clean(blob, context):
    for form in FORMS:
        assert form not in blob, "secret (%r form) leaked in %s" % (form[:6], context)


def test_debug_output_never_contains_the_passphrase(workdir):
    key = write_file(os.path.join(workdir, "key"), SECRET)
    wrong = write_file(os.path.join(workdir, "wrong"), b"not it")
    vol = os.path.join(workdir, "v.luks")
    img = os.path.join(workdir, "i.qcow2")
    obj = "secret,id=s,file=%s" % key
    data_obj = "secret,id=d,data=%s" % SECRET.decode()
    commands = [
        ("create", "-q", "-f", "luks", "--object", obj, "-o", "key-secret=s,iter-time=10", vol, "1M"),
        ("create", "-q", "-f", "qcow2", "--object", data_obj, "-o",
         "encrypt.format=luks,encrypt.key-secret=d,encrypt.iter-time=10", img, "1M"),
        ("test-passphrase", "-v", "--key-file", key, vol),
        ("test-passphrase", "--key-file", wrong, vol),
        ("test-passphrase", "--key-file", wrong, img),
        ("dump", vol), ("info", "--output", "json", img), ("check", img),
        ("add-key", "--key-file", wrong, vol, key),
        ("add-key", "--key-file", key, "--pbkdf-force-iterations", 1000, vol, wrong),
        ("change-key", "--key-file", wrong, "--new-key-file", key, vol),
        ("remove-key", vol, wrong),
        ("amend", "--object", data_obj, "--image-opts", "driver=luks,file.filename=%s,key-secret=d"
         % vol, "-o", "state=inactive,old-secret=d"),
        ("convert", "--object", obj, "--image-opts", "driver=qcow2,file.filename=%s,encrypt.key-secret=s"
         % img, "-O", "raw", os.path.join(workdir, "o.raw")),
        ("convert", "--object", "secret,id=w,file=%s" % wrong, "--image-opts",
         "driver=luks,file.filename=%s,key-secret=w" % vol, "-O", "raw", os.path.join(workdir, "x.raw")),
        ("create", "-f", "luks", "--object", "secret,id=b,data=%s,format=base64" % SECRET.decode(), "-o",
         "key-secret=b", os.path.join(workdir, "b.luks"), "1M"),
        ("create", "-f", "luks", "--object", "secret,id=c,data=%s,%s" % (SECRET[:10].decode(),
                                                                           SECRET[10:].decode()),
         "-o", "key-secret=c", os.path.join(workdir, "c.luks"), "1M"),
        ("create", "-f", "luks", "--object", data_obj + ",keyid=s,iv=AAAAAAAAAAAAAAAAAAAAAA==", "-o",
         "key-secret=d", os.path.join(workdir, "k.luks"), "1M"),
    ]
    failures = 0
    for args in commands:
        for debug in ((), ("--debug",)):
            proc = cli(*(debug + args))
            _assert_clean(proc.stdout + proc.stderr, " ".join(map(str, debug + args[:1])))
            failures += proc.returncode != 0
    assert failures >= 10          # the failure paths really ran


def test_reprs_and_errors_hide_secrets(workdir):
    from pyqcrypt.crypto import SecretBuffer, SectorCipher
    buf = SecretBuffer.from_bytes(SECRET)
    _assert_clean(repr(buf).encode(), "SecretBuffer repr")
    cipher = SectorCipher("aes-xts-plain64", (SECRET * 3)[:64])
    _assert_clean(repr(cipher).encode(), "SectorCipher repr")
    store = SecretStore(warn=lambda m: None)
    store.add_object("secret,id=x,data=%s" % SECRET.decode())
    store.add_object("secret,id=y,data=%s,format=base64" % base64.b64encode(SECRET).decode())
    assert store.get("x").equals(SECRET) and store.get("y").equals(SECRET)   # both held now
    shown = repr(store)
    assert "'x'" in shown and "'y'" in shown, shown         # the repr says what the store holds...
    _assert_clean(shown.encode(), "SecretStore repr")       # ...but never a secret
    store.close()
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, 1 << 20, "luks", passphrase=SECRET, iterations=1000)
    with pytest.raises(pyqcrypt.WrongPassphrase) as info:
        pyqcrypt.open(vol, passphrase=SECRET[::-1])
    _assert_clean(str(info.value).encode(), "WrongPassphrase")
    with pyqcrypt.open(vol, passphrase=SECRET) as img:
        _assert_clean(repr(img).encode(), "pyqcrypt.Image repr")
    with pyqcrypt.image.open_image(vol, passphrase=SECRET) as inner:
        _assert_clean(repr(inner).encode() + repr(inner.header).encode(), "image reprs")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_object_strings_fuzzed(tail):
    """Arbitrary --object text: a SecretStore error at most, and the error
    never quotes the secret value."""
    store = SecretStore(warn=lambda m: None)
    text = "secret,id=x,data=" + SECRET.decode() + "," + tail
    try:
        store.add_object(text)
        store.get("x")
    except pyqcrypt.Error as exc:
        _assert_clean(str(exc).encode(), "object error")
    finally:
        store.close()
    try:
        parse_options(tail, implied_key="qom-type", redact=True)
    except pyqcrypt.Error:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_json_objects_fuzzed(tail):
    """The JSON form of --object: a SecretStore error at most, never
    quoting the secret, whatever follows it."""
    import json
    store = SecretStore(warn=lambda m: None)
    head = json.dumps({"qom-type": "secret", "id": "x", "data": SECRET.decode()})
    try:
        store.add_object(head[:-1] + tail)
        store.get("x")
    except pyqcrypt.Error as exc:
        _assert_clean(str(exc).encode(), "JSON object error")
    finally:
        store.close()


def test_json_object_as_qemu_img_takes_it(workdir):
    """qemu-img's JSON --object: the same text defines the same secret for
    both tools, with file= or data= and format=base64."""
    import json
    key = write_file(os.path.join(workdir, "key"), SECRET)
    by_file = json.dumps({"qom-type": "secret", "id": "s0", "file": key})
    by_data = json.dumps({"qom-type": "secret", "id": "s1", "format": "base64",
                          "data": base64.b64encode(SECRET).decode()})
    img = os.path.join(workdir, "j.qcow2")
    proc = cli("create", "-q", "-f", "qcow2", "--object", by_file, "-o",
               "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", img, "1M")
    assert proc.returncode == 0, proc.stderr
    qemu_io("driver=qcow2,file.filename=%s,encrypt.key-secret=s1" % img, "write -P 0x42 0 4096",
            objects=[by_data])
    with pyqcrypt.open(img, passphrase=SECRET) as opened:
        assert opened.read(0, 4096) == b"\x42" * 4096
    proc = cli("test-passphrase", "--key-file", key, img)
    assert proc.returncode == 0
    for bad, message in [('{"qom-type": "secret", "id": "s", "id": "t", "file": "k"}', "given twice"),
                         ('{"qom-type": "secret", "id": "s", "data": %s' % json.dumps(SECRET.decode()),
                          "not valid JSON"),
                         ('{"qom-type": "secret", "id": "s", "data": ["x"]}', "string or an integer")]:
        proc = cli("create", "-f", "luks", "--object", bad, "-o", "key-secret=s",
                   os.path.join(workdir, "no.luks"), "1M")
        assert proc.returncode == 1 and message.encode() in proc.stderr, proc.stderr
        _assert_clean(proc.stderr, "JSON --object error")


def test_base64_secret_is_decoded_into_a_secret_buffer(monkeypatch):
    """format=base64 decodes straight into key memory: Python's base64
    module (which returns immutable bytes nobody can wipe) is never
    called, and the result matches it on valid and invalid input."""
    import binascii
    from pyqcrypt.crypto import SecretBuffer
    from pyqcrypt.secrets import _b64
    cases = [b"", b"QQ==", b"QUI=", b"QUJD", base64.b64encode(SECRET), b"Q===", b"QQ=", b"Q",
             b"QQ==QQ==", b"QU\nJD", b"=QQ=", b"QQ=a", b"QU JD", b"QU-_"]
    expected = []
    for text in cases:
        try:
            expected.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            expected.append(None)

    def forbidden(*args, **kwargs):
        raise AssertionError("a secret went through the base64 module")
    monkeypatch.setattr(base64, "b64decode", forbidden)
    monkeypatch.setattr(binascii, "a2b_base64", forbidden)
    for text, want in zip(cases, expected):
        try:
            with _b64(SecretBuffer.from_bytes(text), "x") as out:
                assert isinstance(out, SecretBuffer)
                got = out.reveal()
        except pyqcrypt.Error as exc:
            assert "not valid base64" in str(exc)
            got = None
        assert got == want, (text, got, want)


def test_no_tty_no_key_source_is_clear(workdir):
    vol = os.path.join(workdir, "v.luks")
    pyqcrypt.create(vol, 1 << 20, "luks", passphrase=b"x", iterations=1000)
    proc = cli("test-passphrase", vol)
    assert proc.returncode == 1 and b"--key-file" in proc.stderr


def _session_key(payload, name=b"pyqcrypt-test"):
    if platform.machine() != "x86_64":
        pytest.skip("keyring test uses x86_64 syscall numbers")
    libc = ctypes.CDLL(None, use_errno=True)
    serial = libc.syscall(248, b"user", b"%s-%d" % (name, os.getpid()), payload, len(payload), -3)
    if serial < 0:
        pytest.skip("the kernel keyring is not available here (%s)" % os.strerror(ctypes.get_errno()))
    return serial


def test_kernel_keyring_secret_same_as_qemu(workdir):
    serial = _session_key(SECRET)
    vol = os.path.join(workdir, "kr.luks")
    obj = "secret_keyring,id=k,serial=%d" % serial
    proc = cli("create", "-q", "-f", "luks", "--object", obj, "-o", "key-secret=k,iter-time=10", vol, "1M")
    assert proc.returncode == 0, proc.stderr
    image = "driver=luks,file.filename=%s,key-secret=k" % vol
    # QEMU takes the passphrase from the same key and unlocks the volume:
    # it reads what we wrote (qemu-img info would not even try the key).
    with pyqcrypt.open(vol, passphrase=SECRET, writable=True) as img:
        img.write(0, b"\x24" * 4096)
    probe = qemu_io(image, "read -P 0x24 0 4096", objects=[obj], check=False)
    if probe.returncode != 0 and "secret_keyring" in probe.stderr:
        pytest.skip("this qemu-io lacks secret_keyring")
    qemu_io(image, "read -P 0x24 0 4096", objects=[obj])
    # A key holding another passphrase is refused: the check above can fail.
    wrong = _session_key(SECRET[::-1], b"pyqcrypt-wrong")
    qemu_io_refused(image, "read -P 0x24 0 4096", objects=["secret_keyring,id=k,serial=%d" % wrong])
    qemu_io(image, "write -P 0x42 4096 4096", objects=[obj])
    with pyqcrypt.open(vol, passphrase=SECRET) as img:
        assert img.read(0, 8192) == b"\x24" * 4096 + b"\x42" * 4096
    proc = cli("test-passphrase", "--key-file", "-", vol, input=SECRET)
    assert proc.returncode == 0
    proc = cli("create", "-f", "luks", "--object", "secret_keyring,id=k,serial=1", "-o", "key-secret=k",
               os.path.join(workdir, "no.luks"), "1M")
    assert proc.returncode == 1 and b"cannot read key 1" in proc.stderr


def _run_on_tty(args, answers, timeout=20):
    """Run pyqcrypt on a new pseudo-terminal (its controlling TTY), typing
    each answer after a prompt; returns (exit code, everything shown).  A
    child that does not finish in *timeout* seconds is killed (exit code
    -9): never a silent 0."""
    import pty
    import select
    import time
    pid, fd = pty.fork()
    if pid == 0:                                        # child
        os.execv(sys.executable, [sys.executable, "-m", "pyqcrypt"] + list(map(str, args)))
    shown = b""
    pending = list(answers)
    deadline = time.time() + timeout
    status = None
    try:
        while time.time() < deadline and status is None:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:                         # EIO: the child closed the terminal
                    chunk = b""
                shown += chunk
                if pending and chunk.rstrip().endswith(b":"):
                    os.write(fd, pending.pop(0) + b"\n")
                if chunk:
                    continue
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
    finally:
        if status is None:
            while time.time() < deadline:               # it closed the terminal: wait for the exit
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = st
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, 9)                         # never wait forever on a stuck child
                _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown


def test_prompt_without_echo(workdir):
    vol = os.path.join(workdir, "tty.luks")
    pyqcrypt.create(vol, 1 << 20, "luks", passphrase=SECRET, iterations=1000)
    status, shown = _run_on_tty(["test-passphrase", "-v", vol], [SECRET])
    assert status == 0, (status, shown)
    assert b"Enter passphrase:" in shown and b"Key slot 0 unlocked." in shown
    _assert_clean(shown, "terminal echo")
    # A wrong passphrase typed at the prompt: exit 2, as cryptsetup.
    status, shown = _run_on_tty(["test-passphrase", vol], [b"not the passphrase"])
    assert status == 2 and b"No key available" in shown, (status, shown)
    # New passphrases are asked twice; a mismatch is refused.
    status, shown = _run_on_tty(["add-key", "--pbkdf-force-iterations", 1000, vol],
                                [SECRET, b"new one", b"different"])
    assert status == 1, (status, shown)
    assert b"Verify passphrase:" in shown and b"do not match" in shown
    _assert_clean(shown, "terminal echo")
    from pyqcrypt import luks
    with luks.open_area(vol) as area:
        assert area.header.active_slots() == [0]            # the refused add-key added nothing
