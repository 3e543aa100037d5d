# SPDX-License-Identifier: LGPL-2.1-or-later
"""Checks ci/package runs on what it built; each prints what it found and
exits non-zero with every problem named.

  check_dist.py sdist SDIST.tar.gz FILELIST   the sdist holds what a rebuild needs:
      build_ffi.py, setup.py, pyproject.toml, the C sources, the tests and
      their data, LICENSE, README.md, SECURITY.md, the Debian packaging: every
      file FILELIST names (git ls-files, less what never ships) and nothing
      that must not ship (compiled objects, build output, test images such as
      tests/qd.raw).
  check_dist.py wheel WHEEL [--require MODULE...]   the wheel holds the package,
      py.typed, the compiled modules asked for (all *.abi3.so, the wheel
      tagged cp39-abi3), the man page and the bash completion as data files,
      and no C sources or tests.
"""

import fnmatch
import os
import re
import sys
import tarfile
import zipfile

# Tracked files that are not part of a source release.
NOT_SHIPPED = [".ci/*", ".gitignore", ".gitattributes", ".github/*"]
NEVER = ["*.so", "*.o", "*.pyc", "*/__pycache__/*", "build/*", "dist/*", ".venv/*",
         "tests/*.raw", "tests/*.qcow2", "tests/*.img", "tests/*.luks", "pyqcrypt/_*_native.c"]
NAMED = ["build_ffi.py", "setup.py", "pyproject.toml", "LICENSE", "README.md", "SECURITY.md", "ARCHITECTURE.md",
         "MANIFEST.in", "tests/conftest.py", "packaging/debian/control", "packaging/debian/rules"]
SDIST_MAX_BYTES = 5 << 20


def _human(n):
    return "%.1f KiB" % (n / 1024) if n < (1 << 20) else "%.1f MiB" % (n / (1 << 20))


def check_sdist(path, filelist):
    problems = []
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        top = os.path.commonprefix([m.name for m in members]).split("/")[0]
        names = {m.name[len(top) + 1:]: m for m in members}
        build_ffi = tar.extractfile(names["build_ffi.py"]).read().decode() if "build_ffi.py" in names else ""
    with open(filelist) as fh:
        tracked = [line.strip() for line in fh if line.strip()]
    for name in NAMED:
        if name not in names:
            problems.append("%s is missing" % name)
    tests = [n for n in names if re.match(r"tests/test_.*\.py$", n)]
    if not tests:
        problems.append("no tests/test_*.py")
    c_files = [n for n in names if n.endswith((".c", ".h"))]
    if not c_files and "#include" not in build_ffi:
        problems.append("no C sources (neither *.c/*.h files nor C in build_ffi.py)")
    for name in tracked:
        if any(fnmatch.fnmatch(name, p) for p in NOT_SHIPPED):
            continue
        if name not in names:
            problems.append("%s (tracked by git) is missing" % name)
    for name in names:
        if any(fnmatch.fnmatch(name, p) for p in NEVER):
            problems.append("%s must not be in the sdist" % name)
    size = os.path.getsize(path)
    if size > SDIST_MAX_BYTES:
        problems.append("the sdist is %s, more than %s: what is in it?" % (_human(size), _human(SDIST_MAX_BYTES)))
    print("sdist %s: %s, %d files: %d tests/test_*.py, %d C files%s, LICENSE, README.md, SECURITY.md, "
          "packaging/debian" % (os.path.basename(path), _human(size), len(names), len(tests), len(c_files),
                                " (C in build_ffi.py)" if "#include" in build_ffi else ""))
    return problems


def check_wheel(path, required):
    problems = []
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    data = [n for n in names if ".data/data/" in n]
    want = ["pyqcrypt/__init__.py", "pyqcrypt/py.typed", "pyqcrypt/cli/__init__.py", "pyqcrypt/selftest.py"]
    for name in want:
        if name not in names:
            problems.append("%s is missing" % name)
    for module in required:
        if not any(re.match(r"pyqcrypt/%s\..*so$" % re.escape(module), n) for n in names):
            problems.append("the compiled module pyqcrypt/%s is missing" % module)
    for suffix in ("/share/man/man1/pyqcrypt.1", "/share/bash-completion/completions/pyqcrypt"):
        if not any(n.endswith(suffix) for n in data):
            problems.append("data file ...%s is missing" % suffix)
    # One wheel for every CPython >= 3.9: tagged so, and every compiled
    # module built against the stable ABI (cffi's Py_LIMITED_API).
    if not re.search(r"-cp39-abi3-linux_[^-]+\.whl$", os.path.basename(path)):
        problems.append("the wheel is not tagged cp39-abi3-linux_*")
    for name in names:
        if name.endswith(".so") and not name.endswith(".abi3.so"):
            problems.append("%s is not a stable-ABI (.abi3.so) module" % name)
    for name in names:
        if name.endswith((".c", ".h")) or name.startswith("tests/"):
            problems.append("%s must not be in the wheel" % name)
    modules = sorted(os.path.basename(n).split(".")[0] for n in names if n.endswith(".so"))
    print("wheel %s: %s, %d files; compiled: %s; data: %s" % (
        os.path.basename(path), _human(os.path.getsize(path)), len(names), ", ".join(modules),
        ", ".join(n.split(".data/data/")[1] for n in data)))
    return problems


def main(argv):
    if len(argv) >= 3 and argv[0] == "sdist":
        problems = check_sdist(argv[1], argv[2])
    elif len(argv) >= 2 and argv[0] == "wheel":
        required = argv[argv.index("--require") + 1:] if "--require" in argv else []
        problems = check_wheel(argv[1], required)
    else:
        sys.exit(__doc__)
    for p in problems:
        print("  PROBLEM: %s" % p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
