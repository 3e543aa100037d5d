# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the ``pyqcrypt selftest`` cases run with: the external tools
(where each is, its version, or why it cannot be used), the scratch
directory and secret files they share, the tools' command lines for
reading, filling, formatting and opening images, and the two outcomes a
case raises short of passing (``CaseFailed``, ``CaseSkipped``).  The
cases are in ``selftest_cases.py``, running and reporting them in
``selftest.py``.
"""

import os
import re
import shutil
import subprocess
import time

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


class MachineLacks(CaseSkipped):
    """The machine lacks a facility the case needs (loop devices), not a
    tool: a SKIP even under --strict, so that a CI job in a container can
    ask for every tool without asking for root."""


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
                name, self.path, proc.returncode, last_line(out) or "no output")
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


def last_line(text):
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
                last_line((proc.stderr or proc.stdout).decode(errors="replace")) or "no output"))
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

    def cryptsetup_accepts(self, vol, sid, header=None, luks_type="luks1"):
        """True when cryptsetup opens *vol* (with its detached *header*) with
        secret *sid* (test only)."""
        extra = ["--header", header] if header else []
        proc = self.run("cryptsetup", "open", "--test-passphrase", "--type", luks_type, *extra,
                        "--key-file", self.path("%s.key" % sid), vol, expect=None)
        if proc.returncode not in (0, 1, 2):
            raise CaseFailed("cryptsetup open --test-passphrase exited %d: %s" % (
                proc.returncode, last_line(proc.stderr.decode(errors="replace"))))
        return proc.returncode == 0

    def cryptsetup_agrees(self, vol, what, header=None, luks_type="luks1"):
        """cryptsetup accepts the right passphrase of *vol* and refuses a
        wrong one, or the case fails naming *what* the volume is."""
        if not self.cryptsetup_accepts(vol, "s0", header, luks_type):
            raise CaseFailed("cryptsetup refuses the passphrase of %s" % what)
        if self.cryptsetup_accepts(vol, "s1", header, luks_type):
            raise CaseFailed("cryptsetup accepts a wrong passphrase for %s: it cannot be trusted" % what)
