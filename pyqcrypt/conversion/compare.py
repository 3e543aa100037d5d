# SPDX-License-Identifier: LGPL-2.1-or-later
"""--verify: byte comparison of two Storages or two images, read ahead and
decrypted on every core; each failure names the first differing byte.
"""

from .. import image as images
from ..errors import Error
from ..lifecycle import BlockDevice
from ..pipeline import Buffer, CHUNK, Pipeline
from .copying import read_into


def first_difference(a, a_start, b, b_start, length):
    """The offset (relative to the starts) of the first byte where the two
    Storages differ over *length* bytes, or None when they are equal.  The
    two reads overlap (one in a helper thread; both release the GIL; on a
    block device they bypass the page cache, see pyqcrypt.storage)."""
    import concurrent.futures
    buf_a, buf_b = Buffer(CHUNK), Buffer(CHUNK)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pos = 0
        while pos < length:
            n = min(CHUNK, length - pos)
            fut = pool.submit(a.preadinto, buf_a.view[:n], a_start + pos, "data to verify")
            b.preadinto(buf_b.view[:n], b_start + pos, "data to verify")
            fut.result()
            diff = first_diff(buf_a, buf_b, n)
            if diff is not None:
                return pos + diff
            pos += n
    return None


def first_diff(a, b, n):
    """The first index where the first *n* bytes of pipeline Buffers *a*
    and *b* differ, or None (a memcmp when they are equal)."""
    if a.raw.startswith(b.view[:n], a.off, a.off + n):
        return None
    step = 4096
    for i in range(0, n, step):
        e = min(i + step, n)
        if not a.raw.startswith(b.view[i:e], a.off + i, a.off + e):
            return next(j for j in range(i, e) if a.view[j] != b.view[j])
    return None


def verify_range(a, a_start, b, b_start, length, what):
    diff = first_difference(a, a_start, b, b_start, length)
    if diff is not None:
        raise Error("verification failed: the %s differs at byte %d (%s offset %d, %s offset %d)"
                    % (what, diff, a.path, a_start + diff, b.path, b_start + diff))


def verify_bytes(expected, st, offset, what):
    got = st.pread(offset, len(expected), what)
    if got != expected:
        diff = next(i for i in range(len(expected)) if got[i] != expected[i])
        raise Error("verification failed: the %s differs at byte %d (%s offset %d)"
                    % (what, diff, st.path, offset + diff))


def verify_images(src_img: BlockDevice, dst, dst_passphrase, dst_header, dst_format) -> None:
    """Re-encrypting --verify: the decrypted bytes of the destination
    against the source's, as qemu-img compare does; both read ahead and
    decrypted on every core (pyqcrypt.pipeline)."""
    with images.open_image(dst, passphrase=dst_passphrase, header=dst_header,
                     format=dst_format) as dst_img:
        size = src_img.size
        if dst_img.size < size:
            raise Error("verification failed: %s holds %d bytes, the source %d"
                        % (dst, dst_img.size, size))

        def produce(get_buffer):
            for pos in range(0, size, CHUNK):
                n = min(CHUNK, size - pos)
                a = get_buffer()
                b = get_buffer()
                jobs = []
                read_into(src_img, pos, a.view[:n], jobs)
                read_into(dst_img, pos, b.view[:n], jobs)
                yield (pos, n, b), a, jobs

        def sequence(item, a):
            pos, n, b = item
            diff = first_diff(a, b, n)
            if diff is not None:
                raise Error("verification failed: guest byte %d differs between the source "
                            "and %s" % (pos + diff, dst))
            return None

        with Pipeline(chunk=CHUNK) as pipe:
            pipe.run(produce, sequence)

