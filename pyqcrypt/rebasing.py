# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt.rebase`` (this module: rebasing): give a qcow2 image
another backing file, as ``qemu-img rebase`` does.

Unsafe (``unsafe=True``, qemu-img's ``-u``): only the backing file name
and format in the header change; nothing is read, no key is needed, and
the new backing file need not exist.

Safe (the default): the guest must see the same data after the change.
Wherever the image does not allocate a cluster (it reads through to its
backing chain) and the old chain and the new one hold different data, the
old chain's data is copied into the image (encrypted with the image's key
when it is encrypted); then the header changes.  An empty name removes
the backing file: everything the old chain provides is copied (a
flatten).  The copied data and its tables are flushed before the header
is rewritten (qcow2/backing_link.py), so a crash leaves the old link with
the same guest data, at worst with leaked clusters.

The new backing file's name is stored as given; a relative one is found
from the image's directory, as QEMU finds it.
"""

from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from .errors import Error

if TYPE_CHECKING:
    from dataclasses import dataclass, field
    from .image import Secret, StrPath
else:
    from ._record import dataclass, field

# Bytes compared (and copied) at a time.
CHUNK = 4 << 20
# The most qemu-img rebase looks at in one step (its IO_BUF_SIZE): one
# progress step each.
STEP = 2 << 20


@dataclass
class RebaseRequest:
    """What a safe or unsafe rebase takes besides the image's path:
    *backing* ("" for none), *backing_format* (needed with a backing
    file, as qemu-img 7.2 needs it), *passphrase* of the image,
    *backing_passphrase* of its old chain and *new_backing_passphrase* of
    the new one (each as ``pyqcrypt.open`` takes backing_passphrase; the
    new chain's first entry is the new backing file's own), and
    *progress*, called after each range (of at most 2 MiB, as qemu-img
    steps) that reads through to the backing chain, with (the range's end,
    the image's size); *force_share* reads the new backing chain without
    taking QEMU's lock (qemu-img's -U, which leaves the old chain, opened
    with the image, locked)."""
    backing: str
    backing_format: Optional[str] = None
    unsafe: bool = False
    # (secrets never in the repr)
    passphrase: "Optional[Secret]" = field(default=None, repr=False)
    backing_passphrase: "Union[Secret, Sequence[Optional[Secret]], None]" = field(default=None,
                                                                                  repr=False)
    new_backing_passphrase: "Union[Secret, Sequence[Optional[Secret]], None]" = field(default=None,
                                                                                      repr=False)
    progress: Optional[Callable[[int, int], None]] = None
    force_share: bool = False           # read the new backing chain without QEMU's lock (-U)


def rebase(path: "StrPath", backing: str, backing_format: Optional[str] = None,
           unsafe: bool = False, **options) -> None:
    """Make *backing* the backing file of the qcow2 image at *path* (see
    the module docstring); *options* are RebaseRequest's other fields."""
    run_rebase(str(path), RebaseRequest(backing, backing_format, unsafe, **options))


def run_rebase(path, request):
    """``rebase`` with its RebaseRequest."""
    from .probe import detect
    from .qcow2.backing_link import check_link, relink
    check_link(request.backing, request.backing_format)
    if detect(path) != "qcow2":
        raise Error("Could not change the backing file to '%s': Operation not supported"
                    % request.backing)
    if request.unsafe:
        _need_format(request)
        relink(path, request.backing, request.backing_format)
        return
    refuse_bitmaps(path, "rebase")
    from .image import open_image
    img = open_image(path, request.passphrase, writable=True, format="qcow2",
                     backing_passphrase=request.backing_passphrase)
    with img:
        new = _open_new_backing(path, request)
        try:
            _need_format(request)
            _copy_differences(img, new, _layers_between(img, path, request.backing),
                              request.progress)
        finally:
            if new is not None:
                new.close()
        img.flush()                 # the data and its tables before the header names the new file
        from .qcow2.backing_link import store_link
        with img._lock:
            store_link(img.st, img.header, request.backing, request.backing_format)


def refuse_bitmaps(path, verb):
    """A qcow2 image with persistent dirty bitmaps is not written: a
    writable open would invalidate them (QEMU updates them instead)."""
    from .qcow2.open import read_header
    from .storage import Storage
    with Storage(path) as st:
        if read_header(st).has_bitmaps:
            raise Error("%s has persistent bitmaps, which pyqcrypt cannot keep up to date; use "
                        "qemu-img %s" % (path, verb))


def _need_format(request):
    if request.backing and not request.backing_format:
        raise Error("Could not change the backing file to '%s': backing format must be specified"
                    % request.backing)


def _open_new_backing(path, request):
    """The new backing chain, open for reading, or None for no backing."""
    import os
    from .image import backing_path, open_image
    if not request.backing:
        return None
    where = backing_path(path, request.backing)
    try:
        os.stat(where)
    except OSError as exc:
        raise Error("Could not open new backing file '%s': Could not open '%s': %s"
                    % (request.backing, where, exc.strerror or exc)) from None
    fmt = request.backing_format
    if fmt is not None and fmt not in ("qcow2", "luks", "raw"):
        raise Error("Could not open new backing file '%s': pyqcrypt reads qcow2, luks and raw "
                    "images, not %s" % (request.backing, fmt))
    secrets = request.new_backing_passphrase
    if isinstance(secrets, (list, tuple)):
        first, rest = (secrets[0] if secrets else None), list(secrets[1:])
    else:
        first, rest = secrets, secrets
    from .probe import detect
    encrypted = (fmt or detect(where)) in ("luks", "luks2") or _qcow2_encrypted(where, fmt)
    if encrypted and first is None:
        raise Error("Could not open new backing file '%s': it is encrypted; give its secret "
                    "(API: new_backing_passphrase)" % request.backing)
    return open_image(where, first if encrypted else None, format=fmt, backing_passphrase=rest,
                      force_share=request.force_share)


def _qcow2_encrypted(where, fmt):
    from .probe import detect
    from .qcow2 import qcow2_encrypted
    return (fmt or detect(where)) == "qcow2" and qcow2_encrypted(where)


def read_chain(chain, offset, length):
    """What the guest of *chain* (an open image, or None) reads at
    [offset, offset+length): zeros past its end, or everywhere for None."""
    out = bytearray(length)
    if chain is not None:
        avail = max(0, min(length, chain.size - offset))
        if avail:
            chain.readinto(offset, memoryview(out)[:avail])
    return out


def _layers_between(img, path, backing):
    """When the new backing file is a layer of the old chain: the open
    layers above it (the old backing file first), where alone the two
    chains can differ; else None."""
    if not backing:
        return None
    from .image import backing_path
    target, layer, between = backing_path(path, backing), img.backing, []
    for below, _ in backing_layers(path):
        if layer is None:
            return None
        if same_file(below, target):
            return between
        between.append(layer)
        layer = getattr(layer, "backing", None)
    return None


def _copy_differences(img, new, between, progress):
    """Copy, where *img* reads through to its backing chain and that
    chain differs from *new*, the old chain's data into *img*; with
    *between* (the new backing file is in the old chain) only where those
    layers allocate.  The walk is qemu-img's, step for step (its progress
    steps are these): at most STEP bytes from where the last step ended,
    cut where a chain ends."""
    old, size = img.backing, img.size
    ends = [chain.size for chain in (old, new) if chain is not None]
    for offset, stop in _read_through_runs(img):
        while offset < stop:
            count = min(STEP, stop - offset)
            if between is not None:
                allocated, count = _allocated_above(between, offset, count)
                if not allocated:
                    offset += count
                    continue
            for end in ends:                # qemu-img reads each chain up to its end
                if offset < end < offset + count:
                    count = end - offset
            if (old or new) is not None:
                _copy_run(img, old, new, offset, count)
            offset += count
            if progress is not None:
                progress(offset, size)


def _read_through_runs(img):
    """The (start, end) runs where *img* reads through to its backing
    chain, each found when the walk reaches it (the walk writes only
    behind itself, so what lies ahead is as it was)."""
    from .qcow2.block_status import SC_UNALLOCATED_ALLOC, SC_UNALLOCATED_PLAIN
    offset = 0
    while offset < img.size:
        kind, count, _ = img.block_status_run(offset, img.size - offset)
        if kind in (SC_UNALLOCATED_PLAIN, SC_UNALLOCATED_ALLOC):
            yield offset, offset + count
        offset += count


def _allocated_above(between, pos, length):
    """(whether one of the *between* layers allocates the run at *pos*,
    its length), as QEMU's allocated-above query answers."""
    from .qcow2.block_status import SC_UNALLOCATED_ALLOC, SC_UNALLOCATED_PLAIN
    for layer in between:
        if pos >= layer.size:               # a short layer's zeros count as its own
            return True, length
        kind, count, _ = layer.block_status_run(pos, min(length, layer.size - pos))
        if kind not in (SC_UNALLOCATED_PLAIN, SC_UNALLOCATED_ALLOC):
            return True, count
        length = min(length, count)
    return False, length


def _holds_data(chain, offset, length):
    """False only when *chain* surely reads zeros over the range (nothing
    allocated there, or past its end)."""
    if chain is None or offset >= chain.size:
        return False
    probe = getattr(chain, "is_allocated", None)
    return probe is None or probe(offset, min(length, chain.size - offset))


def _copy_run(img, old, new, start, count):
    end, pos = start + count, start
    while pos < end:
        stop = min(end, (pos // CHUNK + 1) * CHUNK)
        if not _holds_data(old, pos, stop - pos) and not _holds_data(new, pos, stop - pos):
            pos = stop                          # zeros on both sides: nothing to read
            continue
        theirs, ours = read_chain(old, pos, stop - pos), read_chain(new, pos, stop - pos)
        if theirs != ours:
            for a, b in _differing(theirs, ours, pos, img.cluster_size):
                img.write(pos + a, memoryview(theirs)[a:b])
        pos = stop


def _differing(theirs, ours, pos, cs):
    """The (begin, end) runs of whole clusters (relative to *pos*) where
    the two buffers differ, neighbours merged into one write."""
    runs, piece, n = [], 0, len(theirs)
    while piece < n:
        nxt = min(n, (pos + piece) // cs * cs + cs - pos)
        if theirs[piece:nxt] != ours[piece:nxt]:
            if runs and runs[-1][1] == piece:
                runs[-1][1] = nxt
            else:
                runs.append([piece, nxt])
        piece = nxt
    return runs


def backing_layers(path):
    """The (path, format) of every layer below the qcow2 image at *path*,
    from the top down, found from the headers alone (no key needed); the
    walk stops at a layer that is missing or not qcow2."""
    import os
    from .image import MAX_CHAIN_DEPTH, backing_path
    from .probe import detect
    from .qcow2.open import read_header
    from .storage import Storage
    layers, here = [], path
    while len(layers) < MAX_CHAIN_DEPTH:
        with Storage(here) as st:
            header = read_header(st)
        if not header.backing_file:
            break
        below = backing_path(here, header.backing_file)
        if not os.path.exists(below):
            break
        fmt = header.backing_format or detect(below)
        layers.append((below, fmt))
        if fmt != "qcow2":
            break
        here = below
    return layers


def same_file(one, other):
    """True when the two paths name the same existing file."""
    import os
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False
