# SPDX-License-Identifier: LGPL-2.1-or-later
"""The pipelined copy core that every conversion path shares.

Reading, the cipher and writing overlap, in constant memory:

* a reader thread fills reused CHUNK buffers from the source.  An
  encrypted source reads its ciphertext there and hands back its
  decryption as jobs (``Image.readinto(offset, buf, jobs)``) instead of
  doing it;
* a pool of cipher threads (one per core) runs the sector jobs: the
  source's decryption and the destination's encryption, in PIECE-sized
  parts, in place, in the C sector loop (which releases the GIL);
* the calling thread takes the chunks in order: it finds all-zero grains
  (for a sparse destination; random data costs one memcmp that stops at
  the first byte of each grain) and maps each chunk into the destination
  (``plan_write``: a qcow2 image allocates its clusters and updates its
  cached metadata once per chunk, not per cluster), which returns the
  pieces to encrypt and where they go;
* a writer thread writes the pieces, in order, and gives the buffers back.

At most *buffers* chunk buffers exist, whatever the size of the image.
Metadata never reaches the disk before the data it names: before a
destination writes its metadata (``flush``, or a write the pipeline
cannot plan), ``barrier()`` waits until every queued piece is written.
An exception in any stage stops all of them (nothing is queued or written
after it) and is raised in the calling thread.
"""

import ctypes
import os
import queue
import threading

# Measured on a loaded 2-core machine, 1 GiB raw -> qcow2-luks on tmpfs:
# fewer, larger chunks win (each chunk costs a handful of thread wake-ups,
# which a busy scheduler makes expensive); 1 MiB chunks took twice as long.
CHUNK = 8 << 20
PIECE = 2 << 20             # cipher jobs are cut to this size, so the threads share a chunk
BUFFERS = 6                 # 48 MiB of buffers in all


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
    """Another stage failed: this one ends quietly."""


_END = object()


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

    def parts(self, size=PIECE):
        """This job cut into jobs of at most *size* bytes."""
        n = len(self.view)
        if n <= size:
            return [self]
        step = size - size % self.cipher.sector_size
        per = step // self.cipher.sector_size
        return [Job(self.cipher, self.encrypt, self.view[a:a + step], self.sector + i * per)
                for i, a in enumerate(range(0, n, step))]


class Piece:
    """Bytes for ``storage.pwrite(offset, view)``, encrypted first by
    *cipher* from *sector* when a cipher is given."""

    __slots__ = ("storage", "offset", "view", "cipher", "sector")

    def __init__(self, storage, offset, view, cipher=None, sector=0):
        self.storage, self.offset, self.view = storage, offset, view
        self.cipher, self.sector = cipher, sector


class Pipeline:
    """Reader thread, cipher pool and writer thread around the calling
    thread (see the module docstring).  Use as a context manager:

        with Pipeline() as p:
            p.run(produce, sequence)

    ``produce(get_buffer)`` is a generator run in the reader thread: it
    fills buffers from ``get_buffer()`` and yields ``(item, buffer, jobs)``:
    the buffer (None when the item holds none) and the list of sector Jobs
    that must finish before its data is usable.  ``sequence(item, buffer)``
    runs in the calling thread, in order, once those jobs are done: it
    returns the Pieces to write (their cipher jobs run in the pool, then
    the writer writes them in order and gives the buffer back), or None
    when it wrote what it had to itself (after ``barrier()``)."""

    def __init__(self, buffers=BUFFERS, workers=None, chunk=CHUNK):
        self.chunk = chunk
        self.workers = workers or cores()
        self._free = queue.Queue()
        for _ in range(buffers):
            self._free.put(Buffer(chunk))
        self._to_seq = queue.Queue()
        self._to_writer = queue.Queue()
        self._stop = threading.Event()
        self._error = None
        self._cond = threading.Condition()
        self._queued = self._written = 0
        self._jobs = queue.Queue()
        self._threads = []
        self.done_item = None           # the last item the writer finished

    # ---- the cipher pool ------------------------------------------------------------
    def _worker(self):
        while True:
            task = self._jobs.get()
            if task is None:
                return
            job, done = task
            try:
                if not self._stop.is_set():
                    job.run()
            except BaseException as exc:
                self._fail(exc)
            finally:
                done.release_one()

    def _submit(self, jobs):
        """Start *jobs* in the pool; returns a _Countdown to wait on."""
        parts = []
        for job in jobs:
            parts.extend(job.parts())
        done = _Countdown(len(parts))
        for job in parts:
            self._jobs.put((job, done))
        return done

    # ---- failure ----------------------------------------------------------------------
    def _fail(self, exc):
        with self._cond:
            if self._error is None:
                self._error = exc
            self._stop.set()
            self._cond.notify_all()
        self._free.put(None)            # wake a reader waiting for a buffer
        self._to_seq.put(_END)
        self._to_writer.put(_END)

    def _check(self):
        if self._stop.is_set():
            raise _Stopped()

    # ---- buffers ------------------------------------------------------------------------
    def get_buffer(self):
        buf = self._free.get()
        if buf is None or self._stop.is_set():
            self._free.put(None)
            raise _Stopped()
        return buf

    def release(self, buf):
        if buf is not None:
            self._free.put(buf)

    # ---- stages ---------------------------------------------------------------------------
    def _reader(self, produce):
        try:
            for item, buf, jobs in produce(self.get_buffer):
                self._check()
                self._to_seq.put((item, buf, self._submit(jobs) if jobs else None))
            self._to_seq.put(_END)
        except _Stopped:
            pass
        except BaseException as exc:
            self._fail(exc)

    def _writer(self):
        try:
            while True:
                task = self._to_writer.get()
                if task is _END:
                    return
                item, buf, pieces, done = task
                if done is not None:
                    done.wait()
                self._check()
                for p in pieces:
                    p.storage.pwrite(p.offset, p.view)
                self.release(buf)
                with self._cond:
                    self._written += 1
                    self.done_item = item
                    self._cond.notify_all()
        except _Stopped:
            pass
        except BaseException as exc:
            self._fail(exc)

    def barrier(self):
        """Wait until every piece queued so far is written."""
        with self._cond:
            while self._written < self._queued and not self._stop.is_set():
                self._cond.wait()
        self._raise()

    def _raise(self):
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise _Stopped()

    def run(self, produce, sequence, progress=None):
        """Run the stages (see the class docstring) until *produce* ends
        and every piece is written; *progress(item)* is called in this
        thread with the last item written, now and then."""
        for _ in range(self.workers):
            self._start(self._worker)
        self._start(self._reader, produce)
        self._start(self._writer)
        reported = None
        while True:
            task = self._to_seq.get()
            if task is _END:
                break
            item, buf, done = task
            if done is not None:
                done.wait()
            self._raise()
            pieces = sequence(item, buf)
            if pieces is None:                  # written by *sequence* itself (or nothing)
                pieces = []
            jobs = [Job(p.cipher, True, p.view, p.sector) for p in pieces if p.cipher is not None]
            with self._cond:
                self._queued += 1
            self._to_writer.put((item, buf, pieces, self._submit(jobs) if jobs else None))
            if progress is not None and self.done_item is not reported:
                reported = self.done_item
                if reported is not None:
                    progress(reported)
        self._raise()
        self.barrier()
        if progress is not None and self.done_item is not reported and self.done_item is not None:
            progress(self.done_item)

    def _start(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self):
        """Stop every stage and wait for the threads."""
        self._stop.set()
        self._free.put(None)
        self._to_seq.put(_END)
        self._to_writer.put(_END)
        for _ in range(self.workers):
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Countdown:
    """Wait until *n* jobs have finished."""

    __slots__ = ("_left", "_cond")

    def __init__(self, n):
        self._left = n
        self._cond = threading.Condition(threading.Lock())

    def release_one(self):
        with self._cond:
            self._left -= 1
            if self._left <= 0:
                self._cond.notify_all()

    def wait(self):
        with self._cond:
            while self._left > 0:
                self._cond.wait()
