# SPDX-License-Identifier: LGPL-2.1-or-later
"""Size limits for the package: no function or method over 60 lines, no
class over 300, no file under pyqcrypt/ over 500.

Why: each piece should be a small room a maintainer can hold in mind at
once, read from top to bottom without losing its beginning.  A function,
class or file that outgrows its limit is split along its seams (the
helpers it runs one after another, the parts of a walk, the tables it
reads) rather than let grow.

The lengths come from Python's own parser (``ast``): a function or class
counts from its ``def``/``class`` line to its last line, its docstring
and comments included; a nested function counts on its own as well as in
the function around it.  Prints each offender as ``path:line name N
lines`` (name qualified by its class or function) and exits 1 when there
is one, 0 otherwise.  Run by ci/lint; needs nothing but the standard
library.
"""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "pyqcrypt"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300
MAX_FILE_LINES = 500


def python_files(root):
    """Every .py file under *root*, as paths relative to ROOT, sorted."""
    found = []
    for folder, dirs, files in os.walk(os.path.join(ROOT, root)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(found)


def _definitions(node, prefix=""):
    """(qualified name, node) of every function and class inside *node*,
    nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + child.name
            yield name, child
            yield from _definitions(child, name + ".")
        else:
            yield from _definitions(child, prefix)


def offenders(path):
    """(line, name, length) of everything in the file *path* (relative to
    ROOT) that is over its limit."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
        source = fh.read()
    found = []
    file_lines = len(source.splitlines())
    if file_lines > MAX_FILE_LINES:
        found.append((1, os.path.basename(path), file_lines))
    for name, node in _definitions(ast.parse(source, filename=path)):
        length = node.end_lineno - node.lineno + 1
        limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
        if length > limit:
            found.append((node.lineno, name, length))
    return found


def main():
    count = 0
    for path in python_files(PACKAGE):
        for line, name, length in offenders(path):
            print("%s:%d %s %d lines" % (path, line, name, length))
            count += 1
    if count:
        print("ci/sizes: %d over the limits (functions %d lines, classes %d, files %d)"
              % (count, MAX_FUNCTION_LINES, MAX_CLASS_LINES, MAX_FILE_LINES), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
