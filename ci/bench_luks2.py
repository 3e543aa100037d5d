# SPDX-License-Identifier: LGPL-2.1-or-later
"""LUKS2 as a source: conversion speed and memory, and keyslot unlock cost.

Files on /dev/shm.  A LUKS2 volume with 4096-byte sectors is made from
--size-mib of random plaintext (1 GiB by default) the way users make one,
by cryptsetup's offline encryption in place (``reencrypt --encrypt
--reduce-device-size 32M``, argon2id 32 MiB as in issue 20's example); its
payload is the
plaintext followed by 16 MiB of whatever the spare room decrypts to.  A
LUKS1 volume (512-byte sectors) holding the same payload is the reference.
Timed as whole processes, best of --rounds, alternating in each round:

* (a) ``pyqcrypt convert`` LUKS2-4096 -> qcow2-luks, re-encrypting;
* (b) ``pyqcrypt convert`` LUKS1 -> qcow2-luks, the same bytes
  (goal: (a) at most 1.3x (b));
* (c) ``qemu-img convert -W -m 16`` LUKS1 -> qcow2-luks, the peer (qemu-img
  cannot read LUKS2);

with the peak memory of each (goal for (a): at most 64 MiB), and what (a)
spends before the data: a fresh Python opening the LUKS2 volume
(``pyqcrypt.open``, the argon2id unlock and its 32 MiB).  Once per run
the output of (a) is checked against the plaintext with ``qemu-img
compare`` (exit status 1 if it differs).

Then the unlock cost of a LUKS2 keyslot as ``cryptsetup luksFormat`` makes
it by default on this machine (argon2id, benchmarked for 2 s, memory up to
1 GiB): ``pyqcrypt test-passphrase`` (or, where
that does not take LUKS2, ``pyqcrypt.open`` in a fresh Python) against
``cryptsetup open --test-passphrase``, best of --unlock-rounds (goal: within
10%).  Load and free memory are printed with the figures.
"""

import argparse
import shutil
import subprocess
import sys

from benchlib import PY, machine, rm, run, scratch_dir, timed

GOAL_LUKS1 = 1.3        # (a) / (b)
GOAL_RSS_MIB = 64       # peak memory of (a)
GOAL_UNLOCK = 0.10      # |pyqcrypt / cryptsetup - 1|
SOURCE_ARGON_KIB = 32768


def make_volumes(j, obj, size_mib):
    """The LUKS2-4096 volume "v2.luks" made in place from "plain.raw", and
    the LUKS1 volume "v1.luks" holding the same payload."""
    run(["dd", "if=/dev/urandom", "of=%s" % j("plain.raw"), "bs=1M", "count=%d" % size_mib,
         "status=none"])
    shutil.copyfile(j("plain.raw"), j("v2.luks"))
    with open(j("v2.luks"), "r+b") as fh:
        fh.truncate((size_mib + 32) << 20)           # room for the header
    run(["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--sector-size", "4096",
         "--reduce-device-size", "32M", "--force-offline-reencrypt", "-q",
         "--key-file", j("secret"), "--pbkdf", "argon2id", "--pbkdf-memory", str(SOURCE_ARGON_KIB),
         "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1", j("v2.luks")])
    # The LUKS1 volume gets the whole LUKS2 payload (plaintext and the spare
    # room's noise), so (a) and (b) convert the same number of bytes.
    run(PY + ["convert", "--object", obj, "--image-opts",
              "driver=luks,file.filename=%s,key-secret=s" % j("v2.luks"), "-O", "raw",
              j("payload.raw")])
    run(PY + ["convert", "--object", obj, "-f", "raw", j("payload.raw"), "-O", "luks",
              "-o", "key-secret=s,iter-time=10", j("v1.luks")])
    rm(j("payload.raw"))


def verify(j, obj, out, size):
    """qemu-img's reading of the first *size* bytes of *out* against the
    plaintext; exits 1 when they differ."""
    proc = run(["qemu-img", "compare", "--object", obj, "--image-opts",
                "driver=raw,file.filename=%s" % j("plain.raw"),
                "driver=raw,size=%d,file.driver=qcow2,file.file.filename=%s,"
                "file.encrypt.key-secret=s" % (size, out)], check=False)
    if proc.returncode != 0:
        print("  verify: FAILED: the LUKS2 -> qcow2-luks output differs from the plaintext "
              "(qemu-img compare exit %d)\n%s" % (proc.returncode,
                                                  proc.stderr.decode(errors="replace")))
        sys.stdout.flush()
        raise SystemExit(1)
    print("  verify: OK (qemu-img compare: the output's first %d MiB equal the plaintext)"
          % (size >> 20))


def conversions(j, obj, size_mib, rounds):
    enc = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10"
    src = "driver=luks,file.filename=%s,key-secret=s"
    cmds = {
        "a": PY + ["convert", "--object", obj, "--image-opts", src % j("v2.luks"),
                   "-O", "qcow2", "-o", enc, j("a.qcow2")],
        "b": PY + ["convert", "--object", obj, "--image-opts", src % j("v1.luks"),
                   "-O", "qcow2", "-o", enc, j("b.qcow2")],
        "c": ["qemu-img", "convert", "-W", "-m", "16", "--object", obj, "--image-opts",
              src % j("v1.luks"), "-O", "qcow2", "-o", enc, j("c.qcow2")],
    }
    names = {"a": "pyqcrypt LUKS2-4096 -> qcow2-luks",
             "b": "pyqcrypt LUKS1 -> qcow2-luks",
             "c": "qemu-img LUKS1 -> qcow2-luks"}
    # What (a) spends before the data: Python, the import and the argon2id
    # unlock (32 MiB of memory by itself).
    opened = open_cmd(j("v2.luks"), j("secret"))
    print("LUKS2 (4096-byte sectors) -> qcow2-luks re-encrypting, %d MiB of random plaintext "
          "(+16 MiB spare room) on /dev/shm, best of %d alternating runs (whole processes)"
          % (size_mib, rounds))
    print("  before: %s" % machine())
    run(cmds["a"])                          # once untimed, checked
    verify(j, obj, j("a.qcow2"), size_mib << 20)
    rm(j("a.qcow2"))
    best, rss = {}, {}
    for _ in range(rounds):
        for who, cmd in cmds.items():
            took, peak = timed(cmd)
            rm(j(who + ".qcow2"))
            best[who] = min(took, best.get(who, float("inf")))
            rss[who] = max(peak, rss.get(who, 0.0))
        took, peak = timed(opened)
        best["open"] = min(took, best.get("open", float("inf")))
        rss["open"] = max(peak, rss.get("open", 0.0))
    for who in cmds:
        print("  (%s) %-36s %6.3f s  peak memory %4.0f MiB%s"
              % (who, names[who], best[who], rss[who],
                 "  (goal <= %d: %s)" % (GOAL_RSS_MIB, "met" if rss[who] <= GOAL_RSS_MIB
                                         else "NOT met") if who == "a" else ""))
    print("      of (a), opening the LUKS2 volume alone (pyqcrypt.open, argon2id 32 MiB): "
          "%.3f s, peak memory %.0f MiB" % (best["open"], rss["open"]))
    r = best["a"] / best["b"]
    print("      (a) / (b) = %5.2f  (goal <= %.2f: %s)"
          % (r, GOAL_LUKS1, "met" if r <= GOAL_LUKS1 else "NOT met"))
    print("      (a) / (c) = %5.2f" % (best["a"] / best["c"]))
    print("      (b) / (c) = %5.2f" % (best["b"] / best["c"]))
    print("  after: %s" % machine())
    sys.stdout.flush()


def open_cmd(vol, secret):
    """A fresh Python opening *vol* with pyqcrypt.open and closing it."""
    return [sys.executable, "-c", "import pyqcrypt; pyqcrypt.open(%r, passphrase=open(%r, "
            "'rb').read()).close()" % (vol, secret)]


def unlock(j, rounds):
    vol = j("unlock.luks")
    with open(vol, "wb") as fh:
        fh.truncate(32 << 20)
    run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--key-file", j("secret"), vol])
    dump = subprocess.run(["cryptsetup", "luksDump", vol], capture_output=True, text=True).stdout
    cost = ", ".join(" ".join(ln.split()) for ln in dump.splitlines()
                     if ln.strip().startswith(("PBKDF:", "Time cost:", "Memory:", "Threads:")))
    ours = PY + ["test-passphrase", "--key-file", j("secret"), vol]
    how = "pyqcrypt test-passphrase"
    if subprocess.run(ours, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        ours = open_cmd(vol, j("secret"))
        how = "pyqcrypt.open (test-passphrase does not take LUKS2 here)"
        run(ours)
    theirs = ["cryptsetup", "open", "--test-passphrase", "--key-file", j("secret"), vol]
    print("LUKS2 keyslot unlock, cryptsetup's default keyslot here (%s); best of %d "
          "alternating runs (whole processes)" % (cost, rounds))
    print("  before: %s" % machine())
    best, rss = {}, {}
    for _ in range(rounds):
        for who, cmd in (("pyqcrypt", ours), ("cryptsetup", theirs)):
            took, peak = timed(cmd)
            best[who] = min(took, best.get(who, float("inf")))
            rss[who] = max(peak, rss.get(who, 0.0))
    print("  pyqcrypt   %6.3f s  peak memory %4.0f MiB  (timed: %s)"
          % (best["pyqcrypt"], rss["pyqcrypt"], how))
    print("  cryptsetup %6.3f s  peak memory %4.0f MiB  (open --test-passphrase)"
          % (best["cryptsetup"], rss["cryptsetup"]))
    r = best["pyqcrypt"] / best["cryptsetup"]
    print("      pyqcrypt / cryptsetup = %5.2f  (goal within +-%d%%: %s)"
          % (r, GOAL_UNLOCK * 100, "met" if abs(r - 1) <= GOAL_UNLOCK else "NOT met"))
    print("  after: %s" % machine())
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--unlock-rounds", type=int, default=5)
    args = ap.parse_args()
    d, j, obj = scratch_dir()
    try:
        make_volumes(j, obj, args.size_mib)
        conversions(j, obj, args.size_mib, args.rounds)
        unlock(j, args.unlock_rounds)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
