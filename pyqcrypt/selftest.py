# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt selftest``: does this machine's qemu-img, qemu-io and
cryptsetup still agree with pyqcrypt?

The check a CI pipeline or a distribution's autopkgtest runs when QEMU or
cryptsetup is upgraded.  It makes small images with pyqcrypt and with the
tools found on PATH (or given with --qemu-img, --qemu-io, --cryptsetup),
crosses them and compares decrypted bytes:

* pyqcrypt's LUKS1 volumes and qcow2-luks images opened and read by the
  tools, and theirs read by pyqcrypt;
* a keyslot added on each side and opened on the other;
* the keep-ciphertext round trip LUKS1 -> qcow2-luks -> LUKS1, whose
  payload ciphertext must come back unchanged.

Each case ends PASS, FAIL or SKIP with its reason.  A tool that is missing
skips the cases that need it (a FAIL with --strict, or when its path was
given explicitly); a tool that is there but broken (its --version fails,
or it misreads or mis-writes an image) fails them: nothing passes without
the tool having done its part.  Needs no source tree; works in a scratch
directory under $TMPDIR (or /dev/shm) that it removes afterwards.

Key derivation is kept cheap (1000 PBKDF2 iterations; QEMU's iter-time=10),
so the whole run takes a few seconds; QEMU's own PBKDF benchmark, which
fails at random on a busy machine ("Unable to get accurate CPU usage"), is
retried.
"""

import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, List, Tuple
from xml.etree import ElementTree

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
MiB = 1 << 20
ITERATIONS = 1000                   # PBKDF2 iterations for every keyslot we or cryptsetup make
QEMU_ITER_TIME = "10"               # milliseconds: QEMU's cheapest useful setting
QEMU_FLAKE = b"Unable to get accurate CPU usage"
QEMU_RETRIES = 20
COMMAND_TIMEOUT = 120               # seconds for any one tool command
PACKAGES = {"qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "cryptsetup": "cryptsetup-bin"}
PASSPHRASE = "selftest passphrase \u00e9".encode()     # UTF-8, as QEMU needs it
SECOND = b"second selftest key"
THIRD = b"third selftest key"
BINARY = b"binary key \x00\xff\xfe"       # cryptsetup's keyfiles may hold anything (QEMU's must be UTF-8)


class CaseFailed(Exception):
    """The case found a disagreement or a tool misbehaved: FAIL."""


class CaseSkipped(Exception):
    """The case cannot run here: SKIP (or FAIL under --strict)."""


class Tool:
    """One external program: where it is and which version, or why not."""

    def __init__(self, name, path=None, explicit=False):
        self.name, self.explicit = name, explicit
        self.path = path if explicit else _which(name)
        self.version = None
        self.problem = None             # why it cannot be used
        self.missing = False            # the problem is that it is absent
        if not self.path or not os.path.exists(self.path):
            self.missing = True
            self.problem = ("%s not found at %s" % (name, path) if explicit else
                            "%s not found on PATH (Debian package %s)" % (name, PACKAGES.get(name, name)))
            return
        try:
            proc = subprocess.run([self.path, "--version"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.problem = "%s is broken: '%s --version' failed: %s" % (name, self.path, exc)
            return
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        m = re.search(r"\bversion\s+(\d[\w.+~:-]*)", out) or re.search(r"^\S+\s+(\d[\w.+~:-]*)", out)
        if proc.returncode != 0 or not m:
            self.problem = "%s is broken: '%s --version' exited %d: %s" % (
                name, self.path, proc.returncode, _last_line(out) or "no output")
            return
        self.version = m.group(1)

    @property
    def label(self):
        return "%s %s" % (self.name, self.version) if self.version else "%s (%s)" % (
            self.name, "missing" if self.missing else "broken")

    def as_dict(self):
        return {"name": self.name, "path": self.path, "version": self.version, "problem": self.problem}


def _which(name):
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin"):            # cryptsetup lives in sbin, often off a user's PATH
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def _last_line(text):
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Context:
    """What the cases share: the scratch directory, the tools, secrets, and
    images made once and used by several cases."""

    def __init__(self, workdir, tools, strict):
        self.workdir, self.tools, self.strict = workdir, tools, strict
        self._made = {}
        self.secret_args = {}
        for sid, value in (("s0", PASSPHRASE), ("s1", SECOND), ("s2", THIRD), ("bin", BINARY)):
            path = self.write("%s.key" % sid, value)
            self.secret_args[sid] = "secret,id=%s,file=%s" % (sid, path)

    def path(self, name):
        return os.path.join(self.workdir, name)

    def write(self, name, data):
        with open(self.path(name), "wb") as fh:
            fh.write(data)
        return self.path(name)

    def read(self, path, offset=0, length=None):
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read() if length is None else fh.read(length)

    def need(self, *names):
        """The tools a case needs, or skip/fail naming the first unusable one."""
        for name in names:
            tool = self.tools[name]
            if tool.problem:
                if tool.missing and not tool.explicit:
                    raise CaseSkipped(tool.problem)
                raise CaseFailed(tool.problem)
        return [self.tools[n] for n in names]

    def run(self, name, *args, retry_flake=False, expect=0):
        """Run tool *name*; fail the case unless it exits *expect*
        (None: any status).  Returns the CompletedProcess (bytes)."""
        cmd = [self.tools[name].path] + [str(a) for a in args]
        for attempt in range(QEMU_RETRIES if retry_flake else 1):
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=COMMAND_TIMEOUT, cwd=self.workdir)
            except subprocess.TimeoutExpired:
                raise CaseFailed("%s did not finish in %d s: %s" % (name, COMMAND_TIMEOUT, self.show(cmd)))
            if proc.returncode == 0 or QEMU_FLAKE not in proc.stdout + proc.stderr:
                break
            time.sleep(0.05 * (attempt + 1))
        if expect is not None and proc.returncode != expect:
            raise CaseFailed("%s exited %d (expected %d): %s: %s" % (
                name, proc.returncode, expect, self.show(cmd),
                _last_line((proc.stderr or proc.stdout).decode(errors="replace")) or "no output"))
        return proc

    def once(self, key, make):
        """make() once per run; its failure fails every case that needs it."""
        if key not in self._made:
            try:
                self._made[key] = (make(), None)
            except (CaseFailed, CaseSkipped) as exc:
                self._made[key] = (None, exc)
        value, problem = self._made[key]
        if problem is not None:
            raise type(problem)("%s (while making %s)" % (problem, key))
        return value

    def show(self, cmd):
        """A command line for a message: the tool's name, paths relative to
        the scratch directory."""
        text = " ".join([os.path.basename(cmd[0])] + cmd[1:])
        return text.replace(self.workdir + os.sep, "")

    def copy(self, src, name):
        dst = self.path(name)
        shutil.copyfile(src, dst)
        return dst

    # -- the tools' spellings --------------------------------------------
    def qemu_image(self, driver, path, sid="s0", layer="encrypt."):
        key = "%skey-secret=%s" % (layer, sid)
        return "driver=%s,file.filename=%s,%s" % (driver, path, key)

    def objects(self, *sids):
        out = []
        for sid in sids:
            out += ["--object", self.secret_args[sid]]
        return out

    def qemu_read(self, driver, path, sid="s0"):
        """The whole image as qemu-img decrypts it (converted to raw)."""
        out = self.path("qemu-read-%d.raw" % len(os.listdir(self.workdir)))
        self.run("qemu-img", "convert", *self.objects(sid), "--image-opts",
                 self.qemu_image(driver, path, sid, "encrypt." if driver == "qcow2" else ""),
                 "-O", "raw", out)
        data = self.read(out)
        os.unlink(out)
        return data

    def qemu_fill(self, driver, path, data, sid="s0"):
        """Write *data* into an existing image through qemu-img's driver."""
        src = self.write("fill-%d.raw" % len(os.listdir(self.workdir)), data)
        self.run("qemu-img", "convert", "-n", "-f", "raw", *self.objects(sid), src,
                 "--target-image-opts",
                 self.qemu_image(driver, path, sid, "encrypt." if driver == "qcow2" else ""))
        os.unlink(src)

    def cryptsetup_format(self, name, size, cipher="aes-xts-plain64", key_bits=512):
        vol = self.path(name)
        with open(vol, "wb") as fh:
            fh.truncate(size)
        self.run("cryptsetup", "luksFormat", "--type", "luks1", "-q", "--cipher", cipher,
                 "--key-size", key_bits, "--hash", "sha256", "--pbkdf-force-iterations", ITERATIONS,
                 "--key-file", self.path("s0.key"), vol)
        return vol

    def cryptsetup_accepts(self, vol, sid):
        """True when cryptsetup opens *vol* with secret *sid* (test only)."""
        proc = self.run("cryptsetup", "open", "--test-passphrase", "--type", "luks1",
                        "--key-file", self.path("%s.key" % sid), vol, expect=None)
        if proc.returncode not in (0, 1, 2):
            raise CaseFailed("cryptsetup open --test-passphrase exited %d: %s" % (
                proc.returncode, _last_line(proc.stderr.decode(errors="replace"))))
        return proc.returncode == 0




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
        raise CaseFailed("qemu-io did not report its write: %s" % _last_line(proc.stdout.decode()))
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
        raise CaseFailed("qemu-io's read of the unallocated range: %s" % _last_line(out))
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


# -- running and reporting -----------------------------------------------------

def _pyqcrypt_line():
    import pyqcrypt
    from . import _native
    try:
        from .crypto.openssl import openssl_version
        ssl = openssl_version()
    except Exception as exc:        # a broken build shows here, and fails every case
        ssl = "OpenSSL unavailable (%s)" % exc
    return "pyqcrypt %s (Python %s, %s, libcryptsetup module %s)" % (
        pyqcrypt.__version__, platform.python_version(), ssl,
        "built" if _native.have_cryptsetup() else "not built")


def run_cases(tools, strict=False, workdir=None, keep=False, only=None):
    """Run every case; returns the list of result dicts."""
    base = workdir or (None if os.environ.get("TMPDIR") or not os.access("/dev/shm", os.W_OK)
                       else "/dev/shm")
    scratch = tempfile.mkdtemp(prefix="pyqcrypt-selftest-", dir=base)
    results = []
    try:
        ctx = Context(scratch, tools, strict)
        for name, needs, summary, fn in CASES:
            if only and not any(re.search(p, name) for p in only):
                continue
            start = time.monotonic()
            try:
                detail, status = fn(ctx) or "", PASS
            except CaseSkipped as exc:
                detail, status = str(exc), FAIL if strict else SKIP
                if strict:
                    detail = "skipped, and --strict counts that as a failure: %s" % detail
            except CaseFailed as exc:
                detail, status = str(exc), FAIL
            except Exception as exc:            # pyqcrypt's own error or a bug: a failure, with the cause
                detail, status = "%s: %s" % (type(exc).__name__, exc), FAIL
                if os.environ.get("PYQCRYPT_SELFTEST_DEBUG"):
                    traceback.print_exc()
            results.append({"case": name, "status": status, "detail": detail, "summary": summary,
                            "tools": [tools[t].label for t in needs],
                            "seconds": round(time.monotonic() - start, 3)})
    finally:
        if keep:
            print("pyqcrypt selftest: images kept in %s" % scratch, file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def _table(results, header, total):
    rows = [("CASE", "TOOLS", "RESULT", "TIME", "DETAIL")]
    for r in results:
        rows.append((r["case"], ", ".join(r["tools"]), r["status"], "%.2fs" % r["seconds"], r["detail"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [header, ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    counts = {s: sum(r["status"] == s for r in results) for s in (PASS, FAIL, SKIP)}
    lines += ["", "%d cases: %d passed, %d failed, %d skipped in %.1f s"
              % (len(results), counts[PASS], counts[FAIL], counts[SKIP], total)]
    return "\n".join(lines) + "\n"


def junit_xml(results, tools, pyqcrypt_line, total):
    suite = ElementTree.Element("testsuite", {
        "name": "pyqcrypt selftest", "tests": str(len(results)),
        "failures": str(sum(r["status"] == FAIL for r in results)), "errors": "0",
        "skipped": str(sum(r["status"] == SKIP for r in results)), "time": "%.3f" % total})
    props = ElementTree.SubElement(suite, "properties")
    ElementTree.SubElement(props, "property", {"name": "pyqcrypt", "value": pyqcrypt_line})
    for tool in tools.values():
        ElementTree.SubElement(props, "property", {"name": tool.name,
                                                   "value": tool.version or tool.problem or ""})
    for r in results:
        tc = ElementTree.SubElement(suite, "testcase", {"classname": "pyqcrypt.selftest", "name": r["case"],
                                                        "time": "%.3f" % r["seconds"]})
        if r["status"] == FAIL:
            ElementTree.SubElement(tc, "failure", {"message": r["detail"]}).text = r["summary"]
        elif r["status"] == SKIP:
            ElementTree.SubElement(tc, "skipped", {"message": r["detail"]})
        else:
            ElementTree.SubElement(tc, "system-out").text = "%s: %s (%s)" % (
                r["summary"], r["detail"], ", ".join(r["tools"]))
    suites = ElementTree.Element("testsuites")
    suites.append(suite)
    return ElementTree.tostring(suites, encoding="unicode")


def main(qemu_img=None, qemu_io=None, cryptsetup=None, strict=False, junit=None, as_json=False,
         keep=False, only=None, out=None):
    """The command: returns the exit status (0 only when nothing failed)."""
    out = out or sys.stdout
    start = time.monotonic()
    tools = {}
    for name, path in (("qemu-img", qemu_img), ("qemu-io", qemu_io), ("cryptsetup", cryptsetup)):
        tools[name] = Tool(name, path, explicit=path is not None)
    line = _pyqcrypt_line()
    results = run_cases(tools, strict=strict, keep=keep, only=only)
    total = time.monotonic() - start
    failed = any(r["status"] == FAIL for r in results)
    if junit:
        with open(junit, "w", encoding="utf-8") as fh:
            fh.write('<?xml version="1.0" encoding="UTF-8"?>\n' + junit_xml(results, tools, line, total) + "\n")
    if as_json:
        json.dump({"pyqcrypt": line, "tools": [t.as_dict() for t in tools.values()], "cases": results,
                   "passed": sum(r["status"] == PASS for r in results),
                   "failed": sum(r["status"] == FAIL for r in results),
                   "skipped": sum(r["status"] == SKIP for r in results),
                   "seconds": round(total, 3), "ok": not failed}, out, indent=2)
        out.write("\n")
    else:
        header = "pyqcrypt selftest: %s\ntools: %s" % (
            line, "; ".join("%s%s" % (t.label, " (%s)" % t.path if t.version else ": " + t.problem)
                            for t in tools.values()))
        out.write(_table(results, header, total))
        if not results:
            out.write("no case matched\n")
    return 1 if failed or not results else 0
