# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt.commit`` (this module: committing): write a qcow2 image's
changes into its backing file, as ``qemu-img commit`` does.

Every range the image allocates (data or zero clusters) is read through
its chain and written into its backing file, or with *base* into that
layer further down the chain: then the ranges the layers in between
allocate are committed too, so that *base* ends up with what the top
image shows (qemu-img's ``-b``).  Zeros are written as zeros (zero
clusters where the base is a version 3 qcow2 image).  The base is
written through ``pyqcrypt.open``: an encrypted base needs its secret,
and its data and tables are flushed before anything else changes.  A
base smaller than the image is grown to its size first, as qemu-img
grows it (qcow2 bases only).

Then, with *drop* (qemu-img without ``-d`` or ``-b``), the image is
emptied: its clusters are given back and read through to the backing
file again, which now holds the same data, so a crash at any point
leaves the guest's data unchanged (at worst with leaked clusters); see
qcow2/make_empty.py.
"""

import os
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from .errors import Error
from .rebasing import CHUNK

if TYPE_CHECKING:
    from dataclasses import dataclass, field
    from .image import Secret, StrPath
else:
    from ._record import dataclass, field


@dataclass
class CommitRequest:
    """What a commit takes besides the image's path: *base* (None: the
    backing file), *drop* (empty the image afterwards; only into its own
    backing file), the image's *passphrase*, its chain's
    *backing_passphrase* (as ``pyqcrypt.open`` takes it) and *progress*,
    called with (bytes committed, bytes to commit)."""
    base: Optional[str] = None
    drop: bool = True
    passphrase: "Optional[Secret]" = field(default=None, repr=False)
    backing_passphrase: "Union[Secret, Sequence[Optional[Secret]], None]" = field(default=None,
                                                                                  repr=False)
    progress: Optional[Callable[[int, int], None]] = None


def commit(path: "StrPath", base: Optional[str] = None, drop: bool = True, **options) -> None:
    """Commit the qcow2 image at *path* into its backing file, or into
    the layer *base* names (matched as qemu-img matches it: the stored
    backing file name, or the same file); see the module docstring.
    *drop* (empty the image afterwards) needs *base* to be the image's own
    backing file.  *options* are CommitRequest's other fields (secrets as
    for ``pyqcrypt.open``)."""
    run_commit(str(path), CommitRequest(base, drop, **options))


def run_commit(path, request):
    """``commit`` with its CommitRequest."""
    layers = _layers(path)
    depth = _base_depth(path, layers, request.base)
    if request.drop and depth:
        raise Error("%s: only an image committed into its own backing file can be emptied "
                    "(drop=False)" % path)
    from .qcow2 import open_qcow2
    from .rebasing import refuse_bitmaps
    for written, fmt in ([(path, "qcow2")] if request.drop else []) + [layers[depth]]:
        if fmt == "qcow2":
            refuse_bitmaps(written, "commit")
    top = open_qcow2(path, request.passphrase, writable=request.drop)
    with top:
        chain = _open_below(path, layers[:depth + 1], request.backing_passphrase)
        for upper, lower in zip([top] + chain, chain):
            upper.backing = lower           # from here, closing the top closes them all
        if chain[-1].size < top.size:
            _grow(chain[-1], top.size)
        _copy_up(top, [top] + chain[:-1], chain[-1], request.progress)
        chain[-1].flush()
        if request.drop:
            from .qcow2.make_empty import make_empty
            make_empty(top)
            top.flush()


def _open_below(path, layers, secrets):
    """The *layers* open: those above the base read-only, the base (the
    last, with its own chain) writable."""
    from .image import _split_passphrases
    from .qcow2 import open_qcow2
    opened = []
    try:
        for layer_path, _ in layers[:-1]:
            this, secrets = _split_passphrases(secrets)
            opened.append(open_qcow2(layer_path, _needed(layer_path, "qcow2", this)))
        this, secrets = _split_passphrases(secrets)
        opened.append(_open_base(path, layers[-1], this, secrets))
        return opened
    except BaseException:
        for img in opened:
            img.close()
        raise


def _layers(path):
    from .probe import detect
    from .qcow2.open import read_header
    from .rebasing import backing_layers
    from .storage import Storage
    if detect(path) != "qcow2":             # raw and LUKS images have no backing file
        raise Error("Image does not have a backing file")
    with Storage(path) as st:
        header = read_header(st)
    if not header.backing_file:
        raise Error("Image does not have a backing file")
    layers = backing_layers(path)
    if not layers:
        from .image import backing_path
        raise Error("Could not open '%s': Could not open backing file: Could not open '%s': No "
                    "such file or directory" % (path, backing_path(path, header.backing_file)))
    return layers


def _base_depth(path, layers, base):
    """Which layer (0: the backing file) *base* names."""
    if base is None:
        return 0
    from .image import backing_path
    from .qcow2.open import read_header
    from .rebasing import same_file
    from .storage import Storage
    above = path
    for depth, (layer, _) in enumerate(layers):
        with Storage(above) as st:
            stored = read_header(st).backing_file
        if base == stored or same_file(base, layer) or same_file(backing_path(above, base), layer):
            return depth
        above = layer
    raise Error("Did not find '%s' in the backing chain of '%s'" % (base, path))


def _needed(layer_path, fmt, secret):
    """*secret* when the layer is encrypted (an error without one)."""
    from .qcow2 import qcow2_encrypted
    encrypted = fmt in ("luks", "luks2") or fmt == "qcow2" and qcow2_encrypted(layer_path)
    if encrypted and secret is None:
        raise Error("%s is encrypted; give its secret with --image-opts backing.[...]"
                    "encrypt.key-secret=ID (API: backing_passphrase)" % layer_path)
    return secret if encrypted else None


def _open_base(path, layer, secret, below):
    from .image import open_image
    layer_path, fmt = layer
    if fmt not in ("qcow2", "luks", "raw"):
        raise Error("%s: its backing file %s has format %r, which pyqcrypt cannot write"
                    % (path, layer_path, fmt))
    if not os.access(layer_path, os.W_OK):
        raise Error("Could not reopen '%s' read-write: Permission denied" % layer_path)
    return open_image(layer_path, _needed(layer_path, fmt, secret), writable=True, format=fmt,
                      backing_passphrase=below)


def _grow(base, size):
    """Make the base as large as the image committed into it, as qemu-img
    does (a qcow2 base: its grown range reads as zeros)."""
    from .qcow2.image import Qcow2Image
    from .qcow2.resize import resize_qcow2
    if not isinstance(base, Qcow2Image):
        raise Error("%s is smaller than the image committed into it; pyqcrypt grows only qcow2 "
                    "images here (pyqcrypt resize it first)" % getattr(base, "path", "the base"))
    resize_qcow2(base, size)


def allocated_ranges(layers, size):
    """The merged (start, end) ranges any of the qcow2 *layers* allocates
    (data or zeros: anything that does not read through to the layer
    below) within [0, size)."""
    from .qcow2.block_status import SC_UNALLOCATED_ALLOC, SC_UNALLOCATED_PLAIN
    spans = []
    for img in layers:
        offset, end = 0, min(size, img.size)
        while offset < end:
            kind, count, _ = img.block_status_run(offset, end - offset)
            if kind not in (SC_UNALLOCATED_PLAIN, SC_UNALLOCATED_ALLOC):
                spans.append((offset, offset + count))
            offset += count
    merged = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(s, e) for s, e in merged]


def _copy_up(top, above, base, progress):
    """Write what *top* shows over every range the *above* layers
    allocate into *base*."""
    ranges = allocated_ranges(above, top.size)
    total, done = sum(e - s for s, e in ranges), 0
    for start, stop in ranges:
        pos = start
        while pos < stop:
            n = min(stop - pos, CHUNK - pos % CHUNK)
            data = top.read(pos, n)
            if data.count(0) == n:
                base.write_zeroes(pos, n)
            else:
                base.write(pos, data)
            pos += n
            done += n
            if progress is not None:
                progress(done, total)
    if progress is not None and not total:
        progress(0, 0)
