# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the conversion benchmarks share: timing whole processes (retrying
qemu-img's random PBKDF-timing failure), their peak memory, the state of
the machine (load, free memory) printed with every figure, and a table of
paths each timed against ``cp`` and ``qemu-img convert``, alternating."""

import os
import shlex
import subprocess
import sys
import tempfile
import time

# PYQCRYPT_BENCH_CMD: another pyqcrypt to time (an older build, say), as a
# command line; by default this checkout's, in this Python.
PY = shlex.split(os.environ.get("PYQCRYPT_BENCH_CMD", "")) or [sys.executable, "-m", "pyqcrypt"]
# PYQCRYPT_BENCH_BASELINE: a second pyqcrypt command line, timed as the
# contender "baseline" in the same alternating rounds (before and after a
# change, measured under the same load).
BASELINE = shlex.split(os.environ.get("PYQCRYPT_BENCH_BASELINE", ""))
CONTENDERS = ("cp", "qemu-img", "baseline", "pyqcrypt")


def _compile_package():
    """Byte-compile this checkout's pyqcrypt, as pip and dpkg do on
    install: with PYTHONDONTWRITEBYTECODE set (it is on some CI images)
    every timed run would otherwise compile ~50 modules, ~55 ms."""
    if not os.environ.get("PYQCRYPT_BENCH_CMD"):
        import compileall
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        compileall.compile_dir(os.path.join(here, "pyqcrypt"), quiet=1)


_compile_package()


def run(cmd, check=True):
    """Run *cmd*; qemu-img's LUKS key setup fails at random on busy
    machines ("Unable to get accurate CPU usage", its own PBKDF timing):
    such a run is repeated."""
    for _ in range(20):
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode == 0 or b"Unable to get accurate CPU usage" not in proc.stderr:
            break
    if check and proc.returncode != 0:
        raise SystemExit("failed: %s\n%s" % (" ".join(cmd), proc.stderr.decode(errors="replace")))
    return proc


def timed(cmd):
    """(seconds, peak RSS in MiB) of one run of *cmd* as a child process;
    a qemu-img PBKDF-timing failure is repeated and not counted."""
    for _ in range(20):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode == 0:
            return took, usage.ru_maxrss / 1024.0
        if b"Unable to get accurate CPU usage" not in err:
            break
    raise SystemExit("failed: %s\n%s" % (" ".join(cmd), err.decode(errors="replace")))


SECRET_OBJECT = "secret,id=s,file=%s"      # % the secret file: the --object every bench uses


def scratch_dir(prefix="pyqcrypt-bench-"):
    """A new scratch directory, on /dev/shm when there is one, holding the
    benches' passphrase in "secret": (directory, path(name) inside it, the
    --object that defines that passphrase as id "s").  The caller removes
    the directory."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/dev/shm" if os.path.isdir("/dev/shm") else None)

    def path(name):
        return os.path.join(d, name)
    with open(path("secret"), "wb") as fh:
        fh.write(b"bench pass")
    return d, path, SECRET_OBJECT % path("secret")


def sparse_extents(path, size, extents=16, extent_mib=64):
    """A *size*-byte sparse file at *path* holding *extents* runs of
    *extent_mib* MiB of random data spread evenly over it (the rest holes)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    step = size // extents
    for i in range(extents):
        run(["dd", "if=/dev/urandom", "of=%s" % path, "bs=1M", "count=%d" % extent_mib,
             "seek=%d" % (i * step // (1 << 20)), "conv=notrunc", "status=none"])


def rm(*paths):
    for p in paths:
        if p and os.path.lexists(p):
            os.unlink(p)


def meminfo(field="MemAvailable"):
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return -1


def machine():
    """Load average and free memory, for printing beside the figures."""
    la = os.getloadavg()
    return ("load %.2f %.2f %.2f on %d CPUs, %d MiB free, %d MiB available"
            % (la[0], la[1], la[2], os.cpu_count() or 0, meminfo("MemFree"), meminfo()))


class Path:
    """One conversion path: the commands of each contender and what each
    needs removed (or done) before it runs."""

    def __init__(self, name, pyqcrypt, cp=None, qemu=None, before=None, goals=None):
        self.name = name
        self.cmds = {"cp": cp, "qemu-img": qemu, "pyqcrypt": pyqcrypt}
        if BASELINE and pyqcrypt[:len(PY)] == PY:
            self.cmds["baseline"] = BASELINE + pyqcrypt[len(PY):]
        self.before = before or (lambda who: None)
        self.goals = goals or {}
        self.best = {}
        self.rss = {}


def race(paths, rounds):
    """Best of *rounds* per contender, the contenders of every path
    alternating inside each round (so a noisy moment hits all of them)."""
    for _ in range(rounds):
        for path in paths:
            for who, cmd in path.cmds.items():
                if cmd is None:
                    continue
                owner = "pyqcrypt" if who == "baseline" else who     # same output names
                path.before(owner)
                took, rss = timed(cmd)
                path.before(owner)                  # free the space before the next one
                if took < path.best.get(who, float("inf")):
                    path.best[who] = took
                path.rss[who] = max(rss, path.rss.get(who, 0))


def report(paths):
    for path in paths:
        b = path.best
        line = "  %-44s" % path.name
        for who in CONTENDERS:
            if who in b:
                line += "  %s %6.3f s" % (who, b[who])
        out = [line]
        for ref in ("cp", "qemu-img", "baseline"):
            if ref in b and "pyqcrypt" in b:
                goal = path.goals.get(ref)
                ratio = b["pyqcrypt"] / b[ref]
                out.append("      pyqcrypt / %-8s = %5.2f%s" % (
                    ref, ratio, "" if goal is None else "  (goal <= %.2f: %s)"
                    % (goal, "met" if ratio <= goal else "NOT met")))
        out.append("      peak memory: %s" % ", ".join(
            "%s %.0f MiB" % (who, path.rss[who]) for who in CONTENDERS if who in path.rss))
        print("\n".join(out))
    sys.stdout.flush()
