# SPDX-License-Identifier: LGPL-2.1-or-later
"""The exception hierarchy every pyqcrypt layer raises from.

Messages name files, fields and offsets, never secrets.
"""


class Error(Exception):
    """Base class of every error pyqcrypt raises on purpose."""


class CryptoError(Error):
    """OpenSSL refused an operation; the message carries OpenSSL's reason."""


class UnsupportedCipher(Error):
    """A cipher, mode, IV generator or hash this system cannot provide."""


class FormatError(Error):
    """Malformed or inconsistent on-disk data.

    ``field`` and ``offset`` (when known) say where the problem is.
    """

    def __init__(self, message, field=None, offset=None, path=None):
        self.field = field
        self.offset = offset
        self.path = path
        where = []
        if path is not None:
            where.append(str(path))
        if field is not None:
            where.append(field)
        if offset is not None:
            where.append("at offset %d" % offset)
        super().__init__(("%s: %s" % (" ".join(where), message)) if where else message)


class WrongPassphrase(Error):
    """No keyslot opens with the given passphrase (cryptsetup's wording)."""

    def __init__(self, message="No key available with this passphrase."):
        super().__init__(message)


class StorageError(Error):
    """A read, write or sync failed (ENOSPC, EIO, ...); names file and operation."""


class MissingDependency(Error):
    """An optional system library (or its binding) is not installed."""
