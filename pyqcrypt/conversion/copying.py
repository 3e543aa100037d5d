# SPDX-License-Identifier: LGPL-2.1-or-later
"""Moving bytes for conversions: exact copies of ciphertext between
Storages (copy_file_range where it works, a read-ahead pipeline on block
devices; holes stay holes) and the image-to-image copy through the
decrypting/encrypting pipeline (pyqcrypt.pipeline) with zero detection.
"""

from ..errors import Error, FormatError
from ..lifecycle import BlockDevice
from ..pipeline import CHUNK, Piece, Pipeline, write_pieces
from ..storage import zero_fill


def copy_payload(src, src_start, length, dst, dst_start=0, progress=None, dense=False):
    """Copy exactly *length* bytes from Storage *src* to Storage *dst*.

    Only ranges the file system positively reports as holes are skipped
    (``Storage.data_runs``); they stay holes in a new file, or are written
    as zeros when *dense* (an existing target, whose old bytes must not
    show through).  Returns the number of data bytes copied.  Never
    returns having covered fewer than *length* bytes: a source that ends
    early is a FormatError naming where it ended."""
    have = src.size()
    if have < src_start + length:
        # past the end a hole map reports a hole: it would become zeros
        raise FormatError("%s ends at byte %d, before the %d bytes to copy from byte %d end"
                          % (src.path, have, length, src_start), path=src.path)
    pos = copied = 0
    # Block devices cannot copy_file_range: read and write overlap instead.
    pipelined = src.is_block_device or dst.is_block_device
    for a, b in src.data_runs(src_start, length):
        if not pos <= a < b <= length:
            raise Error("%s: inconsistent hole map (run %d..%d after %d)" % (src.path, a, b, pos))
        if dense and a > pos:
            zero_fill(dst.pwrite, dst_start + pos, a - pos)
        p = a
        if pipelined:
            _pipelined_copy(src, src_start + a, dst, dst_start + a, b - a,
                            progress and (lambda done, a=a: progress(a + done, length)))
            p = b
        while p < b:
            got = dst.copy_range_from(src, src_start + p, dst_start + p, min(b - p, 1 << 30))
            if got <= 0:
                raise Error("copying from %s stopped at byte %d of %d" % (src.path, p, length))
            p += got
            if progress:
                progress(p, length)
        copied += b - a
        pos = b
    if dense and pos < length:
        zero_fill(dst.pwrite, dst_start + pos, length - pos)
    if not dense and not dst.is_block_device and dst.size() < dst_start + length:
        dst.truncate(dst_start + length)        # a trailing hole exists once the size does
    if dst.size() < dst_start + length:
        raise Error("%s holds %d bytes after the copy, %d short of the %d needed"
                    % (dst.path, dst.size(), dst_start + length - dst.size(), dst_start + length))
    if progress:
        progress(length, length)
    return copied


def _pipelined_copy(src, src_off, dst, dst_off, length, progress=None):
    """Copy *length* bytes between Storages, reading ahead of writing
    (pyqcrypt.pipeline: a reader thread and a writer thread)."""
    def produce(get_buffer):
        pos = 0
        while pos < length:
            buf = get_buffer()
            n = min(CHUNK, length - pos)
            src.preadinto(buf.view[:n], src_off + pos, "data to copy")
            yield (pos, n), buf, None
            pos += n

    def sequence(item, buf):
        pos, n = item
        return [Piece(dst, dst_off + pos, buf.view[:n])]

    with Pipeline(chunk=CHUNK) as pipe:
        pipe.run(produce, sequence, progress and (lambda item: progress(item[0] + item[1])))


def _maybe_allocated(img, offset, length):
    """False only when [offset, offset+length) is known to be a hole."""
    check = getattr(img, "is_allocated", None)
    return True if check is None else check(offset, length)


ZERO_GRAIN = 64 << 10


def nonzero_runs(buf, n, grain):
    """The (start, end) runs of the first *n* bytes of the pipeline Buffer
    *buf* that are not all-zero grains (one memcmp per grain)."""
    runs = []
    start = None
    for g in range(0, n, grain):
        if buf.is_zero(g, min(g + grain, n)):
            if start is not None:
                runs.append((start, g))
                start = None
        elif start is None:
            start = g
    if start is not None:
        runs.append((start, n))
    return runs


def read_into(img, offset, view, jobs):
    """Read into *view* (a reused buffer); an image that can leaves its
    decryption to the pipeline, appended to *jobs*."""
    readinto = getattr(img, "readinto", None)
    if readinto is None:
        view[:] = img.read(offset, len(view))
    else:
        readinto(offset, view, jobs)


def copy_image(src_img: BlockDevice, dst_img: BlockDevice, progress=None, sparse: bool = True) -> None:
    """Copy every byte of *src_img* into *dst_img* in CHUNK pieces through
    the conversion pipeline (pyqcrypt.pipeline: reading, decrypting,
    encrypting and writing overlap, on every core, in one CHUNK buffer
    per worker).  When *sparse*, holes are skipped and all-zero grains (64 KiB,
    or a destination cluster) are not written, so they stay unallocated.
    The caller flushes *dst_img* afterwards."""
    size = src_img.size
    grain = max(ZERO_GRAIN, getattr(dst_img, "cluster_size", 0))
    plan = getattr(dst_img, "plan_write", None)
    wants_flush = getattr(dst_img, "wants_flush", None)

    def produce(get_buffer):
        pos = 0
        while pos < size:
            n = min(CHUNK, size - pos)
            if sparse and not _maybe_allocated(src_img, pos, n):
                yield (pos, n), None, None
            else:
                buf = get_buffer()
                jobs = []
                read_into(src_img, pos, buf.view[:n], jobs)
                yield (pos, n), buf, jobs
            pos += n

    def sequence(item, buf):
        pos, n = item
        if wants_flush is not None and wants_flush():
            pipe.barrier()              # the metadata after the data it names
            dst_img.flush()
        if buf is None:
            return None
        view = buf.view[:n]
        pieces = []
        for a, b in (nonzero_runs(buf, n, grain) if sparse else [(0, n)]):
            planned = plan(pos + a, view[a:b]) if plan is not None else None
            if planned is not None:
                pieces.extend(planned)
                continue
            # A write the pipeline cannot plan (a partial cluster, ...): it
            # may flush metadata, so everything mapped before goes first.
            pipe.barrier()
            write_pieces(pieces)
            pieces = []
            dst_img.write(pos + a, view[a:b])
        return pieces

    with Pipeline(chunk=CHUNK) as pipe:
        pipe.run(produce, sequence, progress and (lambda item: progress(sum(item), size)))
    if progress and size == 0:
        progress(0, 0)

