# SPDX-License-Identifier: LGPL-2.1-or-later
"""Mutation testing for pyqcrypt's storage, crypto, LUKS and qcow2 code.

Each mutant is one small change to one source file (a comparison flipped,
``and``/``or`` swapped, a ``not`` dropped, an integer constant moved by one,
``+``/``-`` swapped, a call statement removed, a returned value replaced by
``None``, a ``raise`` guard made never to fire).  The tests that exercise
that file run against it; a mutant the tests do not notice ("survived")
points at behaviour nothing checks.  Only pyqcrypt/crypto/, pyqcrypt/luks/,
pyqcrypt/qcow2/, pyqcrypt/conversion/ and pyqcrypt/storage/ are mutated.

The source tree is never touched: the tracked files (``git ls-files``, as
they are in the working tree, or ``--rev REV``'s) and the built extension
modules are copied once into a scratch directory under /dev/shm, and every
mutant is written there, tested with PYTHONPATH pointing at the copy (each
pytest run checks that pyqcrypt comes from the copy, and the tool aborts
otherwise) and reverted.  Every test file the chosen mutants need first
runs once unmutated; a failing baseline aborts.  A mutant whose tests run
past three times their subset's baseline time (plus 30 s) counts as killed
and is reported as a timeout.  Which tests run for which file is the TESTS
table below: extend it when a new test file covers one of these modules.

    python ci/mutate.py --list                      # the mutants, nothing run
    python ci/mutate.py --sample 120 --seed 1 --budget 25   # ~25 minutes on two cores
    python ci/mutate.py --module pyqcrypt/luks/header.py --json out.json
    python ci/mutate.py --only 'positioned.py:156: raise-guard'  # re-test one survivor

Standard library only (ast); pytest and pytest-xdist run the tests.
"""

import argparse
import ast
import contextlib
import copy
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The areas mutated, as path prefixes relative to the tree.
AREAS = [
    ("crypto", "pyqcrypt/crypto/"),
    ("luks", "pyqcrypt/luks/"),
    ("qcow2", "pyqcrypt/qcow2/"),
    ("conversion", "pyqcrypt/conversion/"),
    ("storage", "pyqcrypt/storage/"),
]

# Which tests run against a mutant of which file: the longest matching
# prefix wins.  Fast, direct tests come first (with -x the run stops at the
# first failure); the slowest interop matrices are left out (DESELECT), as
# cheaper tests in the same subset cover the same code paths.
GUARDS = ["test_guard_survivors.py", "test_guard_survivors2.py"]
CRYPTO_UNIT = ["test_af.py", "test_pbkdf2.py", "test_xts_vectors.py", "test_cipherspec.py", "test_native.py",
               "test_native_bounds.py", "test_sector.py", "test_sector_units.py", "test_gcrypt_vectors.py",
               "test_policy.py", "test_threads.py", "test_guard_secmem.py", "test_guard_randomness.py"]
PBKDF2 = CRYPTO_UNIT + ["test_luks_header.py", "test_pbkdf_interrupt.py", "test_pbkdf_calibration.py"]
LUKS1 = ["test_luks_header.py", "test_luks_faults.py", "test_guard_add_key.py", "test_guard_randomness.py",
         "test_crash_prefixes.py", "test_cli_luks.py", "test_luks_interop.py", "test_error_model.py"]
LUKS2 = ["test_luks2_refusals.py", "test_luks2_ops.py", "test_luks2_interop.py"]
QCOW2 = ["test_qcow2_robust.py", "test_crash_prefixes.py", "test_qcow2_hostile.py", "test_zstd.py",
         "test_cli_qcow2.py", "test_qcow2_interop.py"]
TESTS = {
    "pyqcrypt/crypto/": CRYPTO_UNIT + GUARDS,
    "pyqcrypt/crypto/kdf.py": PBKDF2 + GUARDS,
    "pyqcrypt/crypto/benchmark.py": PBKDF2,
    "pyqcrypt/crypto/oneshot.py": CRYPTO_UNIT + ["test_secrets.py"],
    "pyqcrypt/luks/": LUKS1 + GUARDS,
    "pyqcrypt/luks/backup.py": LUKS1 + ["test_header_restore.py"],
    "pyqcrypt/luks/luks2": LUKS2 + GUARDS,
    "pyqcrypt/luks/rewrap.py": LUKS2,
    "pyqcrypt/luks/volume.py": LUKS1 + ["test_luks2_interop.py"],
    "pyqcrypt/qcow2/": QCOW2 + GUARDS,
    "pyqcrypt/qcow2/compress.py": QCOW2 + ["test_guard_zlib.py", "test_compressed_memory.py"],
    "pyqcrypt/qcow2/check": ["test_check_vs_qemu.py", "test_qcow2_robust.py", "test_qcow2_hostile.py",
                             "test_snapshots.py"],
    "pyqcrypt/qcow2/create.py": ["test_cli_qcow2.py", "test_qcow2_robust.py", "test_qcow2_interop.py",
                                 "test_extended_l2.py"],
    "pyqcrypt/qcow2/snapshots.py": ["test_snapshots.py"] + GUARDS,
    "pyqcrypt/qcow2/snapshot_cow.py": QCOW2 + ["test_snapshots.py"] + GUARDS,
    "pyqcrypt/qcow2/subclusters.py": ["test_extended_l2.py"],
    "pyqcrypt/conversion/": ["test_guard_conversion.py", "test_copy_safety.py",
                            "test_keep_ciphertext_checks.py", "test_convert_edges.py", "test_guard_edges.py",
                            "test_source_apart.py", "test_pipeline.py", "test_convert.py",
                            "test_no_data_loss.py", "test_blockdev.py"],
    "pyqcrypt/storage/": GUARDS + ["test_fault_wrapper.py", "test_publication.py", "test_copy_safety.py",
                                   "test_fault_survival.py", "test_luks_faults.py", "test_crash_prefixes.py",
                                   "test_qcow2_robust.py", "test_pipeline.py", "test_no_data_loss.py",
                                   "test_locks.py", "test_blockdev.py"],
}
# The slowest tests of those files (a few seconds to half a minute each);
# what they check is also checked, faster, by other tests in each subset.
DESELECT = [
    "tests/test_luks_interop.py::test_qemu_matrix",
    "tests/test_secrets.py::test_debug_output_never_contains_the_passphrase",
    "tests/test_luks2_ops.py::test_change_key_killed_at_every_write_keeps_a_passphrase",
    "tests/test_luks2_ops.py::test_add_key_killed_at_every_write_keeps_the_old_one",
    "tests/test_luks2_ops.py::test_serpent_luks2_read_against_qemu",
    "tests/test_luks2_interop.py::test_keep_ciphertext_refuses_4096_and_names_the_route_that_works",
    "tests/test_luks2_interop.py::test_convert_reencrypting_to_qcow2_luks",
    "tests/test_qcow2_hostile.py::test_mutated_metadata_writes_never_corrupt",
    "tests/test_extended_l2.py::test_our_writes_read_by_qemu",
    "tests/test_snapshots.py::test_info_identical_to_qemu_img",
]

LOGGERS = {"log", "logger", "logging", "_log", "LOG"}
CMP_FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
ARITH_FLIP = {ast.Add: ast.Sub, ast.Sub: ast.Add}
STATEMENT_KINDS = (ast.stmt,)
GUARD_PLUGIN = '''\
import importlib.util
import os

import pytest


def pytest_configure(config):
    """Stop the run unless pyqcrypt is the scratch copy's (not the tree's)."""
    spec = importlib.util.find_spec("pyqcrypt")
    want = os.path.join(os.environ["PYQCRYPT_MUTATE_COPY"], "pyqcrypt", "__init__.py")
    got = spec.origin if spec else None
    if got is None or os.path.realpath(got) != os.path.realpath(want):
        pytest.exit("mutate guard: pyqcrypt comes from %s, not from %s" % (got, want), returncode=99)
'''


class Mutant:
    """One change: the byte span [start, end) of *path* becomes *text*;
    *index* is the changed node's place in ast.walk order and *new* the
    node that replaces it (to check the edit gives the intended tree)."""

    def __init__(self, path, node, index, operator, new, text, before, after):
        self.path = path
        self.line = node.lineno
        self.col = node.col_offset
        self.node = node
        self.index = index
        self.operator = operator
        self.new = new
        self.text = text
        self.before = before
        self.after = after
        self.span = None
        self.area = area_of(path)
        self.tests = []

    @property
    def ident(self):
        return "%s:%d:%d:%s:%s" % (self.path, self.line, self.col, self.operator, short(self.after, 40))

    def describe(self):
        return "%s:%d: %s: %s -> %s" % (self.path, self.line, self.operator, self.before, self.after)


def short(text, limit=70):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def area_of(path):
    for name, prefix in AREAS:
        if path.startswith(prefix):
            return name
    return None


def tests_for(path):
    best = max((p for p in TESTS if path.startswith(p)), key=len)
    return TESTS[best]


def is_logger_call(call):
    f = call.func
    return (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in LOGGERS) or \
        (isinstance(f, ast.Name) and f.id == "print")


def is_warning_call(call):
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "warn") or (isinstance(f, ast.Name) and f.id == "warn")


def is_sequence(x):
    """An operand that is plainly text or a list: + there concatenates, and
    - would only raise TypeError."""
    if isinstance(x, ast.BinOp) and isinstance(x.op, ast.Mod):
        x = x.left                  # "..." % args
    return isinstance(x, (ast.JoinedStr, ast.List, ast.ListComp, ast.Tuple)) or (
        isinstance(x, ast.Constant) and isinstance(x.value, (str, bytes)))


class Finder:
    """Walks one module and collects its mutants, leaving out what only
    shapes text or types: docstrings, f-strings, exception and assert
    messages, logging and warning arguments, annotations, __repr__/__str__,
    ``if TYPE_CHECKING:`` blocks and __all__."""

    def __init__(self, path, source):
        self.path = path
        self.tree = ast.parse(source, path)
        self.order = {id(n): i for i, n in enumerate(ast.walk(self.tree))}
        self.mutants = []

    def add(self, node, operator, new, before, after):
        if isinstance(new, STATEMENT_KINDS):
            text = ast.unparse(new)
        else:
            text = "(%s)" % ast.unparse(new)
        self.mutants.append(Mutant(self.path, node, self.order[id(node)], operator, new, text,
                                   short(before), short(after)))

    def run(self):
        self.visit(self.tree)
        return self.mutants

    def visit(self, node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name in ("__repr__", "__str__"):
                return
            for d in node.decorator_list:
                self.visit(d)
            for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                self.visit(d)
            for stmt in node.body:
                self.visit(stmt)
            return
        if isinstance(node, (ast.JoinedStr, ast.Raise)):
            return
        if isinstance(node, ast.Assert):
            self.visit(node.test)
            return
        if isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.visit(node.value)
            return
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("__all__", "__version__")
                                                for t in node.targets):
            return
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Call) and (is_logger_call(node) or is_warning_call(node)):
            self.visit(node.func)
            return
        self.mutate(node)
        for child in ast.iter_child_nodes(node):
            self.visit(child)

    def mutate(self, node):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                flip = CMP_FLIP.get(type(op))
                if flip:
                    new = copy.copy(node)
                    new.ops = list(node.ops)
                    new.ops[i] = flip()
                    self.add(node, "cmp", new, ast.unparse(node), ast.unparse(new))
        elif isinstance(node, ast.BoolOp):
            new = copy.copy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.add(node, "boolop", new, ast.unparse(node), ast.unparse(new))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.add(node, "not", node.operand, ast.unparse(node), ast.unparse(node.operand))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            for delta in (1, -1):
                if node.value + delta >= 0:
                    self.add(node, "int", ast.Constant(node.value + delta), repr(node.value),
                             repr(node.value + delta))
        elif isinstance(node, ast.BinOp) and type(node.op) in ARITH_FLIP and not (
                is_sequence(node.left) or is_sequence(node.right)):
            new = copy.copy(node)
            new.op = ARITH_FLIP[type(node.op)]()
            self.add(node, "arith", new, ast.unparse(node), ast.unparse(new))
        elif isinstance(node, ast.AugAssign) and type(node.op) in ARITH_FLIP and not is_sequence(node.value):
            new = copy.copy(node)
            new.op = ARITH_FLIP[type(node.op)]()
            self.add(node, "arith", new, ast.unparse(node), ast.unparse(new))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and not is_logger_call(node.value):
            self.add(node, "call", ast.Pass(), ast.unparse(node.value), "pass")
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            self.add(node, "return", ast.Return(ast.Constant(None)), ast.unparse(node), "return None")
        if isinstance(node, ast.If) and node.body and isinstance(node.body[-1], ast.Raise):
            # The guard's test becomes False: the raise can never happen.
            test = node.test
            self.mutants.append(Mutant(self.path, test, self.order[id(test)], "raise-guard", ast.Constant(False),
                                       "(False)", short("if %s: raise" % ast.unparse(test)), "if False: raise"))


def line_starts(data):
    starts, pos = [], 0
    for line in data.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    starts.append(pos)
    return starts


def find_mutants(tree_root, paths):
    """All mutants of the given .py files (relative paths), with spans."""
    mutants = []
    for path in paths:
        with open(os.path.join(tree_root, path), "rb") as fh:
            data = fh.read()
        starts = line_starts(data)
        for m in Finder(path, data.decode("utf-8")).run():
            n = m.node
            m.span = (starts[n.lineno - 1] + n.col_offset, starts[n.end_lineno - 1] + n.end_col_offset)
            m.tests = tests_for(path)
            m.node = None           # the tree is not kept
            mutants.append(m)
    return mutants


def mutated_source(data, m):
    """The mutant's bytes, checked: the edited text must parse to the
    original tree with exactly the one node replaced."""
    start, end = m.span
    out = data[:start] + m.text.encode("utf-8") + data[end:]
    expected = ast.parse(data)
    nodes = list(ast.walk(expected))
    target = nodes[m.index]
    replaced = False
    for parent in nodes:
        for field, value in ast.iter_fields(parent):
            if value is target:
                setattr(parent, field, m.new)
                replaced = True
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if item is target:
                        value[i] = m.new
                        replaced = True
        if replaced:
            break
    try:
        got = ast.dump(ast.parse(out))
    except SyntaxError:
        got = None
    if not replaced or got != ast.dump(expected):
        return None
    return out


def target_files(tree_root, modules):
    paths = []
    for _, prefix in AREAS:
        if prefix.endswith(".py"):
            found = [prefix] if os.path.exists(os.path.join(tree_root, prefix)) else []
        else:
            found = sorted(os.path.relpath(p, tree_root)
                           for p in glob.glob(os.path.join(tree_root, prefix, "**", "*.py"), recursive=True))
        paths += found
    if modules:
        paths = [p for p in paths if any(p.startswith(m.rstrip("/")) for m in modules)]
    return paths


def select(mutants, args):
    if args.operator:
        mutants = [m for m in mutants if m.operator in args.operator]
    if args.only:
        mutants = [m for m in mutants if any(o in m.describe() for o in args.only)]
    if args.sample:
        # Spread over the areas: an equal share each (what an area cannot
        # fill goes to the others), chosen at random within the area.
        rng = random.Random(args.seed)
        by_area = {}
        for m in mutants:
            by_area.setdefault(m.area, []).append(m)
        for group in by_area.values():
            rng.shuffle(group)
        chosen, left, areas = [], args.sample, sorted(by_area, key=lambda a: len(by_area[a]))
        for i, area in enumerate(areas):
            take = min(len(by_area[area]), left // (len(areas) - i))
            chosen += by_area[area][:take]
            left -= take
        # Run order: the areas take turns, so a run cut short (--budget)
        # still covers all of them.
        order = {id(m): i for i, m in enumerate(mutants)}
        turn = {}
        for m in sorted(chosen, key=lambda m: order[id(m)]):
            turn[id(m)] = sum(1 for c in chosen if c.area == m.area and order[id(c)] < order[id(m)])
        mutants = sorted(chosen, key=lambda m: (turn[id(m)], [a for a, _ in AREAS].index(m.area)))
    if args.max:
        mutants = mutants[:args.max]
    return mutants


class Scratch:
    """The copy of the tree under /dev/shm and the environment that runs
    its tests."""

    def __init__(self, rev, keep):
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="pyqcrypt-mutate-", dir=base)
        self.keep = keep
        self.copy = os.path.join(self.dir, "tree")
        self.tmp = os.path.join(self.dir, "tmp")
        plugins = os.path.join(self.dir, "plugins")
        for d in (self.copy, self.tmp, plugins):
            os.mkdir(d)
        with open(os.path.join(plugins, "pyqcrypt_mutate_guard.py"), "w") as fh:
            fh.write(GUARD_PLUGIN)
        if rev:
            archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", self.copy], input=archive, check=True)
        else:
            names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                   check=True).stdout.decode().split("\0")
            for name in filter(None, names):
                src = os.path.join(ROOT, name)
                if not os.path.lexists(src):
                    continue            # deleted in the working tree
                dst = os.path.join(self.copy, name)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst, follow_symlinks=False)
        for so in glob.glob(os.path.join(ROOT, "pyqcrypt", "*.so")):
            shutil.copy2(so, os.path.join(self.copy, "pyqcrypt"))
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        interop = env.get("PYQCRYPT_INTEROP_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "interop")
        if os.path.isdir(interop):
            env["PYQCRYPT_INTEROP_DIR"] = interop       # conftest looks beside the tree otherwise
        env.update(PYTHONPATH=os.pathsep.join([self.copy, plugins]), PYTHONDONTWRITEBYTECODE="1",
                   PYTHONNOUSERSITE="1", TMPDIR=self.tmp, PYQCRYPT_MUTATE_COPY=self.copy)
        self.env = env
        self.check_import()

    def check_import(self):
        out = subprocess.run([sys.executable, "-c", "import pyqcrypt; print(pyqcrypt.__file__)"], cwd=self.copy,
                             env=self.env, capture_output=True, text=True)
        want = os.path.join(self.copy, "pyqcrypt", "__init__.py")
        got = out.stdout.strip()
        if out.returncode != 0 or os.path.realpath(got) != os.path.realpath(want):
            sys.exit("ci/mutate.py: pyqcrypt imports from %r, not from the copy %s%s" % (
                got, want, "\n" + out.stderr if out.stderr else ""))

    def existing(self, tests):
        out = []
        for name in tests:
            for path in sorted(glob.glob(os.path.join(self.copy, "tests", name))):
                rel = os.path.relpath(path, self.copy)
                if rel not in out:
                    out.append(rel)
        return out

    def pytest(self, tests, jobs, timeout, extra=("-x",)):
        """Run *tests* in the copy; (status, seconds, exit code, first failure, output)."""
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pyqcrypt_mutate_guard",
               "--rootdir", self.copy, "-n", str(jobs)] + list(extra)
        for d in DESELECT:
            cmd += ["--deselect", d]
        log = os.path.join(self.dir, "pytest.log")
        t0 = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd + tests, cwd=self.copy, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=default_signals)
            try:
                code = proc.wait(timeout=timeout)
                status = None
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                kill_group(proc)
        seconds = time.monotonic() - t0
        with open(log, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
        self.clean_tmp()
        if status == "timeout":
            return status, seconds, None, None, text
        first = next((line.split(" - ")[0] for line in text.splitlines()
                      if line.startswith(("FAILED ", "ERROR "))), None)
        if code == 0:
            status = "survived"
        elif code in (1, 2, 3):
            status = "killed"           # failures, collection errors, an exception in a hook
        else:
            status = "error"            # 4 usage, 5 nothing collected, 99 the guard
        return status, seconds, code, first, text

    def clean_tmp(self):
        for name in os.listdir(self.tmp):
            path = os.path.join(self.tmp, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def remove(self):
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def default_signals():
    """In the test run: the signals the tests send act as they do from a
    terminal, even when this tool runs under nohup or in the background
    (which ignore SIGHUP or SIGINT, and children inherit that)."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def kill_group(proc):
    """End the test run and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def baseline(scratch, mutants, jobs):
    """Run every test file the mutants need once, unmutated (all must
    pass), and estimate each subset's time from the per-test durations:
    {tuple of test files: seconds}."""
    files = []
    for m in mutants:
        files += [t for t in m.tests if t not in files]
    if not files:
        return {}
    status, seconds, code, first, text = scratch.pytest(files, jobs, None, extra=("--durations=0",))
    if status != "survived":
        cut = text.find("slowest durations")
        print((text[:text.rfind("\n", 0, cut)] if cut > 0 else text)[-6000:])
        print(text[text.find("short test summary"):][-3000:] if "short test summary" in text else "")
        sys.exit("ci/mutate.py: the unmutated tree fails its tests (exit %s, %s); nothing to compare against"
                 % (code, first))
    per_file = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)s (?:call|setup|teardown)\s+(tests/[^:]+)::", line)
        if m:
            per_file[m.group(2)] = per_file.get(m.group(2), 0.0) + float(m.group(1))
    # Starting pytest and its workers: what the run took beyond its tests.
    overhead = max(3.0, seconds - sum(per_file.values()) / jobs)
    print("baseline: %d test files pass, %.0f s" % (len(files), seconds), flush=True)
    estimates = {}
    for m in mutants:
        key = tuple(m.tests)
        if key not in estimates:
            estimates[key] = overhead + sum(per_file.get(t, 0.0) for t in key) / jobs
            print("  subset %5.1f s: %s" % (estimates[key], " ".join(os.path.basename(t)[5:-3] for t in key)),
                  flush=True)
    return estimates


def summarize(results):
    rows = {}
    for r in results:
        for key in (r["area"], r["file"]):
            row = rows.setdefault(key, {"killed": 0, "timeout": 0, "survived": 0, "invalid": 0, "error": 0})
            row[r["status"]] += 1
    return rows


def score(row):
    judged = row["killed"] + row["timeout"] + row["survived"]
    return (row["killed"] + row["timeout"]) / judged if judged else None


def report(results, seconds, stream=sys.stdout):
    rows = summarize(results)
    w = stream.write
    w("\n%-40s %7s %7s %8s %6s\n" % ("", "killed", "timeout", "survived", "score"))
    areas = [a for a, _ in AREAS if a in rows]
    for area in areas:
        files = sorted(k for k in rows if k.endswith(".py") and area_of(k) == area)
        for key in files + [area]:
            row = rows[key]
            s = score(row)
            w("%-40s %7d %7d %8d %6s\n" % (key if key.endswith(".py") else "== " + key, row["killed"],
                                           row["timeout"], row["survived"], "-" if s is None else "%.0f%%" % (100 * s)))
    total = {k: sum(rows[a][k] for a in areas) for k in ("killed", "timeout", "survived", "invalid", "error")}
    s = score(total)
    w("%-40s %7d %7d %8d %6s\n" % ("== overall", total["killed"], total["timeout"], total["survived"],
                                   "-" if s is None else "%.1f%%" % (100 * s)))
    if total["invalid"] or total["error"]:
        w("not judged: %d invalid edit(s), %d run error(s)\n" % (total["invalid"], total["error"]))
    survivors = [r for r in results if r["status"] == "survived"]
    if survivors:
        w("\nsurvivors (%d):\n" % len(survivors))
        for r in survivors:
            w("%s\n" % r["describe"])
    timeouts = [r for r in results if r["status"] == "timeout"]
    if timeouts:
        w("\ntimeouts (counted as killed):\n")
        for r in timeouts:
            w("%s\n" % r["describe"])
    w("\n%d mutants in %.0f s (%.1f s each)\n" % (len(results), seconds, seconds / max(1, len(results))))
    return total, s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the mutants (after selection); run nothing")
    ap.add_argument("--check", action="store_true", help="with --list: also check every edit parses as intended")
    ap.add_argument("--module", action="append", metavar="PATH",
                    help="only files under PATH (e.g. pyqcrypt/luks/ or pyqcrypt/storage/); repeatable")
    ap.add_argument("--operator", action="append",
                    choices=["cmp", "boolop", "not", "int", "arith", "call", "return", "raise-guard"],
                    help="only this mutation operator; repeatable")
    ap.add_argument("--only", action="append", metavar="TEXT",
                    help="only mutants whose line (as --list prints it) contains TEXT, e.g. "
                         "'positioned.py:156: raise-guard'; repeatable")
    ap.add_argument("--sample", type=int, metavar="N", help="a random sample of N mutants, spread over the areas")
    ap.add_argument("--seed", type=int, default=0, help="the sample's random seed (default 0)")
    ap.add_argument("--max", type=int, metavar="N", help="at most N mutants (the first N, after --sample)")
    ap.add_argument("--budget", type=float, metavar="MINUTES",
                    help="start no new mutant after this many minutes; the rest are reported as not run")
    ap.add_argument("--jobs", type=int, default=2, help="pytest-xdist workers (default 2)")
    ap.add_argument("--rev", help="test this commit's files instead of the working tree's (git archive REV)")
    ap.add_argument("--json", metavar="FILE", help="write a JSON report")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    if args.list:
        tree_root = ROOT
        if args.rev:
            sys.exit("--list reads the working tree; drop --rev")
        mutants = select(find_mutants(tree_root, target_files(tree_root, args.module)), args)
        counts = {}
        for m in mutants:
            bad = ""
            if args.check:
                with open(os.path.join(tree_root, m.path), "rb") as fh:
                    if mutated_source(fh.read(), m) is None:
                        bad = "  [INVALID EDIT]"
            counts[m.area] = counts.get(m.area, 0) + 1
            print(m.describe() + bad)
        print("\n%d mutants: %s" % (len(mutants), ", ".join("%s %d" % (a, counts[a]) for a, _ in AREAS if a in counts)))
        return 0

    scratch = Scratch(args.rev, args.keep)
    print("scratch copy: %s" % scratch.copy, flush=True)
    results, not_run = [], 0
    current = {}

    def restore():
        if current:
            with open(current["path"], "wb") as fh:
                fh.write(current["data"])
            current.clear()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        mutants = select(find_mutants(scratch.copy, target_files(scratch.copy, args.module)), args)
        print("%d mutants" % len(mutants), flush=True)
        for m in mutants:
            m.tests = scratch.existing(m.tests)
        estimates = baseline(scratch, mutants, args.jobs)
        originals = {}
        for n, m in enumerate(mutants, 1):
            if args.budget and time.monotonic() - t0 > args.budget * 60:
                not_run = len(mutants) - n + 1
                print("budget of %g minutes spent; %d mutants not run" % (args.budget, not_run))
                break
            path = os.path.join(scratch.copy, m.path)
            if path not in originals:
                with open(path, "rb") as fh:
                    originals[path] = fh.read()
            data = originals[path]
            out = mutated_source(data, m)
            entry = {"id": m.ident, "file": m.path, "line": m.line, "area": m.area, "operator": m.operator,
                     "original": m.before, "mutated": m.after, "describe": m.describe(), "tests": m.tests}
            if out is None:
                entry.update(status="invalid", seconds=0.0)
            else:
                current.update(path=path, data=data)
                with open(path, "wb") as fh:
                    fh.write(out)
                timeout = 3 * estimates[tuple(m.tests)] + 30
                status, seconds, code, first, text = scratch.pytest(m.tests, args.jobs, timeout)
                restore()
                if code == 99:
                    print(text[-3000:])
                    sys.exit("ci/mutate.py: the tests did not run against the copy; aborted")
                entry.update(status=status, seconds=round(seconds, 1), exit=code, killed_by=first)
                if status == "error":
                    entry["output"] = text[-2000:]
            results.append(entry)
            print("[%d/%d] %-8s %5.1f s  %s%s" % (n, len(mutants), entry["status"], entry["seconds"],
                                                  m.describe(), "  (%s)" % entry.get("killed_by")
                                                  if entry.get("killed_by") else ""), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; the report covers the mutants run so far")
    finally:
        restore()
        scratch.remove()
    seconds = time.monotonic() - t0
    total, s = report(results, seconds)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"seconds": round(seconds, 1), "sample": args.sample, "seed": args.seed, "rev": args.rev,
                       "not_run": not_run, "summary": summarize(results), "score": s, "mutants": results},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
