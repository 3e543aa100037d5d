# SPDX-License-Identifier: LGPL-2.1-or-later
"""amend as qemu-img does it (issue 21): the scenarios of QEMU's iotests
293-296 run through ``qemu-img amend`` and ``pyqcrypt amend`` on identical
copies of one image.  Both must succeed or both fail, leave the same
keyslots active, and afterwards the same secrets must open the image
(judged by cryptsetup for raw volumes).  The cases that lost the disk
before are here: a keyslot erased although the old secret did not open it,
and erasing with no working secret at all."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import cs_accepts, parse_luks1, qemu_img, qemu_img_retrying, tool, write_file

pytestmark = pytest.mark.interop

SECRETS = {"s0": b"amend zero", "s1": b"amend one", "s2": b"amend two"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A raw LUKS1 volume and a qcow2-luks image, each with s0 in slot 0
    and s1 in slot 1, both made by qemu-img."""
    d = str(tmp_path_factory.mktemp("amend"))
    objs = _objects(d)
    vol, img = os.path.join(d, "base.luks"), os.path.join(d, "base.qcow2")
    qemu_img("create", "-f", "luks", *objs, "-o", "key-secret=s0,iter-time=10", vol, "1M")
    qemu_img("create", "-f", "qcow2", *objs, "-o",
             "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", img, "1M")
    qemu_img("amend", *objs, "--image-opts", "driver=luks,file.filename=%s,key-secret=s0" % vol,
             "-o", "state=active,new-secret=s1,keyslot=1,iter-time=10")
    qemu_img("amend", *objs, "--image-opts",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=s0" % img,
             "-o", "encrypt.state=active,encrypt.new-secret=s1,encrypt.keyslot=1,"
             "encrypt.iter-time=10")
    return d, vol, img


def _objects(d):
    objs = []
    for sid, pw in SECRETS.items():
        objs += ["--object", "secret,id=%s,file=%s" % (sid, write_file(os.path.join(d, sid), pw))]
    return objs


def _fde_slots(path):
    """Active keyslots of a qcow2-luks image's FDE region (read with the
    test-side LUKS1 parser, not pyqcrypt's)."""
    import struct
    with open(path, "rb") as fh:
        data = fh.read(1 << 20)
    version = struct.unpack(">I", data[4:8])[0]
    off = struct.unpack(">I", data[100:104])[0] if version >= 3 else 72     # header_length
    while off + 8 <= len(data):
        kind, length = struct.unpack(">II", data[off:off + 8])
        if kind == 0:
            break
        if kind == 0x0537be77:
            fde_off = struct.unpack(">Q", data[off + 8:off + 16])[0]
            return _slots(data[fde_off:fde_off + 592])
        off += 8 + (length + 7) // 8 * 8
    raise AssertionError("no FDE extension")


def _slots(header):
    return [n for n, s in enumerate(parse_luks1(header)["slots"]) if s["active"]]


# (format, image-opts key-secret or None, -o options, --force)
SCENARIOS = [
    ("luks", "s0", "state=inactive,keyslot=0,old-secret=s1", False),     # s1 is not slot 0's
    ("luks", "s0", "state=inactive,keyslot=0,old-secret=s1", True),
    ("luks", None, "state=inactive,keyslot=0", True),                   # no working key at all
    ("luks", "s2", "state=inactive,keyslot=0", True),                   # a key that opens nothing
    ("luks", "s0", "state=inactive,keyslot=0", True),
    ("luks", "s0", "state=inactive,keyslot=0,old-secret=s0", False),
    ("luks", "s1", "state=inactive,old-secret=s0", False),
    ("luks", "s0", "state=inactive,old-secret=s2", False),               # matches no keyslot
    ("luks", "s0", "state=inactive,keyslot=5", False),                  # already inactive
    ("luks", "s0", "state=inactive,keyslot=5", True),
    ("luks", "s0", "state=active,new-secret=s2,old-secret=s0", False),
    ("luks", "s0", "state=inactive,keyslot=1,new-secret=s2", False),
    ("luks", "s0", "state=inactive,keyslot=1,iter-time=10", False),
    ("luks", "s0", "state=active,new-secret=s2,iter-time=0", False),
    ("luks", "s0", "state=active,new-secret=s2,keyslot=1", False),       # occupied
    ("luks", "s0", "state=active,new-secret=s2,keyslot=1", True),
    ("luks", "s0", "encrypt.state=active,encrypt.new-secret=s2", False),
    ("qcow2", "s0", "encrypt.state=inactive,encrypt.keyslot=0,encrypt.old-secret=s1", False),
    ("qcow2", None, "encrypt.state=inactive,encrypt.keyslot=0", True),
    ("qcow2", "s1", "encrypt.state=inactive,encrypt.old-secret=s0", False),
    ("qcow2", "s0", "state=inactive,keyslot=1", False),                  # luks spelling on qcow2
    ("qcow2", "s0", "encrypt.state=active,encrypt.new-secret=s2,encrypt.iter-time=10", False),
    # json: filenames, as iotest 296 passes them (no --image-opts)
    ("luks", "json:s0", "state=active,new-secret=s2,iter-time=10", False),
    ("luks", "json:s2", "state=active,new-secret=s2,iter-time=10", False),   # s2 opens nothing
    ("luks", "json:s0", "state=inactive,keyslot=1", False),
    ("qcow2", "json:s0", "encrypt.state=active,encrypt.new-secret=s2,encrypt.iter-time=10", False),
    ("qcow2", "json-nbd:s0", "encrypt.state=active,encrypt.new-secret=s2", False),
]


def _run_both(d, fmt, path, key, opts, force):
    objs = _objects(d)
    if key is None:
        target = [path]
    elif key.startswith("json"):
        kind, _, sid = key.partition(":")
        tree = {"driver": fmt, "file": {"driver": "nbd" if kind == "json-nbd" else "file",
                                        "filename": path}}
        if fmt == "luks":
            tree["key-secret"] = sid
        else:
            tree["encrypt"] = {"key-secret": sid}
        target = ["json:" + json.dumps(tree)]
    elif fmt == "luks":
        target = ["--image-opts", "driver=luks,file.filename=%s,key-secret=%s" % (path, key)]
    else:
        target = ["--image-opts", "driver=qcow2,file.filename=%s,encrypt.key-secret=%s" % (path, key)]
    tail = objs + target + ["-o", opts] + (["--force"] if force else [])
    return tail


@pytest.mark.parametrize("fmt,key,opts,force", SCENARIOS,
                         ids=["%s-%s-%s%s" % (f, k, o, "-force" if x else "")
                              for f, k, o, x in SCENARIOS])
def test_amend_matches_qemu_img(base, workdir, fmt, key, opts, force):
    d, vol, img = base
    src = vol if fmt == "luks" else img
    theirs, ours = (os.path.join(workdir, n + os.path.splitext(src)[1]) for n in ("q", "p"))
    shutil.copyfile(src, theirs)
    shutil.copyfile(src, ours)
    q = qemu_img_retrying(["amend"] + _run_both(d, fmt, theirs, key, opts, force),
                          qemu_img=tool("qemu-img"))
    p = subprocess.run([sys.executable, "-m", "pyqcrypt", "amend"]
                       + _run_both(d, fmt, ours, key, opts, force), capture_output=True, text=True)
    assert "Traceback" not in p.stderr
    assert (q.returncode == 0) == (p.returncode == 0), (q.returncode, q.stderr, p.returncode,
                                                          p.stderr)
    if fmt == "luks":
        with open(theirs, "rb") as fh:
            qs = _slots(fh.read(592))
        with open(ours, "rb") as fh:
            ps = _slots(fh.read(592))
        assert qs == ps, (qs, ps)
        for sid, pw in SECRETS.items():
            assert cs_accepts(theirs, pw, workdir) == cs_accepts(ours, pw, workdir), sid
        assert qs, "no keyslot left"       # no scenario here may lose the disk
    else:
        assert _fde_slots(theirs) == _fde_slots(ours)
