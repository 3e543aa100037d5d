# SPDX-License-Identifier: LGPL-2.1-or-later
"""Publication: new files appear whole under their final names, or not at all.

A new file is built under a visible temporary name beside its final one
(``tmp_name``: ``NAME.pyqcrypt-PID.tmp``), so a user sees, and can remove,
what a killed run left behind (``leftovers``, ``warn_leftovers``).  Once
complete it is synced and moved into place with ``rename_noreplace``, which
never replaces a file that appeared at the final name meanwhile, and the
directory is synced (``fsync_dir``).  ``NewFile`` is one such file;
``Staged`` is one that other code (a create function, libcryptsetup) builds
under the temporary name; ``publish`` and ``Publication`` put one or
several of them into place together.
"""

import errno
import functools
import os

from ..errors import Error, StorageError
from .positioned import Storage

TMP_TAG = ".pyqcrypt-"
TMP_SUFFIX = ".tmp"

# What a failed move into place says, "%s" being the final name.
APPEARED_WRITING = ("%s appeared while pyqcrypt was writing it; it was left alone (the new file "
                    "is removed)")


def unlink_quietly(path):
    """Remove *path* on a path that is already failing (cleanup); a file
    that is gone or cannot be removed does not replace the first error."""
    try:
        os.unlink(path)
    except OSError:
        pass


def tmp_name(path):
    """The visible temporary name a new *path* is built under, beside it:
    ``NAME.pyqcrypt-PID.tmp``, so a user sees (and can remove) what a
    killed run left, and the next run can say so."""
    return "%s%s%d%s" % (os.path.abspath(path), TMP_TAG, os.getpid(), TMP_SUFFIX)


def leftovers(path):
    """Temporaries of *path* left by pyqcrypt runs whose process is gone."""
    import glob
    found = []
    for name in glob.glob(glob.escape(os.path.abspath(path)) + TMP_TAG + "*" + TMP_SUFFIX):
        pid = name[len(os.path.abspath(path)) + len(TMP_TAG):].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            found.append(name)
        except OSError:
            pass                    # alive (EPERM) or unknown: not ours to judge
    return found


def warn_leftovers(path):
    import warnings
    for name in leftovers(path):
        warnings.warn("%s is left over from an interrupted pyqcrypt run (its process is gone); "
                      "it is safe to remove" % name, stacklevel=3)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


@functools.lru_cache(maxsize=None)
def _libc_renameat2():
    """libc's renameat2, or None without one.  Looked up in the C library
    this process already runs on: ctypes.util.find_library would spawn
    ldconfig, a few milliseconds per call."""
    import ctypes
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _renameat2_noreplace(src, dst):
    """renameat2(RENAME_NOREPLACE) through libc; False when the kernel, libc
    or file system does not offer it (the caller falls back to link)."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    import ctypes
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def rename_noreplace(src, dst):
    """Move *src* to *dst*, failing (FileExistsError) instead of replacing
    anything that appeared at *dst* meanwhile; any other failure is a
    StorageError."""
    try:
        if _renameat2_noreplace(src, dst):
            return
        os.link(src, dst)           # EEXIST if dst exists; atomic on POSIX file systems
        os.unlink(src)
    except FileExistsError:
        raise
    except OSError as exc:
        raise StorageError("moving %s into place as %s failed: %s"
                           % (src, dst, exc.strerror or exc)) from None


def fsync_dir(path):
    """fsync the directory holding *path* (a rename is durable only then)."""
    dirname = os.path.dirname(os.path.abspath(path))
    try:
        dirfd = os.open(dirname, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError as exc:
        raise StorageError("syncing directory %s failed: %s"
                           % (dirname, exc.strerror or exc)) from None


class _Unpublished:
    """A file under its temporary name ``tmp`` that is to appear as
    ``path``; ``committed`` once it is there."""

    path = tmp = ""
    committed = False

    def _finish(self):
        """Make the file's bytes durable and let go of it."""
        raise NotImplementedError

    def _place(self, appeared):
        """Move the file into place; *appeared* % path is the error when
        something else took the final name meanwhile."""
        try:
            rename_noreplace(self.tmp, self.path)
        except FileExistsError:
            raise Error(appeared % self.path) from None
        self.committed = True
        fsync_dir(self.path)

    def abort(self):
        """Remove the file, whether or not it was committed (on a path
        that is already failing: errors here do not replace that one)."""
        for name in (self.tmp, self.path if self.committed else None):
            if name is not None:
                unlink_quietly(name)


class NewFile(_Unpublished):
    """A new file built under a visible temporary name beside *path*
    (``tmp_name``) and moved to *path* only by ``commit()``, which never
    replaces a file that appeared there meanwhile; ``abort()`` removes it.
    So a failed create or convert leaves nothing behind."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.lexists(self.path):
            raise Error("%s already exists; pyqcrypt never replaces a file: remove it first"
                        % self.path)
        # A name that already is this process's temporary (a conversion
        # stages its destination, then creates it) is built in place: a
        # second suffix would only be left behind by a kill.
        self.staged = os.path.abspath(self.path).endswith(
            "%s%d%s" % (TMP_TAG, os.getpid(), TMP_SUFFIX))
        if not self.staged:
            warn_leftovers(self.path)
        self.tmp = self.path if self.staged else tmp_name(self.path)
        self.storage = Storage(self.tmp, writable=True, create=True, exclusive=True)

    def _finish(self):
        self.storage.sync()
        self.storage.close()

    def _place(self, appeared):
        if self.staged:
            self.committed = True           # its owner moves it into place
            return
        super()._place(appeared)

    def commit(self):
        """fsync, then move into place without replacing, then fsync the
        directory."""
        publish([self])

    def abort(self):
        """Close the file, then remove it (``_Unpublished.abort``)."""
        try:
            self.storage.close()
        except StorageError:
            pass
        super().abort()


class Staged(_Unpublished):
    """A new *path* that other code builds, and closes, under
    ``tmp_name(path)`` (``tmp``): a create function, libcryptsetup."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.tmp = tmp_name(self.path)

    def _finish(self):
        with Storage(self.tmp) as st:
            st.sync()


def publish(files, appeared=APPEARED_WRITING):
    """Put the new *files* (NewFile, Staged) into place, in the order
    given: first every one is synced (and closed), then each is moved to
    its final name, never replacing anything (*appeared* % name is the
    Error when something took that name meanwhile), and its directory
    synced.  So nothing appears before all the bytes are durable, and a
    run that dies between two moves leaves only the files listed before:
    callers list a detached header before its payload (a payload alone is
    never published) and a qcow2 data file before the image that names it.
    On failure the files already in place are committed; the caller's
    abort() removes them with the rest."""
    for new in files:
        new._finish()
    for new in files:
        new._place(appeared)


class Publication:
    """Several new files that appear together or not at all (``publish``):
    ``new`` and ``stage`` add them, last unless *first*; ``commit()`` puts
    them into place.  Used as a context manager, leaving the block without
    a commit (an exception) removes every one, committed or not."""

    def __init__(self, appeared=APPEARED_WRITING):
        self.files = []
        self.appeared = appeared
        self.committed = False

    def _add(self, new, first):
        self.files.insert(0 if first else len(self.files), new)
        return new

    def new(self, path, first=False):
        """A NewFile for *path*, published ahead of those already added
        when *first*."""
        return self._add(NewFile(path), first)

    def stage(self, path, first=False):
        """A Staged *path* (its ``tmp`` is the name to build it under)."""
        return self._add(Staged(path), first)

    def commit(self):
        publish(self.files, self.appeared)
        self.committed = True

    def abort(self):
        for new in self.files:
            new.abort()

    def published(self):
        """The final names already in place."""
        return [new.path for new in self.files if new.committed]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self.abort()
