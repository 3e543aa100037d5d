# SPDX-License-Identifier: LGPL-2.1-or-later
"""Sphinx configuration of pyqcrypt's reference documentation: the Python
API from the docstrings (autodoc), the command line from the argument
parser (the same walk the man page renders, in _ext/pyqcrypt_cli.py), and
the Markdown guides beside this file (MyST).  ``bash ci/docs`` builds it
with warnings as errors."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
if os.environ.get("PYQCRYPT_DOCS_SOURCE"):          # document a source tree, not the installed package
    sys.path.insert(0, os.environ["PYQCRYPT_DOCS_SOURCE"])

import pyqcrypt  # noqa: E402

project = "pyqcrypt"
author = "the pyqcrypt developers"
copyright = "the pyqcrypt developers; LGPL-2.1-or-later"
version = release = pyqcrypt.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser", "pyqcrypt_cli"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
master_doc = "index"
html_theme = "alabaster"
html_theme_options = {"description": "qcow2-with-LUKS and LUKS volumes, compatible with QEMU and cryptsetup"}
html_last_updated_fmt = None
autodoc_member_order = "bysource"
autodoc_typehints = "description"
myst_heading_anchors = 3
nitpicky = False
