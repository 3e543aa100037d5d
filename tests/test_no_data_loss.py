# SPDX-License-Identifier: LGPL-2.1-or-later
"""Conversions that lost or destroyed data, each reproduced, each checked
by qemu-img and cryptsetup:

* keep-ciphertext qcow2 -> LUKS over zero and discarded clusters (plain
  zeros in the data file would decrypt to noise);
* re-encrypting to qcow2-luks with a raw data file over zero runs;
* SIGTERM/SIGHUP/SIGINT and kill -9 in the middle of a conversion: nothing
  under the final name, visible temporaries, the next run says so;
* a destination (or data file) that appears during the conversion is left
  alone, not replaced.
"""

import os
import signal
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt import storage

from conftest import cs_accepts, cs_format, qemu_img, qemu_io, qemu_secret, write_file

PW = b"no data loss"
SIZE = 8 << 20
AREA = 2 << 20


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pyqcrypt", *map(str, args)],
                          capture_output=True, stdin=subprocess.DEVNULL, **kw)


def _volume(workdir):
    """A cryptsetup LUKS1 volume filled with random data by qemu-img."""
    data = os.urandom(SIZE)
    vol = cs_format(workdir, "vol.img", PW, size=AREA + SIZE)
    src = write_file(os.path.join(workdir, "fill.raw"), data)
    qemu_img("convert", "-n", "-f", "raw", "--object", qemu_secret(workdir, PW, "fill"),
             "--target-image-opts", src, "driver=luks,file.filename=%s,key-secret=fill" % vol)
    os.unlink(src)
    return vol, data


def _compare(workdir, a, b):
    """qemu-img compare of two --image-opts strings using secret s."""
    proc = qemu_img("compare", "--object", qemu_secret(workdir, PW, "s"), "--image-opts", a, b,
                    check=False)
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


def _q(path):
    return "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path


def _l(path):
    return "driver=luks,file.filename=%s,key-secret=s" % path


# ---------------------------------------------------------------- zero clusters

@pytest.fixture
def zeroed_image(workdir):
    """A keep-ciphertext qcow2-luks image in which qemu-io zeroed and
    discarded clusters (the data file keeps plain zeros there)."""
    vol, _ = _volume(workdir)
    qcow = os.path.join(workdir, "z.qcow2")
    pyqcrypt.convert(vol, qcow, keep_ciphertext=True)
    qemu_io(_q(qcow), "write -z 0 1M", "discard 4M 1M", "write -z -u 6M 64k",
            objects=[qemu_secret(workdir, PW, "s")])
    return qcow


def test_zero_clusters_need_the_passphrase(workdir, zeroed_image):
    out = os.path.join(workdir, "z.luks")
    proc = cli("convert", "--keep-ciphertext", "-O", "luks", zeroed_image, out)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "3 range(s)" in err and "bytes 0-1048575" in err
    assert "encrypt.key-secret" in err and not os.path.exists(out)
    proc = cli("convert", "--keep-ciphertext", "-O", "luks", "--header",
               os.path.join(workdir, "z.hdr"), zeroed_image)
    assert proc.returncode == 1 and "single" in proc.stderr.decode()


@pytest.mark.parametrize("into_existing", [False, True], ids=["new", "existing"])
def test_zero_clusters_written_as_encrypted_zeros(workdir, zeroed_image, into_existing):
    out = os.path.join(workdir, "z.luks")
    args = ["convert", "--keep-ciphertext", "--verify", "-O", "luks", "--object",
            qemu_secret(workdir, PW, "s"), "--image-opts"]
    if into_existing:
        write_file(out, b"\xee" * (AREA + SIZE))
        args.append("-n")
    proc = cli(*args, _q(zeroed_image), out)
    assert proc.returncode == 0, proc.stderr.decode()
    code, text = _compare(workdir, _q(zeroed_image), _l(out))
    assert code == 0 and "identical" in text, text
    assert cs_accepts(out, PW, workdir)
    # Only the zero ranges were re-encrypted: the rest is the data file's bytes.
    with open(out, "rb") as fh, open(zeroed_image + ".data", "rb") as df:
        fh.seek(AREA)
        got, orig = fh.read(), df.read()
    assert got[2 << 20:4 << 20] == orig[2 << 20:4 << 20]
    assert got[:1 << 20] != orig[:1 << 20]


def test_reencrypting_into_raw_data_file_keeps_zeros(workdir):
    data = bytearray(os.urandom(SIZE))
    data[:1 << 20] = bytes(1 << 20)
    data[5 << 20:7 << 20] = bytes(2 << 20)
    src = write_file(os.path.join(workdir, "src.raw"), bytes(data))
    dst = os.path.join(workdir, "d.qcow2")
    proc = cli("convert", "--object", qemu_secret(workdir, PW, "s"), "-O", "qcow2", "-o",
               "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10,data_file=%s,"
               "data_file_raw=on" % os.path.join(workdir, "d.data"), "--verify", src, dst)
    assert proc.returncode == 0, proc.stderr.decode()
    code, text = _compare(workdir, "driver=raw,file.filename=" + src, _q(dst))
    assert code == 0 and "identical" in text, text


# ---------------------------------------------------------------- interrupted conversions

# The CLI in a child that sends itself a signal from inside its Nth data
# write (a write of at least 1 MiB) to a file whose name starts with STEM,
# through the storage fault hook: the signal always arrives in the middle
# of the copy, never before it starts nor after it ends.  For a signal the
# CLI handles, the writing thread then waits until the main thread's
# handler has run, so the conversion cannot finish first.  Exit 97 says the
# signal was never sent (fewer data writes than N), 99 that it was not handled.
_SIGNAL_AT_WRITE = r"""
import os, signal, sys, threading
import pyqcrypt.cli as cli
from pyqcrypt import storage
sig, nth, stem = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
handled = threading.Event()
terminate = cli._terminate
def on_term(signum, frame):
    handled.set()
    terminate(signum, frame)
def on_int(signum, frame):
    handled.set()
    raise KeyboardInterrupt
cli._terminate = on_term                # what main() installs for SIGTERM and SIGHUP
signal.signal(signal.SIGINT, on_int)
writes = []
def hook(kind, st, offset, length):
    if kind != "write" or length < (1 << 20) or not os.path.basename(st.path).startswith(stem):
        return
    writes.append(offset)
    if len(writes) == nth:
        os.kill(os.getpid(), sig)
        if not handled.wait(60):
            sys.stderr.write("signal test: the handler did not run\n")
            os._exit(99)
storage.install_faults(hook)
code = cli.main(sys.argv[4:])
if len(writes) < nth:
    sys.stderr.write("signal test: only %d data writes, no signal sent\n" % len(writes))
    sys.exit(97)
sys.exit(code)
"""


def _signal_at_write(cmd, sig, workdir, stem, nth=2):
    """Run a pyqcrypt command that receives *sig* during its *nth* data
    write to a file whose name starts with *stem*; returns (returncode, stderr)."""
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_AT_WRITE, str(int(sig)), str(nth), stem]
                          + [str(c) for c in cmd], capture_output=True, stdin=subprocess.DEVNULL,
                          cwd=workdir, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode not in (97, 99), err
    return proc.returncode, err


def _names(workdir, stem):
    return sorted(n for n in os.listdir(workdir) if n.startswith(stem))


def _reencrypt_cmd(workdir, dst):
    src = os.path.join(workdir, "src.raw")
    if not os.path.exists(src):
        with open(src, "wb") as fh:
            for _ in range(8):
                fh.write(os.urandom(4 << 20))
    return ["convert", "-p", "--object", qemu_secret(workdir, PW, "s"), "-O", "qcow2", "-o",
            "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", src, dst]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_during_convert_leaves_nothing(workdir, sig):
    dst = os.path.join(workdir, "out.qcow2")
    code, err = _signal_at_write(_reencrypt_cmd(workdir, dst), sig, workdir, "out.qcow2")
    assert code == 128 + sig, (code, err)
    assert "Traceback" not in err
    assert _names(workdir, "out.qcow2") == []


def test_kill_9_leaves_a_visible_temporary_that_the_next_run_names(workdir):
    dst = os.path.join(workdir, "out.qcow2")
    code, err = _signal_at_write(_reencrypt_cmd(workdir, dst), signal.SIGKILL, workdir,
                                 "out.qcow2")
    assert code == -signal.SIGKILL, (code, err)
    left = _names(workdir, "out.qcow2")
    assert not os.path.exists(dst)
    assert len(left) == 1 and left[0].startswith("out.qcow2.pyqcrypt-") and left[0].endswith(".tmp")
    proc = cli(*_reencrypt_cmd(workdir, dst)[:1] + _reencrypt_cmd(workdir, dst)[2:], cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()
    assert left[0] in proc.stderr.decode() and "interrupted" in proc.stderr.decode()
    code, text = _compare(workdir, "driver=raw,file.filename=" + os.path.join(workdir, "src.raw"),
                          _q(dst))
    assert code == 0, text


def test_killed_keep_ciphertext_copy_leaves_no_finished_looking_file(workdir, loop_devices):
    vol = cs_format(workdir, "big.img", PW, size=AREA + (96 << 20))
    dev = loop_devices(vol)                 # a device: copied in 4 MiB steps, with progress
    dst = os.path.join(workdir, "k.qcow2")
    code, err = _signal_at_write(["convert", "-p", "--keep-ciphertext", "-O", "qcow2", dev, dst],
                                 signal.SIGKILL, workdir, "k.qcow2")
    assert code == -signal.SIGKILL, (code, err)
    left = _names(workdir, "k.qcow2")
    assert not os.path.exists(dst) and not os.path.exists(dst + ".data")
    assert left and all(".pyqcrypt-" in n and n.endswith(".tmp") for n in left)


# ---------------------------------------------------------------- never replace

def _appear_on_first_write(path, content=b"someone else's file"):
    done = []

    def hook(kind, st, offset, length):
        if kind == "write" and not done:
            done.append(True)
            write_file(path, content)
    return hook


def test_destination_appearing_meanwhile_is_left_alone(workdir):
    src = write_file(os.path.join(workdir, "src.raw"), os.urandom(1 << 20))
    for fmt in ("raw", "qcow2"):
        dst = os.path.join(workdir, "dst." + fmt)
        with storage.injected_faults(_appear_on_first_write(dst)):
            with pytest.raises(pyqcrypt.Error, match="appeared"):
                pyqcrypt.convert(src, dst, dst_format=fmt)
        assert open(dst, "rb").read() == b"someone else's file"
        assert _names(workdir, "dst.%s." % fmt) == []


def test_data_file_appearing_meanwhile_is_left_alone(workdir):
    vol, _ = _volume(workdir)
    dst = os.path.join(workdir, "k.qcow2")
    with storage.injected_faults(_appear_on_first_write(dst + ".data")):
        with pytest.raises(pyqcrypt.Error, match="appeared"):
            pyqcrypt.convert(vol, dst, keep_ciphertext=True)
    assert open(dst + ".data", "rb").read() == b"someone else's file"
    assert not os.path.exists(dst) and _names(workdir, "k.qcow2.") == ["k.qcow2.data"]


def test_concurrent_creates_one_wins(workdir):
    """Two creates of one name: exactly one succeeds, the other says why."""
    dst = os.path.join(workdir, "same.qcow2")
    procs = [subprocess.Popen([sys.executable, "-m", "pyqcrypt", "create", "-f", "qcow2", dst,
                               "64M"], stderr=subprocess.PIPE) for _ in range(4)]
    results = [(p.wait(), p.stderr.read().decode()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1, 1, 1], results
    assert all("exists" in err or "appeared" in err for code, err in results if code)
    qemu_img("check", dst)
