# SPDX-License-Identifier: LGPL-2.1-or-later
"""``python -m pyqcrypt`` runs the command-line tool."""

import sys

from .cli import main

sys.exit(main())
