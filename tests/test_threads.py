# SPDX-License-Identifier: LGPL-2.1-or-later
"""One image object shared by eight threads (issue 21, "threads corrupt
data silently"): each thread writes, zeroes and flushes only its own
ranges, in random order; afterwards the image must hold exactly what a
byte model says, read back by pyqcrypt after reopening and, for the
formats QEMU reads, by ``qemu-img compare``.  For LUKS volumes the ranges
are 1000-byte stripes that share encryption sectors, so every thread's
partial-sector read-modify-write meets the others'.

Also: a read far past the end is refused before anything is allocated.
"""

import os
import random
import threading

import pytest

import pyqcrypt
from conftest import qemu_img, qemu_secret, write_file

THREADS = 8
PW = b"threads passphrase"
SIZE = 8 << 20


def _make(kind, workdir):
    path = os.path.join(workdir, "t." + kind)
    if kind == "qcow2":
        pyqcrypt.create(path, SIZE, format="qcow2")
    elif kind == "qcow2-luks":
        pyqcrypt.create(path, SIZE, format="qcow2", passphrase=PW, iterations=1000)
    elif kind == "luks":
        pyqcrypt.create(path, SIZE, format="luks", passphrase=PW, iterations=1000)
    elif kind == "luks2-4096":
        pyqcrypt.create(path, SIZE, format="luks2", passphrase=PW, sector_size=4096,
                        pbkdf=pyqcrypt.Pbkdf("pbkdf2", iterations=1000))
    else:
        write_file(path, bytes(SIZE))
    return path


def _ranges(kind, t):
    """The byte ranges thread *t* owns: whole 64 KiB clusters for qcow2 and
    raw, interleaved 1000-byte stripes (sharing sectors) for LUKS."""
    if kind.startswith("luks"):
        return [(o, o + 1000) for o in range(t * 1000, SIZE - 1000, THREADS * 1000)]
    cs = 64 << 10
    return [(c * cs, (c + 1) * cs) for c in range(t, SIZE // cs, THREADS)]


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["qcow2", "qcow2-luks", "luks", "luks2-4096", "raw"])
def test_eight_threads_one_image(workdir, kind):
    path = _make(kind, workdir)
    passphrase = None if kind in ("qcow2", "raw") else PW
    errors = []
    with pyqcrypt.open(path, passphrase=passphrase, writable=True,
                       format="raw" if kind == "raw" else None) as img:
        model = bytearray(img.read(0, SIZE))    # a new LUKS payload reads as noise
        def worker(t):
            rng = random.Random(t)
            mine = _ranges(kind, t)
            try:
                for n in range(160):
                    a, b = rng.choice(mine)
                    start = rng.randrange(a, b)
                    end = rng.randrange(start + 1, b + 1)
                    if n % 7 == 3:
                        img.write_zeroes(start, end - start)
                        model[start:end] = bytes(end - start)
                    else:
                        data = rng.randbytes(end - start)
                        img.write(start, data)
                        model[start:end] = data
                    if n % 25 == 0:
                        img.flush()
            except BaseException as exc:         # reported below, in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        img.flush()
    assert not errors, errors
    with pyqcrypt.open(path, passphrase=passphrase,
                       format="raw" if kind == "raw" else None) as img:
        got = img.read(0, SIZE)
    bad = sum(1 for i in range(0, SIZE, 512) if got[i:i + 512] != model[i:i + 512])
    assert bad == 0, "%d of %d sectors differ from the model" % (bad, SIZE // 512)
    if kind in ("qcow2", "qcow2-luks", "luks"):
        want = write_file(os.path.join(workdir, "model.raw"), bytes(model))
        obj = qemu_secret(workdir, PW, "s")
        opts = {"qcow2": "driver=qcow2,file.filename=%s" % path,
                "qcow2-luks": "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path,
                "luks": "driver=luks,file.filename=%s,key-secret=s" % path}[kind]
        qemu_img("compare", "--object", obj, "--image-opts", opts,
                 "driver=raw,file.filename=%s" % want)
        if kind.startswith("qcow2"):
            qemu_img("check", "--object", obj, "--image-opts", opts)


@pytest.mark.parametrize("kind", ["qcow2", "luks", "raw"])
def test_huge_read_is_refused_before_allocating(workdir, kind):
    import resource
    path = _make(kind, workdir)
    with pyqcrypt.open(path, passphrase=None if kind != "luks" else PW,
                       format="raw" if kind == "raw" else None) as img:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for length in (4 << 30, 1 << 62):
            with pytest.raises(pyqcrypt.Error, match="outside"):
                img.read(0, length)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 << 10   # KiB


@pytest.mark.parametrize("kind", ["luks", "luks2-4096", "qcow2-luks"])
def test_unaligned_readinto_fills_and_returns_the_callers_buffer(workdir, kind):
    """LuksPayload.readinto's unaligned path used to return its scratch
    buffer instead of the caller's."""
    path = _make(kind, workdir)
    data = os.urandom(9000)
    with pyqcrypt.open(path, passphrase=PW, writable=True) as img:
        img.write(777, data)
        buf = bytearray(9000)
        assert img.readinto(777, buf) is buf
        assert bytes(buf) == data
