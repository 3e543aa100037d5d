# SPDX-License-Identifier: LGPL-2.1-or-later
"""The pipelined copy core that every conversion path shares.

Reading, the cipher and writing overlap, in constant memory.  Each of a
few worker threads (one per core, at least two) takes the next chunk and
carries it all the way through:

* it reads the chunk into its own reused CHUNK buffer: the *produce*
  generator runs in one worker at a time, so the source (and its cached
  metadata) is read in order.  An encrypted source reads its ciphertext
  there and hands back its decryption as jobs (``Image.readinto(offset,
  buf, jobs)``) instead of doing it;
* it runs those jobs (the C sector loop and the decompressors release the
  GIL);
* in chunk order, one worker at a time, *sequence* finds all-zero grains
  (for a sparse destination; random data costs one memcmp that stops at
  the first byte of each grain) and maps the chunk into the destination
  (``plan_write``: a qcow2 image allocates its clusters and updates its
  cached metadata once per chunk, not per cluster), which returns the
  pieces to encrypt and where they go;
* it encrypts the pieces in place and writes them.

A chunk stays on one thread from read to write: no hand-offs between
threads, and its bytes stay in that core's cache.  Measured on 2 cores,
1 GiB decrypted from one tmpfs file into another, this took 0.38-0.42 s
where a reader thread, a cipher pool and a writer thread took 0.55-0.59 s
(``cp`` of the same file: 0.40 s).

Each worker holds at most the buffers one chunk needs (one, or two when
*produce* asks for two), whatever the size of the image.  Metadata never
reaches the disk before the data it names: before a destination writes
its metadata (``flush``, or a write the pipeline cannot plan),
``barrier()`` waits until every chunk sequenced before is written.  An
exception in any worker stops all of them (nothing is sequenced or
written after it) and is raised in the calling thread.
"""

import ctypes
import os
import threading

CHUNK = 8 << 20             # bytes a worker carries from read to write at a time
MAX_WORKERS = 8             # with two buffers each (--verify): 128 MiB at most


def cores():
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


ALIGN = 4096                # buffers fit O_DIRECT on block devices (see pyqcrypt.storage)
_ZEROS: dict = {}                 # size -> that many zero bytes


def zeros(n):
    """*n* zero bytes, made once per size."""
    z = _ZEROS.get(n)
    if z is None:
        if len(_ZEROS) > 16:
            _ZEROS.clear()
        z = _ZEROS[n] = bytes(n)
    return z


class Buffer:
    """A reused chunk buffer: ``view`` is a writable memoryview of *size*
    bytes starting on an ALIGN boundary."""

    __slots__ = ("raw", "off", "view")

    def __init__(self, size):
        self.raw = bytearray(size + ALIGN)
        self.off = -ctypes.addressof(ctypes.c_char.from_buffer(self.raw)) % ALIGN
        self.view = memoryview(self.raw)[self.off:self.off + size]

    def is_zero(self, a, b):
        """True when view[a:b] is all zeros: one memcmp, which random data
        ends at its first byte."""
        return self.raw.startswith(zeros(b - a), self.off + a, self.off + b)


class _Stopped(Exception):
    """Another worker failed: this one ends quietly."""


class Job:
    """Encrypt or decrypt *view* (whole sectors, in place) from *sector*."""

    __slots__ = ("cipher", "encrypt", "view", "sector")

    def __init__(self, cipher, encrypt, view, sector):
        self.cipher, self.encrypt, self.view, self.sector = cipher, encrypt, view, sector

    def run(self):
        if self.encrypt:
            self.cipher.encrypt(self.view, self.sector)
        else:
            self.cipher.decrypt(self.view, self.sector)


class Piece:
    """Bytes for ``storage.pwrite(offset, view)``, encrypted first by
    *cipher* from *sector* when a cipher is given."""

    __slots__ = ("storage", "offset", "view", "cipher", "sector")

    def __init__(self, storage, offset, view, cipher=None, sector=0):
        self.storage, self.offset, self.view = storage, offset, view
        self.cipher, self.sector = cipher, sector


def write_pieces(pieces, check=None):
    """Encrypt (when a Piece has a cipher) and write each of *pieces*, in
    this thread; *check()* runs before each (the pipeline's stop test)."""
    for p in pieces:
        if check is not None:
            check()
        if p.cipher is not None:
            p.cipher.encrypt(p.view, p.sector)
        p.storage.pwrite(p.offset, p.view)


class Pipeline:
    """Worker threads carrying chunks from read to write (see the module
    docstring).  Use as a context manager:

        with Pipeline() as p:
            p.run(produce, sequence)

    ``produce(get_buffer)`` is a generator, advanced by one worker at a
    time: it fills buffers from ``get_buffer()`` (the calling worker's
    own) and yields ``(item, buffer, jobs)``: the buffer (None when the
    item holds none) and the list of jobs (``run()``) that must finish
    before its data is usable.  ``sequence(item, buffer)`` runs once those
    jobs are done, for one item at a time, in the order *produce* yielded
    them: it returns the Pieces to write (the worker encrypts and writes
    them), or None when it wrote what it had to itself (after
    ``barrier()``)."""

    def __init__(self, workers=None, chunk=CHUNK):
        self.chunk = chunk
        # One per core (more only contend: 3 on 2 cores was 8% slower),
        # at least two so reading and writing overlap even on one core,
        # and at most MAX_WORKERS, which bounds the memory.
        self.workers = workers or min(MAX_WORKERS, max(2, cores()))
        self._produce_lock = threading.Lock()
        self._local = threading.local()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error = None
        self._tickets = 0               # items produced so far (under _produce_lock)
        self._turn = 0                  # the ticket whose turn it is to be sequenced
        self._finished = {}             # ticket -> item, written but not yet contiguous
        self._low = 0                   # every ticket below this is written
        self._threads = []
        self._running = 0               # workers not yet ended
        self.done_item = None           # the item of ticket _low - 1

    # ---- failure ----------------------------------------------------------------------
    def _fail(self, exc):
        with self._cond:
            if self._error is None:
                self._error = exc
            self._stop.set()
            self._cond.notify_all()

    def _check(self):
        if self._stop.is_set():
            raise _Stopped()

    # ---- buffers ------------------------------------------------------------------------
    def get_buffer(self):
        """The next of the calling worker's own buffers for this item (made
        when first needed)."""
        local = self._local
        if local.used == len(local.own):
            local.own.append(Buffer(self.chunk))
        local.used += 1
        return local.own[local.used - 1]

    # ---- the worker -------------------------------------------------------------------
    def _next(self, gen):
        """(ticket, item, buffer, jobs) of the next item, or None at the end."""
        with self._produce_lock:
            self._check()
            self._local.used = 0
            try:
                item, buf, jobs = next(gen)
            except StopIteration:
                return None
            ticket = self._tickets
            self._tickets += 1
            return ticket, item, buf, jobs

    def _worker(self, gen, sequence):
        self._local.own = []
        try:
            while True:
                got = self._next(gen)
                if got is None:
                    return
                ticket, item, buf, jobs = got
                for job in jobs or ():
                    self._check()
                    job.run()
                with self._cond:
                    while self._turn != ticket and not self._stop.is_set():
                        self._cond.wait()
                self._check()
                self._local.ticket = ticket
                pieces = sequence(item, buf)
                with self._cond:
                    self._turn += 1
                    self._cond.notify_all()
                write_pieces(pieces or (), self._check)
                with self._cond:
                    self._finished[ticket] = item
                    while self._low in self._finished:
                        self.done_item = self._finished.pop(self._low)
                        self._low += 1
                    self._cond.notify_all()
        except _Stopped:
            pass
        except BaseException as exc:
            self._fail(exc)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def barrier(self):
        """Wait until every item sequenced before this one (called from
        *sequence*), or every item (called from elsewhere), is written."""
        upto = getattr(self._local, "ticket", None)
        with self._cond:
            while not self._stop.is_set() and \
                    (self._low < upto if upto is not None else self._low < self._tickets):
                self._cond.wait()
        self._raise()

    def _raise(self):
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise _Stopped()

    def run(self, produce, sequence, progress=None):
        """Run the workers (see the class docstring) until *produce* ends
        and every piece is written; *progress(item)* is called in this
        thread with the last item written (all before it are too), now and
        then."""
        gen = produce(self.get_buffer)
        self._running = self.workers
        for _ in range(self.workers):
            self._start(self._worker, gen, sequence)
        reported = None
        while True:
            with self._cond:
                if not self._running or self._stop.is_set():
                    break
                self._cond.wait()
                done = self.done_item
            if progress is not None and done is not reported:
                reported = done
                progress(done)
        self._join()
        self._raise()
        if progress is not None and self.done_item is not reported and self.done_item is not None:
            progress(self.done_item)

    def _start(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _join(self):
        for t in self._threads:
            t.join()
        self._threads = []

    def close(self):
        """Stop every worker and wait for them."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
