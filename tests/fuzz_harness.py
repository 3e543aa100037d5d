# SPDX-License-Identifier: LGPL-2.1-or-later
"""Mutation fuzzer for everything pyqcrypt parses.

Seeds are real images made by pyqcrypt, cryptsetup and qemu-img (LUKS1,
LUKS2, qcow2 plain/LUKS/raw-data-file).  Each input is a seed with random
mutations (bit flips, random bytes, interesting integers at aligned
offsets in headers and metadata tables, truncation, extension), fed to
open + read, info, dump, check and convert, plus random ``--object``
secret strings.  Every input must end in success or a ``pyqcrypt.Error``:
any other exception, a run past the time bound (SIGALRM) or memory past
the address-space bound (RLIMIT_AS) is a failure, and the input is saved
to the corpus directory so it becomes a regression test
(tests/fuzz_corpus/, replayed by test_fuzz.py).

Run long:  python tests/fuzz_harness.py --seconds 600 [--seed N]
CI runs it briefly through test_fuzz.py, with a seed taken from the test's
name (printed when it fails).  Every random choice, and the random bytes in
the seed images, come from the one seeded generator, so a seed replays the
same mutations (only the salts and keys pyqcrypt, cryptsetup and qemu-img
draw for themselves differ from run to run).
"""

import argparse
import contextlib
import io
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)                # conftest's scratch and qemu-img helpers

import pyqcrypt  # noqa: E402
from conftest import qemu_img_retrying, scratch_dir  # noqa: E402  (tests/ is on sys.path)
from pyqcrypt.info_report import image_info  # noqa: E402
from pyqcrypt.luks import dump_text  # noqa: E402
from pyqcrypt.qcow2.check import check_qcow2  # noqa: E402
from pyqcrypt.secrets import SecretStore  # noqa: E402

PASS = b"fuzz pass"
TIME_LIMIT = 10                         # seconds per input (a hang past this fails)
MEMORY_LIMIT = 3 << 30                  # address space for the whole fuzzing process
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x200, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 0x0537BE77, 0x00AC71F3, 0xDEAD]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def make_seeds(d, rng=None):
    """Seed images; peers' images where the tools exist."""
    rng = rng or random.Random()
    seeds = {}

    def have(tool):
        return shutil.which(tool) or os.path.exists("/usr/sbin/" + tool)

    p = os.path.join(d, "ours.luks")
    pyqcrypt.create(p, 64 << 10, "luks", passphrase=PASS, spec="aes-xts-plain64", key_bits=256,
                    iterations=1000)
    seeds["luks1-ours"] = p
    p = os.path.join(d, "plain.qcow2")
    pyqcrypt.create(p, 4 << 20, "qcow2", cluster_size=4096)
    with pyqcrypt.open(p, writable=True) as img:
        img.write(0, rng.randbytes(20000))
        img.write(3 << 20, rng.randbytes(9000))
    seeds["qcow2-plain"] = p
    p = os.path.join(d, "luks.qcow2")
    pyqcrypt.create(p, 2 << 20, "qcow2", passphrase=PASS, cluster_size=65536,
                    spec=pyqcrypt.crypto.CipherSpec.parse("aes-xts-plain64", 256), iterations=1000)
    with pyqcrypt.open(p, passphrase=PASS, writable=True) as img:
        img.write(4096, rng.randbytes(70000))
    seeds["qcow2-luks"] = p
    p = os.path.join(d, "raw.qcow2")
    pyqcrypt.create(p, 1 << 20, "qcow2", cluster_size=4096, data_file=os.path.join(d, "raw.data"),
                    data_file_raw=True)
    seeds["qcow2-datafile"] = p
    p = os.path.join(d, "extl2.qcow2")
    pyqcrypt.create(p, 2 << 20, "qcow2", cluster_size=16384, extended_l2=True)
    with pyqcrypt.open(p, writable=True) as img:
        img.write(1000, rng.randbytes(3000))
        img.write(40000, rng.randbytes(30000))
        img.write_zeroes(50000, 9000)
    seeds["qcow2-extl2"] = p
    if have("cryptsetup"):
        key = os.path.join(d, "key")
        with open(key, "wb") as fh:
            fh.write(PASS)
        for name, typ in (("luks1-cryptsetup", "luks1"), ("luks2-cryptsetup", "luks2")):
            p = os.path.join(d, name + ".img")
            with open(p, "wb") as fh:
                fh.truncate(20 << 20)
            extra = ["--pbkdf", "pbkdf2"] if typ == "luks2" else []
            subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", typ, "--key-size", "256",
                            "--pbkdf-force-iterations", "1000", "--key-file", key] + extra + [p],
                           check=True, capture_output=True)
            seeds[name] = p
    if have("qemu-img"):
        p = os.path.join(d, "qemu.qcow2")
        r = qemu_img_retrying(["create", "-q", "-f", "qcow2", "--object",
                               "secret,id=s,data=%s" % PASS.decode(), "-o",
                               "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10,"
                               "cluster_size=4096", p, "1M"])
        if r.returncode == 0:
            seeds["qcow2-luks-qemu"] = p
        p = os.path.join(d, "snap.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", p,
                        "1M"], check=True, capture_output=True)
        with pyqcrypt.open(p, writable=True) as img:
            img.write(0, rng.randbytes(9000))
        r = subprocess.run(["qemu-img", "snapshot", "-c", "s1", p], capture_output=True)
        if r.returncode == 0:
            with pyqcrypt.open(p, writable=True) as img:
                img.write(4000, rng.randbytes(100))
            seeds["qcow2-snapshot-qemu"] = p
    return seeds


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        hot = min(len(data), 8192)             # headers, keyslots, tables live here
        limit = hot if rng.random() < 0.8 else len(data)
        if not limit:
            break
        if r < 0.3:
            i = rng.randrange(limit)
            data[i] ^= 1 << rng.randrange(8)
        elif r < 0.55:
            i = rng.randrange(limit)
            data[i] = rng.randrange(256)
        elif r < 0.85:
            width = rng.choice((2, 4, 8))
            i = rng.randrange(0, max(1, limit - width)) // width * width
            value = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            data[i:i + width] = value.to_bytes(width, "big")
        elif r < 0.93:
            data = data[:rng.randrange(len(data) + 1)]
        else:
            data += rng.randbytes(rng.randrange(1, 4096))
    return bytes(data)


def run_targets(path, workdir, kind):
    """Every operation on one input; returns normally or raises."""
    try:
        with pyqcrypt.open(path, passphrase=PASS) as img:
            size = img.size
            for off in (0, size // 2, max(0, size - 4096)):
                n = min(4096, size - off)
                if n > 0:
                    img.read(off, n)
    except pyqcrypt.Error:
        pass
    for op in (image_info, check_qcow2 if "qcow2" in kind else None):
        if op is None:
            continue
        try:
            op(path)
        except pyqcrypt.Error:
            pass
    if "luks" in kind and "qcow2" not in kind:
        try:
            with pyqcrypt.luks.open_area(path) as area:
                dump_text(area.header, path)
        except pyqcrypt.Error:
            pass
    out = os.path.join(workdir, "out")
    for kw in (dict(keep_ciphertext=True, dst_format="qcow2" if "qcow2" not in kind else "luks",
                    src_passphrase=PASS if "luks2" in kind else None),
               dict(dst_format="raw", src_passphrase=PASS)):
        for f in os.listdir(workdir):
            if f.startswith("out"):
                os.unlink(os.path.join(workdir, f))
        try:
            info = image_info(path)
            if info["virtual-size"] > (16 << 20):
                continue                        # a legitimately huge image, not a bug
            pyqcrypt.convert(path, out, **kw)
        except pyqcrypt.Error:
            pass


def fuzz_secret(rng):
    alphabet = "secret_keyring,id=data=file=format=base64raw,keyid=iv=serial=,,x/0123AZ=+"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
    store = SecretStore(warn=lambda m: None)
    try:
        store.add_object(text)
        for sid in ("x", "id", ""):
            try:
                store.get(sid)
            except pyqcrypt.Error:
                pass
    except pyqcrypt.Error:
        pass
    finally:
        store.close()


def fuzz(seconds=30, iterations=None, seed=None, corpus=None, verbose=False):
    """Fuzz until the time or iteration budget is spent; returns stats."""
    seed = random.randrange(1 << 32) if seed is None else seed
    rng = random.Random(seed)
    os.environ.setdefault("PYQCRYPT_MAX_ITERATIONS", str(200000))
    signal.signal(signal.SIGALRM, _alarm)
    d = scratch_dir("pyqcrypt-fuzz-")
    stats = {"seed": seed, "inputs": 0, "failures": [], "seconds": 0.0}
    start = time.time()
    try:
        seeds = make_seeds(d, rng)
        blobs = {k: open(v, "rb").read() for k, v in seeds.items()}
        work = os.path.join(d, "work")
        os.mkdir(work)
        while True:
            if iterations is not None and stats["inputs"] >= iterations:
                break
            if time.time() - start > seconds:
                break
            kind = rng.choice(sorted(blobs))
            data = mutate(rng, blobs[kind])
            path = os.path.join(work, "input")
            with open(path, "wb") as fh:
                fh.write(data)
            if kind == "qcow2-datafile":
                shutil.copy(os.path.join(d, "raw.data"), os.path.join(work, "raw.data"))
            signal.alarm(TIME_LIMIT)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    run_targets(path, work, kind)
                    fuzz_secret(rng)
            except Hang:
                stats["failures"].append((kind, "hang over %d s" % TIME_LIMIT, data))
            except Exception:                                  # noqa: BLE001 - a finding
                stats["failures"].append((kind, traceback.format_exc(), data))
            finally:
                signal.alarm(0)
            stats["inputs"] += 1
            if stats["failures"] and corpus:
                _save(corpus, stats["failures"][-1])
            if verbose and stats["inputs"] % 200 == 0:
                print("%d inputs, %d failures, %.0f s" % (stats["inputs"], len(stats["failures"]),
                                                          time.time() - start), flush=True)
    finally:
        stats["seconds"] = time.time() - start
        shutil.rmtree(d, ignore_errors=True)
    return stats


def _save(corpus, failure):
    kind, why, data = failure
    os.makedirs(corpus, exist_ok=True)
    import hashlib
    name = "%s-%s.bin" % (kind, hashlib.sha256(data).hexdigest()[:12])
    with open(os.path.join(corpus, name), "wb") as fh:
        fh.write(data)
    with open(os.path.join(corpus, name + ".txt"), "w") as fh:
        fh.write(why)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--corpus", default=os.path.join(HERE, "fuzz_corpus"))
    args = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    stats = fuzz(args.seconds, args.iterations, args.seed, args.corpus, verbose=True)
    print("seed %d: %d inputs in %.0f s, %d failures (crashes or hangs), peak RSS %.0f MiB"
          % (stats["seed"], stats["inputs"], stats["seconds"], len(stats["failures"]),
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    for kind, why, _ in stats["failures"][:5]:
        print("---", kind, "\n", why)
    sys.exit(1 if stats["failures"] else 0)


if __name__ == "__main__":
    main()
