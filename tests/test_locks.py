# SPDX-License-Identifier: LGPL-2.1-or-later
"""QEMU's image locks on raw LUKS volumes and detached headers.

A real qemu-io in the background holds a volume (or a header file); every
pyqcrypt writer must refuse with the "in use" error and leave the bytes
alone, readers must refuse too unless -U/--force-share, and while
pyqcrypt holds a volume a real qemu-io must fail to get its lock.  Also:
what happens where the file system refuses OFD locks (NFS).
"""

import contextlib
import errno
import hashlib
import os
import subprocess
import sys
import time
import warnings

import pytest

import pyqcrypt
from pyqcrypt import cli, locks, luks
from pyqcrypt.luks.device import open_volume

from conftest import cs_accepts, cs_format, qemu_io, qemu_secret, run, tool, write_file

PW = b"lock test passphrase"
PW2 = b"the second passphrase"

pytestmark = pytest.mark.interop


def _digest(*paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def _ofd_locks(path):
    """The byte offsets of the OFD locks anyone holds on *path* (from
    /proc/locks: "N: OFDLCK ADVISORY READ -1 MAJ:MIN:INODE START END")."""
    st = os.stat(path)
    ident = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    out = set()
    with open("/proc/locks") as fh:
        for line in fh:
            f = line.split()
            if "OFDLCK" not in f or "->" in f:
                continue
            i = f.index("OFDLCK")
            if f[i + 4] == ident and f[-1].isdigit():
                out.update(range(int(f[-2]), int(f[-1]) + 1))
    return out


def _qemu_io_ro(path, cmd="read 0 512"):
    """qemu-io -r -f raw: a read-only QEMU user of the file."""
    return subprocess.run([tool("qemu-io"), "-r", "-f", "raw", path, "-c", cmd],
                          capture_output=True, text=True)


@contextlib.contextmanager
def qemu_holding(path, *args, objects=()):
    """A background qemu-io that has *path* open (sleeping), until the
    with block ends; waits until its locks are visible in /proc/locks."""
    cmd = [tool("qemu-io")]
    for obj in objects:
        cmd += ["--object", obj]
    cmd += list(args) + ["-c", "sleep 20000"]
    before = _ofd_locks(path)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 20
        while _ofd_locks(path) == before:
            if proc.poll() is not None:
                pytest.fail("qemu-io exited: %s" % proc.stderr.read().decode(errors="replace"))
            assert time.time() < deadline, "qemu-io never took its locks"
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def _luks_opts(vol, sid="sec0"):
    return "driver=luks,file.filename=%s,key-secret=%s" % (vol, sid)


def _pyq(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "pyqcrypt"] + [str(a) for a in args],
                          capture_output=True, text=True, input=stdin)


def _refused(proc, code=5):
    """Refused in one line; the LUKS verbs exit 5 (cryptsetup's "busy"),
    qemu-img's verbs 1."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyqcrypt: "), proc.stderr
    assert "is in use" in lines[0] and "lock" in lines[0], proc.stderr


def _writer_commands(workdir, vol, header=None):
    """Every pyqcrypt command that rewrites the LUKS header or keyslots."""
    key = write_file(os.path.join(workdir, "k1"), PW)
    key2 = write_file(os.path.join(workdir, "k2"), PW2)
    hdr = ["--header", header] if header else []
    backup = os.path.join(workdir, "backup.hdr")
    if not os.path.exists(backup):
        run([tool("cryptsetup"), "luksHeaderBackup", vol, "--header-backup-file", backup]
            + hdr)
    obj0, obj1 = qemu_secret(workdir, PW, "sec0"), qemu_secret(workdir, PW2, "sec1")
    opts = _luks_opts(vol) + (",header=%s" % header if header else "")
    return {
        "add-key": ["add-key", vol, "--key-file", key, "--new-key-file", key2,
                    "--pbkdf-force-iterations", "1000"] + hdr,
        "change-key": ["change-key", vol, "--key-file", key, "--new-key-file", key2,
                       "--pbkdf-force-iterations", "1000"] + hdr,
        "remove-key": ["remove-key", vol, "--key-file", key, "-q"] + hdr,
        "kill-slot": ["kill-slot", vol, "0", "-q"] + hdr,
        "erase": ["erase", vol, "-q"] + hdr,
        "header-restore": ["header-restore", vol, "-q", "--header-backup-file", backup] + hdr,
        "format": ["format", vol, "-q", "--key-file", key, "--pbkdf-force-iterations", "1000",
                   "--key-size", "256"] + hdr,
        "amend": ["amend", "--object", obj0, "--object", obj1, "--image-opts", opts,
                  "-o", "state=active,new-secret=sec1,iter-time=10"],
    }


WRITERS = ["add-key", "change-key", "remove-key", "kill-slot", "erase", "header-restore",
           "format", "amend"]


@pytest.mark.parametrize("holder", ["luks-rw", "raw-rw", "raw-ro"])
def test_writers_refused_while_qemu_holds_volume(workdir, holder):
    vol = cs_format(workdir, "v.luks", PW)
    obj = qemu_secret(workdir, PW, "held")
    # Known payload bytes (written by QEMU), so reads can be checked byte for byte.
    qemu_io(_luks_opts(vol, "held"), "write -P 0x5c 0 512", objects=[obj])
    cmds = _writer_commands(workdir, vol)
    args = {"luks-rw": ["--image-opts", _luks_opts(vol, "held")],
            "raw-rw": ["-f", "raw", vol], "raw-ro": ["-r", "-f", "raw", vol]}[holder]
    before = _digest(vol)
    with qemu_holding(vol, *args, objects=[obj]):
        for name in WRITERS:
            _refused(_pyq(*cmds[name]), 1 if name == "amend" else 5)
            assert _digest(vol) == before, name
        with pytest.raises(locks.ImageInUse, match="is in use"):
            luks.open_area(vol, writable=True)
        if holder != "raw-ro":
            # qemu-io writing shares nothing we could write beside it.
            with pytest.raises(locks.ImageInUse, match='failed to get the shared "write" lock'):
                pyqcrypt.open(vol, passphrase=PW, writable=True)
        else:
            # A read-only qemu-io shares writing (as QEMU does among its own
            # users): payload writes go ahead, header rewrites did not.
            with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
                assert img.read(0, 512) == b"\x5c" * 512
        assert _digest(vol) == before
    # Once qemu-io is gone, every one of them works again.
    assert _pyq(*cmds["add-key"]).returncode == 0
    assert cs_accepts(vol, PW2, workdir)


def test_readers_need_force_share_while_qemu_writes(workdir):
    vol = cs_format(workdir, "v.luks", PW)
    key = write_file(os.path.join(workdir, "k1"), PW)
    expected_dump = run([tool("cryptsetup"), "luksDump", vol], text=True).stdout
    bak = os.path.join(workdir, "b.hdr")
    dst = os.path.join(workdir, "out.qcow2")
    before = _digest(vol)
    with qemu_holding(vol, "-f", "raw", vol):
        _refused(_pyq("dump", vol))
        _refused(_pyq("test-passphrase", vol, "--key-file", key))
        _refused(_pyq("header-backup", vol, "--header-backup-file", bak))
        assert not os.path.exists(bak)
        _refused(_pyq("convert", "--keep-ciphertext", "-O", "qcow2", vol, dst), 1)
        assert not os.path.exists(dst) and not os.path.exists(dst + ".data")
        with pytest.raises(locks.ImageInUse, match="force-share"):
            pyqcrypt.open(vol, passphrase=PW)
        # -U / force_share: read without locks, and correctly.
        proc = _pyq("dump", "-U", vol)
        assert proc.returncode == 0 and proc.stdout == expected_dump, proc.stderr
        proc = _pyq("test-passphrase", "-U", vol, "--key-file", key, "-v")
        assert proc.returncode == 0 and "Key slot 0 unlocked" in proc.stdout, proc.stderr
        assert _pyq("header-backup", "-U", vol, "--header-backup-file", bak).returncode == 0
        with luks.open_area(vol, force_share=True) as area:
            slot, mk = luks.unlock(area, PW)
            mk.wipe()
            assert slot == 0
        with open_volume(vol, PW, force_share=True) as img:
            assert img.size > 0
        with pytest.raises(pyqcrypt.Error, match="only for read-only"):
            open_volume(vol, PW, writable=True, force_share=True)
    assert _digest(vol) == before
    theirs = os.path.join(workdir, "theirs.hdr")
    run([tool("cryptsetup"), "luksHeaderBackup", vol, "--header-backup-file", theirs])
    assert _digest(bak) == _digest(theirs)


def test_readers_share_with_qemu_readers(workdir):
    """Readers take the consistent-read lock, which read-only QEMU users share."""
    vol = cs_format(workdir, "v.luks", PW)
    key = write_file(os.path.join(workdir, "k1"), PW)
    obj = qemu_secret(workdir, PW, "held")
    with qemu_holding(vol, "-r", "--image-opts", _luks_opts(vol, "held"), objects=[obj]):
        assert _pyq("test-passphrase", vol, "--key-file", key).returncode == 0
        assert _pyq("dump", vol).returncode == 0
        with pyqcrypt.open(vol, passphrase=PW) as img:
            img.read(0, 4096)


def test_detached_header_file_locked(workdir):
    hdr = os.path.join(workdir, "v.hdr")
    vol = cs_format(workdir, "v.img", PW, header=hdr)
    cmds = _writer_commands(workdir, vol, header=hdr)
    before = _digest(hdr, vol)
    # qemu 7.2 cannot open detached headers: hold the header file as raw.
    with qemu_holding(hdr, "-f", "raw", hdr):
        for name in WRITERS:
            _refused(_pyq(*cmds[name]), 1 if name == "amend" else 5)
            assert _digest(hdr, vol) == before, name
        with pytest.raises(locks.ImageInUse, match=os.path.basename(hdr)):
            open_volume(vol, PW, header=hdr, writable=True)
        with pytest.raises(locks.ImageInUse):
            open_volume(vol, PW, header=hdr)
        _refused(_pyq("dump", vol, "--header", hdr))
        assert _pyq("dump", "-U", vol, "--header", hdr).returncode == 0
    assert _digest(hdr, vol) == before
    assert _pyq(*cmds["add-key"]).returncode == 0
    assert cs_accepts(vol, PW2, workdir, header=hdr)


def test_qemu_refused_while_pyqcrypt_holds(workdir):
    vol = cs_format(workdir, "v.luks", PW)
    obj = qemu_secret(workdir, PW)
    with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
        img.write(0, b"\x5a" * 4096)
        proc = qemu_io(_luks_opts(vol), "write -P 0x11 0 4096", objects=[obj], check=False)
        assert proc.returncode != 0 and 'Failed to get "write" lock' in proc.stderr, proc.stderr
        proc = qemu_io(vol, "write 0 512", fmt="raw", check=False)
        assert proc.returncode != 0 and "lock" in proc.stderr, proc.stderr
        # QEMU's own readers share with a writer, as among QEMU users.
        proc = _qemu_io_ro(vol)
        assert proc.returncode == 0 and "read 512/512 bytes" in proc.stdout, proc.stderr
        img.flush()
    # Released with close: now qemu-io reads what we wrote, and may write.
    qemu_io(_luks_opts(vol), "read -P 0x5a 0 4096", "write -P 0x11 0 512", objects=[obj])
    # A header rewrite holds the volume exclusively: not even QEMU readers.
    with luks.open_area(vol, writable=True):
        proc = _qemu_io_ro(vol)
        assert proc.returncode != 0 and 'Failed to get "consistent read" lock' in proc.stderr, \
            proc.stderr
    # And a detached header being rewritten is locked too.
    hdr = os.path.join(workdir, "d.hdr")
    dvol = cs_format(workdir, "d.img", PW, header=hdr)
    with luks.open_area(dvol, writable=True, header=hdr):
        proc = _qemu_io_ro(hdr)
        assert proc.returncode != 0 and "lock" in proc.stderr, proc.stderr
        assert _qemu_io_ro(dvol).returncode == 0          # the payload is not


def test_lock_bytes_match_qemu(workdir):
    """The bytes pyqcrypt holds on a raw volume, mode by mode, against
    those a real qemu-io holds when opened the same way (the read-only and
    read-write cases qemu-io shows on a luks volume)."""
    vol = cs_format(workdir, "v.luks", PW)
    obj = qemu_secret(workdir, PW, "held")
    with qemu_holding(vol, "-r", "--image-opts", _luks_opts(vol, "held"), objects=[obj]):
        qemu_ro = _ofd_locks(vol)
    with qemu_holding(vol, "--image-opts", _luks_opts(vol, "held"), objects=[obj]):
        qemu_rw = _ofd_locks(vol)
    assert qemu_ro == {100} and qemu_rw == {100, 101}
    with pyqcrypt.open(vol, passphrase=PW):
        ours_ro = _ofd_locks(vol)
    with pyqcrypt.open(vol, passphrase=PW, writable=True):
        ours_rw = _ofd_locks(vol)
    with luks.open_area(vol, writable=True):
        ours_hdr = _ofd_locks(vol)
    # Permissions held are QEMU's; what we add is only what we refuse to share.
    assert {b for b in ours_ro if b < 200} == qemu_ro
    assert {b for b in ours_rw if b < 200} == qemu_rw
    assert ours_ro == {100, 201, 203}           # qemu-img convert's source
    assert ours_rw == {100, 101, 201, 203}
    assert ours_hdr == {100, 101, 200, 201}     # qemu-img amend on a luks image
    assert _ofd_locks(vol) == set()


# ---------------------------------------------------------------- no OFD locks (NFS)

@pytest.fixture
def cli_warnings(monkeypatch):
    """Run the CLI in this process with Python's default warning filters
    and pyqcrypt's stderr warning printer, restored afterwards."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        yield


def _fail_setlk(err):
    def fake(fd, start, length, shared):
        return -err if shared else 0
    return fake


@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL],
                         ids=["EOPNOTSUPP", "ENOLCK", "EINVAL"])
def test_unsupported_locks_warn_once(workdir, monkeypatch, capsys, cli_warnings, err):
    vol = cs_format(workdir, "v.luks", PW)
    key = write_file(os.path.join(workdir, "k1"), PW)
    key2 = write_file(os.path.join(workdir, "k2"), PW2)
    monkeypatch.setattr(locks, "_setlk", _fail_setlk(err))
    rc = cli.main(["add-key", vol, "--key-file", key, "--new-key-file", key2,
                   "--pbkdf-force-iterations", "1000"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("pyqcrypt: warning: %s: " % vol) and "OFD locks" in lines[0]
    assert os.strerror(err) in lines[0]
    assert cs_accepts(vol, PW2, workdir)
    # -U is the explicit, silent way to skip locking.
    assert cli.main(["dump", "-U", vol]) == 0
    assert capsys.readouterr().err == ""


def test_unsupported_locks_api_warning(workdir, monkeypatch):
    vol = cs_format(workdir, "v.luks", PW)
    hdr = os.path.join(workdir, "v.hdr")
    dvol = cs_format(workdir, "d.img", PW, header=hdr)
    monkeypatch.setattr(locks, "_setlk", _fail_setlk(errno.EOPNOTSUPP))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        with pyqcrypt.open(vol, passphrase=PW, writable=True) as img:
            img.write(0, b"x" * 512)
    assert [str(w.message).split(":")[0] for w in got] == [vol]
    assert all(w.category is locks.LockingUnsupportedWarning for w in got)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        with open_volume(dvol, PW, header=hdr):
            pass
    assert sorted(str(w.message).split(":")[0] for w in got) == sorted([dvol, hdr])
    # The lock test (F_OFD_GETLK) failing the same way is treated alike.
    monkeypatch.setattr(locks, "_setlk", lambda fd, s, n, shared: 0)
    monkeypatch.setattr(locks, "_getlk", lambda fd, s, n: -errno.ENOLCK)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        with luks.open_area(vol, writable=True):
            pass
    assert len(got) == 1 and vol in str(got[0].message)


@pytest.mark.parametrize("where", ["setlk", "getlk"])
def test_other_lock_errors_are_errors(workdir, monkeypatch, capsys, cli_warnings, where):
    vol = cs_format(workdir, "v.luks", PW)
    before = _digest(vol)
    if where == "setlk":
        monkeypatch.setattr(locks, "_setlk", _fail_setlk(errno.EIO))
    else:
        monkeypatch.setattr(locks, "_getlk", lambda fd, s, n: -errno.EBADF)
    assert cli.main(["erase", "-q", vol]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "pyqcrypt: cannot lock %s: %s" % (
        vol, os.strerror(errno.EIO if where == "setlk" else errno.EBADF))
    assert _digest(vol) == before
    with pytest.raises(pyqcrypt.Error, match="cannot lock"):
        pyqcrypt.open(vol, passphrase=PW)
