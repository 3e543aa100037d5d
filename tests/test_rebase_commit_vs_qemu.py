# SPDX-License-Identifier: LGPL-2.1-or-later
"""``pyqcrypt rebase`` and ``pyqcrypt commit`` against ``qemu-img rebase``
and ``qemu-img commit``: the same backing chain is copied into two
directories (same relative names), qemu-img runs on copy A and pyqcrypt
on copy B; then the exit codes and stdout (and the first error) must
match, every layer of B must pass ``qemu-img check``, every layer must
show the same guest data in A and B (``qemu-img compare`` through their
chains) and ``qemu-img info --backing-chain`` must name the same backing
files.  Plain 2- and 3-layer chains and qcow2-luks chains (a secret per
layer).  Then crashes: rebase (-u and safe) and commit stopped at each of
their writes leave images qemu-img calls free of corruption (leaks at
most), the top image showing the old data or the new."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import pyqcrypt
from pyqcrypt import storage
from conftest import power_cut_at, qemu_img, qemu_io, tool

LAYERS = {"plain2": ("base", "top"), "plain3": ("base", "mid", "top"),
          "luks3": ("base", "mid", "top"), "v2": ("base", "top"), "extl2": ("base", "mid", "top"),
          "grow": ("base", "top"),            # a 2 MiB top over a 1 MiB base
          "big": ("base", "top")}             # a 9 MiB top: progress in steps of 2 MiB
# qemu-img create options of a chain's layers (the top's, the others')
CREATE = {"v2": ("compat=0.10", "compat=0.10"), "extl2": ("extended_l2=on,cluster_size=128K", "")}
SECRET = {"top": "s0", "mid": "s1", "base": "s2", "alt": "s3"}
# What each layer writes: (qemu-io commands)
WRITES = {"base": ("write -P 1 0 1M",), "mid": ("write -P 2 0 256K", "write -z 768K 64K"),
          "top": ("write -P 3 0 64K", "write -P 4 448K 128K", "write -z 640K 64K"),
          "alt": ("write -P 5 128K 512K",)}


def _objects(workdir):
    out = []
    for name, sid in sorted(SECRET.items()):
        pw = os.path.join(workdir, "pw-" + sid)
        if not os.path.exists(pw):
            with open(pw, "wb") as fh:
                fh.write(("pw-%s" % name).encode())
        out += ["--object", "secret,id=%s,file=%s" % (sid, pw)]
    return out


def _opts(path, chain):
    """--image-opts text for *path* whose chain (itself first) is *chain*."""
    parts = ["driver=qcow2", "file.filename=" + path]
    for depth, name in enumerate(chain):
        parts.append("backing." * depth + "encrypt.key-secret=" + SECRET[name])
    return ",".join(parts)


def _build(workdir, kind):
    """The source chain (and alt.qcow2, a different base) in workdir/src."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    enc = kind.startswith("luks")
    objs = _objects(workdir)
    layers = LAYERS[kind] + ("alt",)
    below = {"mid": "base", "top": "mid" if "mid" in layers else "base"}
    for name in layers:
        path = os.path.join(src, name + ".qcow2")
        opts = ["-o", "encrypt.format=luks,encrypt.key-secret=%s,encrypt.iter-time=10"
                % SECRET[name]] if enc else []
        extra = CREATE.get(kind, ("", ""))[name != "top"]
        opts += ["-o", extra] if extra else []
        back = ["-b", below[name] + ".qcow2", "-F", "qcow2"] if name in below else []
        big = kind in ("grow", "big") and name == "top"
        qemu_img("create", "-q", "-f", "qcow2", *objs, *opts, *back, path,
                 {"grow": "2M", "big": "9M"}[kind] if big else "1M")
        chain = _chain_of(path)
        if enc:
            qemu_io(_opts(path, chain), *WRITES[name], objects=objs[1::2])
        else:
            qemu_io(path, *WRITES[name] + (("write -P 7 1536K 64K",) if big else ()), fmt="qcow2")
    with open(os.path.join(src, "r.raw"), "wb") as fh:
        fh.write(b"raw" * 1000)
    return src


def _chain_of(path):
    """The layer names of *path*'s chain, itself first (qemu-img info)."""
    out = qemu_img("info", "--backing-chain", "--output=json", path).stdout
    return [os.path.basename(i["filename"])[:-len(".qcow2")] for i in json.loads(out)]


def _chain_info(path):
    out = qemu_img("info", "--backing-chain", "--output=json", path).stdout
    return [(os.path.basename(i["filename"]), i.get("backing-filename"),
             i.get("backing-filename-format")) for i in json.loads(out)]


def _copies(workdir, src):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    return a, b


def _run(cmd, cwd):
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=cwd)


def _first_error(text):
    lines = [line for line in text.splitlines() if line and ": " in line]
    return lines[0].split(": ", 1)[1] if lines else ""


def _target(kind, target, objs):
    """The FILENAME argument (with --image-opts for an encrypted chain)."""
    if not kind.startswith("luks"):
        return [target]
    name = target[:-len(".qcow2")]
    chain = ["top", "mid", "base"][["top", "mid", "base"].index(name):]
    return objs + ["--image-opts", _opts(target, chain)]


def _compare_layers(workdir, kind, a, b, names):
    objs = _objects(workdir)
    for name in names:
        pa, pb = os.path.join(a, name + ".qcow2"), os.path.join(b, name + ".qcow2")
        assert _chain_info(pa) == _chain_info(pb), name
        if kind.startswith("luks"):
            oa, ob = _opts(pa, _chain_of(pa)), _opts(pb, _chain_of(pb))
            check = qemu_img("check", *objs, "--image-opts", ob, check=False)
            cmp = qemu_img("compare", *objs, "--image-opts", oa, ob, check=False)
        else:
            check = qemu_img("check", pb, check=False)
            cmp = qemu_img("compare", pa, pb, check=False)
        assert check.returncode == 0, (name, check.stdout, check.stderr)
        assert cmp.returncode == 0, (name, cmp.stdout, cmp.stderr)


def _both(workdir, kind, verb, args, target="top.qcow2", remove=()):
    a, b = _copies(workdir, _build(workdir, kind))
    for gone in remove:
        os.unlink(os.path.join(a, gone))
        os.unlink(os.path.join(b, gone))
    objs = _objects(workdir)
    if kind.startswith("luks") and verb == "rebase" and "-u" in args:
        # qemu-img -u opens the image alone: its key, no backing secrets
        tgt = objs + ["--image-opts", _opts(target, ["top"])]
    else:
        tgt = _target(kind, target, objs)
    theirs = _run([tool("qemu-img"), verb, *args, *tgt], a)
    ours = _run([sys.executable, "-m", "pyqcrypt", verb, *args, *tgt], b)
    assert ours.returncode == theirs.returncode, (ours, theirs)
    assert ours.stdout == theirs.stdout, (ours.stdout, theirs.stdout)
    return a, b, theirs, ours


REBASE = {
    "2-onto-alt": ("plain2", ("-b", "alt.qcow2", "-F", "qcow2")),
    "2-flatten": ("plain2", ("-b", "",)),
    "3-onto-base": ("plain3", ("-b", "base.qcow2", "-F", "qcow2")),
    "3-onto-alt": ("plain3", ("-b", "alt.qcow2", "-F", "qcow2")),
    "3-flatten": ("plain3", ("-q", "-b", "")),
    "3-unsafe-alt": ("plain3", ("-u", "-b", "alt.qcow2", "-F", "qcow2")),
    "3-unsafe-remove": ("plain3", ("-u", "-b", "")),
    "3-unsafe-no-b": ("plain3", ("-u",)),
    "3-unsafe-absent": ("plain3", ("-u", "-b", "gone.qcow2", "-F", "qcow2")),
    "luks-flatten": ("luks3", ("-b", "")),
    "v2-flatten": ("v2", ("-b", "")),
    "v2-onto-alt": ("v2", ("-b", "alt.qcow2", "-F", "qcow2")),
    "v2-unsafe": ("v2", ("-u", "-b", "alt.qcow2", "-F", "qcow2")),
    "extl2-onto-base": ("extl2", ("-b", "base.qcow2", "-F", "qcow2")),
    "extl2-flatten": ("extl2", ("-b", "")),
    "grow-onto-alt": ("grow", ("-b", "alt.qcow2", "-F", "qcow2")),
    # -p: qemu-img's progress line, byte for byte (its steps follow its walk)
    "progress-3-onto-base": ("plain3", ("-p", "-b", "base.qcow2", "-F", "qcow2")),
    "progress-3-onto-mid": ("plain3", ("-p", "-b", "mid.qcow2", "-F", "qcow2")),
    "progress-3-onto-alt": ("plain3", ("-p", "-b", "alt.qcow2", "-F", "qcow2")),
    "progress-extl2-onto-base": ("extl2", ("-p", "-b", "base.qcow2", "-F", "qcow2")),
    "progress-grow-flatten": ("grow", ("-p", "-b", "")),
    "progress-big-flatten": ("big", ("-p", "-b", "")),
    "progress-big-onto-alt": ("big", ("-p", "-b", "alt.qcow2", "-F", "qcow2")),
    "progress-unsafe": ("plain3", ("-p", "-u", "-b", "alt.qcow2", "-F", "qcow2")),
    "luks-unsafe-alt": ("luks3", ("-u", "-b", "alt.qcow2", "-F", "qcow2")),
}
REBASE_ERRORS = {
    "missing-new": ("plain3", ("-b", "nothere.qcow2", "-F", "qcow2"), ()),
    "missing-old": ("plain3", ("-b", "alt.qcow2", "-F", "qcow2"), ("mid.qcow2",)),
    "unsafe-no-format": ("plain3", ("-u", "-b", "alt.qcow2"), ()),
    "bad-format": ("plain3", ("-u", "-b", "alt.qcow2", "-F", "nosuchfmt"), ()),
    "no-b": ("plain3", (), ()),
    "raw": ("plain3", ("-f", "raw", "-u", "-b", "alt.qcow2", "-F", "qcow2"), ("r.raw",)),
}


@pytest.mark.parametrize("case", sorted(REBASE))
def test_rebase_matches_qemu_img(workdir, case):
    kind, args = REBASE[case]
    a, b, theirs, ours = _both(workdir, kind, "rebase", list(args))
    assert ours.returncode == 0, ours.stderr
    names = LAYERS[kind] + ("alt",)
    if "-u" in args:                    # the same header, byte for byte
        with open(os.path.join(a, "top.qcow2"), "rb") as fa, \
                open(os.path.join(b, "top.qcow2"), "rb") as fb:
            assert fa.read() == fb.read()
    if case == "3-unsafe-absent":       # its chain cannot open now
        names = names[:-2] + names[-1:]
    _compare_layers(workdir, kind, a, b, names)


@pytest.mark.parametrize("case", sorted(REBASE_ERRORS))
def test_rebase_errors_match_qemu_img(workdir, case):
    kind, args, remove = REBASE_ERRORS[case]
    target = "top.qcow2"
    if remove[-1:] == ("r.raw",):
        target, remove = "r.raw", ()
    a, b, theirs, ours = _both(workdir, kind, "rebase", list(args), target=target, remove=remove)
    assert ours.returncode == 1
    if case != "missing-old":           # qemu names its open, pyqcrypt the missing file
        assert _first_error(ours.stderr) == _first_error(theirs.stderr), (ours.stderr,
                                                                          theirs.stderr)
    names = [n for n in LAYERS[kind] + ("alt",) if n + ".qcow2" not in remove]
    if not remove:
        _compare_layers(workdir, kind, a, b, names)


COMMIT = {
    "2": ("plain2", ()),
    "3": ("plain3", ()),
    "3-keep": ("plain3", ("-d",)),
    "3-quiet": ("plain3", ("-q",)),
    "3-into-base": ("plain3", ("-b", "base.qcow2")),
    "3-into-mid": ("plain3", ("-b", "mid.qcow2")),
    "luks3": ("luks3", ()),
    "v2": ("v2", ()),
    "extl2": ("extl2", ()),
    "luks3-keep": ("luks3", ("-d",)),
    "grow": ("grow", ()),               # the base grows to the top's size
}


@pytest.mark.parametrize("case", sorted(COMMIT))
def test_commit_matches_qemu_img(workdir, case):
    kind, args = COMMIT[case]
    a, b, theirs, ours = _both(workdir, kind, "commit", list(args))
    assert ours.returncode == 0, ours.stderr
    _compare_layers(workdir, kind, a, b, LAYERS[kind])
    if "-d" not in args and "-b" not in args:       # emptied, as qemu-img empties it
        top = os.path.join(b, "top.qcow2")
        where = [top] if not kind.startswith("luks") else \
            _objects(workdir) + ["--image-opts", _opts(top, _chain_of(top))]
        out = qemu_img("map", "--output=json", *where).stdout
        assert all(m["depth"] > 0 or not m["data"] and not m["zero"] for m in json.loads(out))


@pytest.mark.parametrize("args,target", [((), "base.qcow2"), (("-b", "alt.qcow2"), "top.qcow2"),
                                         (("-b", "top.qcow2"), "top.qcow2"),
                                         (("-f", "raw"), "r.raw"), ((), "absent.qcow2")],
                         ids=["no-backing", "not-in-chain", "itself", "raw", "absent"])
def test_commit_errors_match_qemu_img(workdir, args, target):
    a, b, theirs, ours = _both(workdir, "plain3", "commit", list(args), target=target)
    assert ours.returncode == 1
    if target != "absent.qcow2":        # qemu names its open, pyqcrypt the missing file
        assert _first_error(ours.stderr) == _first_error(theirs.stderr), (ours.stderr,
                                                                          theirs.stderr)
    _compare_layers(workdir, "plain3", a, b, LAYERS["plain3"])


def test_encrypted_chains_beyond_what_qemu_img_opens(workdir):
    """qemu-img cannot find a -b layer of an --image-opts image, nor give
    a new encrypted backing file its secret; pyqcrypt does both: commit -b
    into the bottom of an encrypted chain, and a safe rebase onto a layer
    of the old chain (read with that layer's secret)."""
    src = _build(workdir, "luks3")
    objs = _objects(workdir)
    top = _opts("top.qcow2", ["top", "mid", "base"])
    source = _opts(os.path.join(src, "top.qcow2"), ["top", "mid", "base"])
    for name, args in (("commit", ["commit", "-b", "base.qcow2"]),
                       ("rebase", ["rebase", "-b", "base.qcow2", "-F", "qcow2"])):
        here = os.path.join(workdir, name)
        shutil.copytree(src, here)
        res = _run([sys.executable, "-m", "pyqcrypt", *args, *objs, "--image-opts", top], here)
        assert res.returncode == 0, res.stderr
        assert res.stdout == ("Image committed.\n" if name == "commit" else "")
        result = os.path.join(here, "base.qcow2" if name == "commit" else "top.qcow2")
        chain = _chain_of(result)
        assert chain == (["base"] if name == "commit" else ["top", "base"])
        for layer in _qcow2_files(here):
            path = os.path.join(here, layer)
            check = qemu_img("check", *objs, "--image-opts", _opts(path, _chain_of(path)),
                             check=False)
            assert check.returncode == 0, (name, layer, check.stdout)
        cmp = qemu_img("compare", *objs, "--image-opts", _opts(result, chain), source,
                       check=False)
        assert cmp.returncode == 0, (name, cmp.stdout)


def _qcow2_files(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".qcow2"))


OPERATIONS = {
    "rebase-unsafe": (lambda top: pyqcrypt.rebase(top, "./alt.qcow2", "qcow2", unsafe=True),
                      ("rebase", "-u", "-b", "./alt.qcow2", "-F", "qcow2")),
    "rebase-safe": (lambda top: pyqcrypt.rebase(top, "alt.qcow2", "qcow2"),
                    ("rebase", "-b", "alt.qcow2", "-F", "qcow2")),
    "commit": (lambda top: pyqcrypt.commit(top), ("commit",)),
    "commit-v2": (lambda top: pyqcrypt.commit(top), ("commit",)),
    "commit-extl2": (lambda top: pyqcrypt.commit(top), ("commit",)),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_crash_at_any_write_leaves_a_sound_chain(workdir, operation):
    run, qemu_args = OPERATIONS[operation]
    src = _build(workdir, operation.split("-")[1] if operation.startswith("commit-") else "plain3")
    new = os.path.join(workdir, "new")
    shutil.copytree(src, new)
    assert _run([tool("qemu-img"), *qemu_args, "top.qcow2"], new).returncode == 0
    probe = os.path.join(workdir, "probe")
    shutil.copytree(src, probe)
    hook, seen = power_cut_at(1 << 30)
    with storage.injected_faults(hook):
        run(os.path.join(probe, "top.qcow2"))
    total = seen["write"]
    assert total >= 1
    for n in range(1, total + 1):
        here = os.path.join(workdir, "crash%d" % n)
        shutil.copytree(src, here)
        hook, _ = power_cut_at(n)
        with storage.injected_faults(hook), pytest.raises(pyqcrypt.Error):
            run(os.path.join(here, "top.qcow2"))
        for layer in _qcow2_files(here):
            res = qemu_img("check", os.path.join(here, layer), check=False)
            assert res.returncode in (0, 3), (n, layer, res.stdout, res.stderr)   # leaks at most
        top = os.path.join(here, "top.qcow2")
        same = [qemu_img("compare", top, os.path.join(d, "top.qcow2"), check=False).returncode
                for d in (src, new)]
        assert 0 in same, (n, same)
        shutil.rmtree(here)


def test_force_share_reads_backing_files_another_process_writes(workdir):
    """-U: the new backing file is read without QEMU's lock, so a rebase
    onto it works while another process holds it open for writing; without
    -U both tools refuse, and the old chain stays locked either way."""
    a, b = _copies(workdir, _build(workdir, "plain3"))
    for held, extra, code in (("base", ("-U",), 1), ("alt", (), 1), ("alt", ("-U",), 0)):
        holders = [pyqcrypt.open(os.path.join(d, held + ".qcow2"), writable=True) for d in (a, b)]
        try:
            args = ["rebase", *extra, "-b", "alt.qcow2", "-F", "qcow2", "top.qcow2"]
            theirs = _run([tool("qemu-img"), *args], a)
            ours = _run([sys.executable, "-m", "pyqcrypt", *args], b)
            assert theirs.returncode == ours.returncode == code, (held, extra, theirs, ours)
        finally:
            for img in holders:
                img.close()
    _compare_layers(workdir, "plain3", a, b, LAYERS["plain3"])


def test_the_requests_never_show_their_secrets():
    from pyqcrypt.committing import CommitRequest
    from pyqcrypt.rebasing import RebaseRequest
    request = RebaseRequest("b.qcow2", "qcow2", False, b"top-secret", [b"mid-secret"],
                            [b"new-secret"])
    assert "secret" not in repr(request) and "b.qcow2" in repr(request)
    request = CommitRequest("b.qcow2", False, b"top-secret", [b"mid-secret"])
    assert "secret" not in repr(request) and "b.qcow2" in repr(request)


@pytest.mark.parametrize("length,cluster", [(1024, "64K"), (1023, "512")],
                         ids=["name-too-long", "no-room-in-the-header"])
def test_names_that_do_not_fit_are_refused_as_qemu_img_refuses_them(workdir, length, cluster):
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=" + cluster,
             os.path.join(src, "top.qcow2"), "1M")
    a, b = _copies(workdir, src)
    args = ["rebase", "-u", "-b", "n" * length, "-F", "qcow2", "top.qcow2"]
    theirs = _run([tool("qemu-img"), *args], a)
    ours = _run([sys.executable, "-m", "pyqcrypt", *args], b)
    assert ours.returncode == theirs.returncode == 1
    assert _first_error(ours.stderr) == _first_error(theirs.stderr), (ours.stderr, theirs.stderr)
    with open(os.path.join(a, "top.qcow2"), "rb") as fa, open(os.path.join(b, "top.qcow2"),
                                                                "rb") as fb:
        assert fa.read() == fb.read()


def test_images_with_bitmaps_are_not_written(workdir):
    """A writable open would invalidate persistent bitmaps: a safe rebase
    of such an image, and a commit into (or emptying) one, are refused
    before anything changes; -u (the header alone) keeps them."""
    src = _build(workdir, "plain2")
    qemu_img("bitmap", "--add", os.path.join(src, "top.qcow2"), "bm0")
    qemu_img("bitmap", "--add", os.path.join(src, "base.qcow2"), "bm1")
    before = {f: open(os.path.join(src, f), "rb").read() for f in _qcow2_files(src)}
    for args in (["rebase", "-b", "", "top.qcow2"], ["commit", "top.qcow2"],
                 ["commit", "-d", "top.qcow2"]):
        res = _run([sys.executable, "-m", "pyqcrypt", *args], src)
        assert res.returncode == 1 and "persistent bitmaps" in res.stderr, (args, res)
        assert {f: open(os.path.join(src, f), "rb").read() for f in _qcow2_files(src)} == before
    res = _run([sys.executable, "-m", "pyqcrypt", "rebase", "-u", "-b", "alt.qcow2", "-F", "qcow2",
                "top.qcow2"], src)
    assert res.returncode == 0, res.stderr
    info = json.loads(qemu_img("info", "--output=json", os.path.join(src, "top.qcow2")).stdout)
    assert [b["name"] for b in info["format-specific"]["data"]["bitmaps"]] == ["bm0"]
    assert qemu_img("check", os.path.join(src, "top.qcow2"), check=False).returncode == 0
