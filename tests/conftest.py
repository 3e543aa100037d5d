# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shared fixtures: scratch space, the peer tools, a test-side LUKS1 parser,
and the choice between the C sector loop's two paths.

The parser here is deliberately independent of pyqcrypt's own (it is a few
lines of ``struct``), so interop tests do not check pyqcrypt against itself.
"""

import contextlib
import errno
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time

import pytest

from loopdev import loop_devices  # noqa: F401  (the fixture, for every test module)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# cryptsetup's LUKS1 compatibility images: PYQCRYPT_INTEROP_DIR, else the
# project's ../shared/interop beside a source checkout; tests needing them
# skip with the reason when neither exists (an installed package's tests).
INTEROP_DIR = os.environ.get("PYQCRYPT_INTEROP_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "interop")
MARKERS = [
    "interop: compares bytes with qemu-img, qemu-io or cryptsetup",
    "slow: takes more than a few seconds",
    "blockdev: runs on real block devices (loop devices; needs root)",
]


def pytest_configure(config):
    # The markers again, for runs outside the source tree (no pyproject.toml).
    for line in MARKERS:
        config.addinivalue_line("markers", line)


def pytest_report_header(config):
    """Which pyqcrypt the run tests: the source tree's or an installed one."""
    import pyqcrypt
    return "pyqcrypt %s from %s" % (pyqcrypt.__version__, os.path.dirname(pyqcrypt.__file__))


# Skips that say something about the machine, not about the installation:
# with --strict-skips (ci/test), any other skip fails the run, so a
# dependency that failed to install (qemu-img, cryptsetup, pyca/cryptography,
# libcryptsetup) cannot hide behind passing tests.
ALLOWED_SKIPS = [
    r"cryptsetup's LUKS1 images are not beside the project",     # ../shared absent
    r"loop devices need root", r"no /dev/loop-control", r"cannot attach a loop device here",
    r"cannot mount here",
    r"core files go to", r"writes no core files",
    r"keyring test uses x86_64", r"the kernel keyring is not available",
    r"this qemu-io lacks secret_keyring",
    r"hashlib lacks",
    r"is not provided by .* on this system",                     # OpenSSL's legacy provider
    r"cryptsetup cannot run .* in user space here",              # serpent etc. need the kernel's crypto
    r"pyqcrypt's C sources are not beside the tests",           # tests of an installed package
    r"README.md is not beside the tests",                         # tests of an installed package
    r"TOML checks files need Python 3.11",                       # tomllib; JSON works on 3.9
    r"mypy is not installed",                                     # a distribution's test run
]


def pytest_addoption(parser):
    parser.addoption("--strict-skips", action="store_true",
                     help="fail the run when a test skips for a reason not in "
                          "conftest.ALLOWED_SKIPS (a missing tool or module)")


_unexpected_skips = []


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if not any(re.search(p, reason) for p in ALLOWED_SKIPS):
            _unexpected_skips.append("%s: %s" % (report.nodeid, reason))


pytest_collectreport = pytest_runtest_logreport        # a whole module skipped (importorskip)


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("--strict-skips"):
        return                  # xdist workers report; the controller decides
    if _unexpected_skips:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        lines = ["%d test(s) skipped for a reason not in conftest.ALLOWED_SKIPS "
                 "(--strict-skips):" % len(_unexpected_skips)] + _unexpected_skips
        if tr is not None:
            tr.write_line("")
            tr.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


SHM = "/dev/shm"
SHM_MIN_FREE = 1 << 30


def scratch_base():
    """The directory scratch files go under: None (tempfile's default) when
    TMPDIR is set, else /dev/shm when it exists, is writable and has at
    least SHM_MIN_FREE bytes free, else None again."""
    if os.environ.get("TMPDIR"):
        return None
    try:
        if os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK):
            st = os.statvfs(SHM)
            if st.f_bavail * st.f_frsize >= SHM_MIN_FREE:
                return SHM
    except OSError:
        pass
    return None


def scratch_dir(prefix="pyqcrypt-test-"):
    """A new scratch directory under scratch_base(); the caller removes it."""
    return tempfile.mkdtemp(prefix=prefix, dir=scratch_base())


@pytest.fixture
def workdir():
    """A scratch directory (see scratch_base), removed after the test."""
    path = scratch_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _scratch_cwd(monkeypatch):
    """Every test runs in its own empty scratch directory, so a relative
    path (a stray output, a qcow2 data_file name) never lands in the source
    tree.  Tests name repository files relative to ROOT or __file__."""
    path = scratch_dir("pyqcrypt-cwd-")
    monkeypatch.chdir(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)     # monkeypatch then restores the old CWD


SECTOR_PATHS = ("direct", "evp")


@contextlib.contextmanager
def forced_sector_path(path):
    """Sector ciphers made inside the block use *path* in the C sector
    loop: "direct" (the provider's cipher functions, the default wherever
    the provider offers them) or "evp" (the EVP fallback, forced)."""
    from pyqcrypt import _native
    _, lib = _native.crypto()
    previous = lib.pyq_force_evp_fallback(1 if path == "evp" else 0)
    try:
        yield path
    finally:
        lib.pyq_force_evp_fallback(previous)


@pytest.fixture(params=SECTOR_PATHS)
def sector_path(request):
    """Runs the test once on each path of the C sector loop."""
    with forced_sector_path(request.param):
        yield request.param


def on_sector_path(cipher, path):
    """True when *cipher* (a SectorCipher) runs on *path* in this thread."""
    from pyqcrypt import _native
    _, lib = _native.crypto()
    direct = lib.pyq_sector_direct_path(cipher._context(True)) == 1
    return direct == (path == "direct")


def parse_luks1(data):
    """Minimal LUKS1 header parse for tests: a dict of the fields."""
    assert data[:6] == b"LUKS\xba\xbe", "not a LUKS header"
    (version,) = struct.unpack_from(">H", data, 6)
    def cstr(off, n):
        return data[off:off + n].split(b"\0", 1)[0].decode()
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


QEMU_PBKDF_FLAKE = "Unable to get accurate CPU usage"
QEMU_IMG_RETRIES = 20


def _convert_destination(args):
    """The file a ``qemu-img convert`` creates (None with -n)."""
    if "-n" in args:
        return None
    dst = str(args[-1])
    if "--target-image-opts" in args:
        opts = dict(o.split("=", 1) for o in dst.split(",") if "=" in o)
        return opts.get("file.filename")
    return dst


def qemu_img_retrying(args, retries=QEMU_IMG_RETRIES, qemu_img=None):
    """Run ``qemu-img *args``, retrying (up to *retries* runs, a short
    sleep between) only when QEMU's own PBKDF benchmark gives up with
    "Unable to get accurate CPU usage": it times its key derivation with
    getrusage whenever it makes LUKS key material (create, convert to an
    encrypted target, amend with a new secret), and on a busy machine that
    fails at random.  A failed convert's half-made destination is removed
    before the next try.  Returns the last CompletedProcess (bytes)."""
    args = [str(a) for a in args]
    cmd = [qemu_img or shutil.which("qemu-img") or "qemu-img"] + args
    dst = _convert_destination(args) if args and args[0] == "convert" else None
    for attempt in range(max(1, retries)):
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode == 0 or QEMU_PBKDF_FLAKE.encode() not in proc.stdout + proc.stderr:
            return proc
        if dst and os.path.exists(dst):
            os.unlink(dst)
        time.sleep(0.05 + 0.05 * attempt)
    return proc


def qemu_img(*args, retries=QEMU_IMG_RETRIES, check=True):
    """Run any qemu-img subcommand (see qemu_img_retrying); unless *check*
    is false, fail the test with the output when it does not exit 0."""
    proc = qemu_img_retrying(args, retries, tool("qemu-img"))
    if check and proc.returncode != 0:
        pytest.fail("qemu-img failed (%d): qemu-img %s\nstdout: %s\nstderr: %s" % (
            proc.returncode, " ".join(map(str, args)), proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace")))
    return proc


_IO_CMD = re.compile(r"^(read|write)\b.*?\s(\d+)\s+(\d+)\s*$")


def qemu_io(image, *cmds, objects=(), fmt=None, check=True):
    """Run qemu-io commands on *image*: an --image-opts string, or a file
    name when *fmt* is given.  With *check*, fail the test unless qemu-io
    exits 0, every plain ``read``/``write OFF LEN`` reports all its bytes
    ("read N/N bytes at offset OFF") and nothing says "Pattern verification
    failed" or "failed" (qemu-io's exit status alone does not show a
    pattern mismatch in every version).  Returns the CompletedProcess (text)."""
    args = [tool("qemu-io")]
    for obj in objects:
        args += ["--object", obj]
    args += ["-f", fmt, image] if fmt else ["--image-opts", image]
    for c in cmds:
        args += ["-c", c]
    proc = subprocess.run(args, capture_output=True, text=True)
    if not check:
        return proc
    out = proc.stdout + proc.stderr
    problems = []
    if proc.returncode != 0:
        problems.append("exit status %d" % proc.returncode)
    if "Pattern verification failed" in out or "failed" in out.lower():
        problems.append("failure reported")
    for c in cmds:
        m = _IO_CMD.match(c)
        if m:
            verb = "read" if m.group(1) == "read" else "wrote"
            want = "%s %s/%s bytes at offset %s" % (verb, m.group(3), m.group(3), m.group(2))
            if want not in proc.stdout:
                problems.append("no %r" % want)
    if problems:
        pytest.fail("qemu-io: %s\ncommand: %s\nstdout: %s\nstderr: %s" % (
            "; ".join(problems), " ".join(args), proc.stdout, proc.stderr))
    return proc


def qemu_io_refused(image, *cmds, objects=(), fmt=None):
    """Assert qemu-io cannot do *cmds* (e.g. a read with a wrong secret):
    a non-zero exit with an error, and no successful read or write."""
    proc = qemu_io(image, *cmds, objects=objects, fmt=fmt, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() or "failed" in proc.stdout, proc.stdout
    assert not re.search(r"(read|wrote) (\d+)/\2 bytes", proc.stdout), proc.stdout
    return proc


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


def power_cut_at(n):
    """A storage fault hook (``storage.injected_faults``) that fails write
    number *n* and every later write, sync and truncate, as a process
    killed there would leave the file (the writes it issued before reached
    the page cache).  Returns (hook, seen): ``seen["write"]`` counts the
    writes issued, so a first run with a huge *n* tells how many there are."""
    seen = {"write": 0}
    dead = []

    def hook(op, st, offset, length):
        if op == "write":
            seen["write"] += 1
            if seen["write"] >= n:
                dead.append(True)
        if dead and op in ("write", "sync", "truncate"):
            raise OSError(errno.EIO, "simulated crash")
    return hook, seen
