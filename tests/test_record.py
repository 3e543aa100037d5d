# SPDX-License-Identifier: LGPL-2.1-or-later
"""pyqcrypt._record against dataclasses: the start-up path's records
(qcow2 and LUKS headers, keyslots, snapshots, cipher specs) use
``_record`` so that ``pyqcrypt info`` never imports ``inspect``, and mypy
checks them as dataclasses.  Each case builds the same class body with
both decorators and requires the same answers: construction, defaults and
factories, argument errors, repr, equality, hashing, frozen assignment and
replace."""

import dataclasses

import pytest

from pyqcrypt import _record


def _pair(frozen=False):
    made = []
    for mod in (dataclasses, _record):
        @mod.dataclass(frozen=frozen)
        class Rec:
            a: int
            b: str = "x"
            c: list = mod.field(default_factory=list)
            secret: bytes = mod.field(default=b"k", repr=False)
            note: str = mod.field(default="", compare=False)
        made.append(Rec)
    return made


def _same(fn):
    results = []
    for kind in _pair(), _pair(frozen=True):
        for cls in kind:
            try:
                results.append(("ok", fn(cls)))
            except Exception as exc:        # the exception class is part of the behaviour
                results.append((type(exc).__mro__[1] if type(exc).__name__ == "FrozenInstanceError"
                                else type(exc), None))
    assert results[0] == results[1] and results[2] == results[3], results


@pytest.mark.parametrize("call", [
    lambda C: repr(C(1)),
    lambda C: repr(C(1, "y", [2], b"s", "n")),
    lambda C: repr(C(a=3, note="n")),
    lambda C: vars(C(1, c=[1])),
    lambda C: C(1) == C(1),
    lambda C: C(1) == C(2),
    lambda C: C(1, note="p") == C(1, note="q"),        # compare=False
    lambda C: C(1, secret=b"p") == C(1, secret=b"q"),
    lambda C: C(1) == (1, "x", [], b"k", ""),
    lambda C: C(1).c is not C(1).c,                     # a fresh list each time
    lambda C: C(),
    lambda C: C(1, 2, 3, 4, 5, 6),
    lambda C: C(1, a=2),
    lambda C: C(1, z=2),
    lambda C: C.b,
    lambda C: hasattr(C, "c"),
])
def test_record_behaves_as_dataclass(call):
    _same(call)


def test_hashing_and_frozen_assignment():
    for frozen in (False, True):
        real, ours = _pair(frozen)
        for cls in (real, ours):
            rec = cls(1, c=(1,))
            if frozen:
                assert hash(rec) == hash(cls(1, c=(1,), note="other"))
                with pytest.raises(AttributeError):
                    rec.a = 2
                with pytest.raises(AttributeError):
                    del rec.a
            else:
                with pytest.raises(TypeError):
                    hash(rec)
                rec.a = 2
                assert rec.a == 2
    assert issubclass(_record.FrozenInstanceError, AttributeError)


def test_replace_matches():
    real, ours = _pair()
    r1 = dataclasses.replace(real(1, c=[1]), b="z")
    r2 = _record.replace(ours(1, c=[1]), b="z")
    assert repr(r1).replace("Rec", "") == repr(r2).replace("Rec", "")
    with pytest.raises(TypeError):
        _record.replace(ours(1), nope=1)


def test_own_methods_are_kept():
    @_record.dataclass
    class Own:
        a: int

        def __repr__(self):
            return "own"

        def __eq__(self, other):
            return True

        __hash__ = object.__hash__

    assert repr(Own(1)) == "own" and Own(1) == Own(2)
    hash(Own(1))


def test_the_startup_records_use_it():
    from pyqcrypt.crypto.cipherspec import CipherSpec
    from pyqcrypt.luks.header import Keyslot, LuksHeader
    from pyqcrypt.qcow2.header import Qcow2Header
    from pyqcrypt.qcow2.snapshots import Snapshot
    for cls in (CipherSpec, Keyslot, LuksHeader, Qcow2Header, Snapshot):
        assert hasattr(cls, "__record_fields__"), cls
