# SPDX-License-Identifier: LGPL-2.1-or-later
"""Hooks through which the command line hears about slow work deep in the
library, without the library printing anything itself (and without the
command line importing the layers that do the work before it needs them).

``slow_pbkdf2``: called with one sentence when a key derivation that was
given a description (a keyslot being tried) has run for a few seconds;
None keeps the library quiet.
"""

from typing import Callable, Optional

slow_pbkdf2: Optional[Callable[[str], None]] = None
