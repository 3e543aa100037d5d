# SPDX-License-Identifier: LGPL-2.1-or-later
"""Lazy package exports (PEP 562): a package names what it exports and the
module each name lives in, and a name is imported on first use, so that
importing one module of a package does not import all of them (start-up:
a command loads only what it runs)."""

import importlib
from typing import Any, Callable, Dict


def exports(package: str, where: Dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of *package*: *where* maps each exported
    name to its module (relative, ".header").  A name that is not exported
    but is a submodule (``pkg.sub`` before anyone imported it) is imported
    as one.  No exported name may equal a submodule's name: the import
    system sets ``pkg.sub`` when it loads the submodule, so the name would
    be the function or the module depending on import order."""
    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            try:
                return importlib.import_module("." + name, package)
            except ModuleNotFoundError as exc:
                if exc.name != "%s.%s" % (package, name):
                    raise
                raise AttributeError("module %r has no attribute %r" % (package, name)) from None
        value = getattr(importlib.import_module(module, package), name)
        setattr(importlib.import_module(package), name, value)
        return value
    return __getattr__
