# SPDX-License-Identifier: LGPL-2.1-or-later
"""Publication (pyqcrypt.storage.publication): several new files appear
together or not at all.  Every file is synced before the first one moves
into place; they move in the order given, a detached header ahead of its
payload and a qcow2 data file ahead of the image that names it; a name
that appeared meanwhile is left alone and everything already moved is
removed again; leaving the with block without a commit leaves nothing."""

import os

import pytest

import pyqcrypt
from pyqcrypt import Pbkdf, storage
from pyqcrypt.storage import Publication, publication

PW = b"publication"


@pytest.fixture
def moves(monkeypatch):
    """Every sync and every move into place, in order."""
    events = []
    real_rename = publication.rename_noreplace

    def rename(src, dst):
        events.append(("move", os.path.basename(dst)))
        return real_rename(src, dst)
    monkeypatch.setattr(publication, "rename_noreplace", rename)
    with storage.injected_faults(lambda kind, st, *a: kind == "sync" and events.append(
            ("sync", os.path.basename(st.path).split(".pyqcrypt-")[0]))):
        yield events


def test_all_synced_first_then_moved_in_order(workdir, moves):
    with Publication() as files:
        payload = files.new(os.path.join(workdir, "payload"))
        header = files.new(os.path.join(workdir, "header"), first=True)
        payload.storage.pwrite(0, b"payload")
        header.storage.pwrite(0, b"header")
        files.commit()
    assert moves == [("sync", "header"), ("sync", "payload"), ("move", "header"), ("move", "payload")]
    assert sorted(os.listdir(workdir)) == ["header", "payload"]
    assert files.published() == [header.path, payload.path]


@pytest.mark.parametrize("kind", ["luks", "luks2"])
def test_a_detached_header_moves_before_its_payload(workdir, moves, kind):
    vol, hdr = os.path.join(workdir, "vol"), os.path.join(workdir, "vol.hdr")
    cost = {"iterations": 1000} if kind == "luks" else {"pbkdf": Pbkdf("pbkdf2", iterations=1000)}
    pyqcrypt.create(vol, 1 << 20, kind, passphrase=PW, header=hdr, **cost)
    assert [name for what, name in moves if what == "move"] == ["vol.hdr", "vol"]


def test_a_data_file_moves_before_its_image(workdir, moves):
    img = os.path.join(workdir, "i.qcow2")
    pyqcrypt.create(img, 1 << 20, "qcow2", data_file="i.data")
    assert [name for what, name in moves if what == "move"] == ["i.data", "i.qcow2"]


def test_a_name_taken_meanwhile_is_left_alone_and_the_rest_removed(workdir):
    first, second = os.path.join(workdir, "first"), os.path.join(workdir, "second")
    with pytest.raises(pyqcrypt.Error, match="second appeared while pyqcrypt was writing it"):
        with Publication() as files:
            files.new(first)
            files.new(second)
            with open(second, "wb") as fh:
                fh.write(b"someone else's")
            files.commit()
    assert os.listdir(workdir) == ["second"]
    with open(second, "rb") as fh:
        assert fh.read() == b"someone else's"


def test_no_commit_leaves_nothing(workdir):
    with pytest.raises(RuntimeError):
        with Publication() as files:
            files.new(os.path.join(workdir, "a"))
            files.stage(os.path.join(workdir, "b"))
            raise RuntimeError("a step failed")
    assert os.listdir(workdir) == []
