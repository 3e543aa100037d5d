# SPDX-License-Identifier: LGPL-2.1-or-later
"""The fuzzing harness, briefly (a few hundred inputs, with a seed taken
from the test's name so a failure replays), and the corpus of inputs that
once found bugs, replayed as regressions.
Run long with: python tests/fuzz_harness.py --seconds 600"""

import os
import shutil
import signal
import zlib

import pytest

import fuzz_harness

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_corpus")


def _seed(request):
    """A stable seed for this test: CRC-32 of its module and name (the name
    carries any parametrization), the same on every run and machine."""
    key = "%s::%s" % (request.node.module.__name__, request.node.name)
    return zlib.crc32(key.encode()), key


def test_brief_fuzz_run(request, monkeypatch):
    monkeypatch.setenv("PYQCRYPT_MAX_ITERATIONS", "200000")
    seed, key = _seed(request)
    inputs = int(os.environ.get("PYQCRYPT_FUZZ_INPUTS", 300))
    stats = fuzz_harness.fuzz(seconds=120, iterations=inputs, seed=seed)
    replay = ("fuzz seed %d (crc32 of %r); replay: python tests/fuzz_harness.py --seed %d "
              "--iterations %d --seconds 1e9" % (seed, key, seed, inputs))
    assert stats["inputs"] > 0, replay
    assert not stats["failures"], "%s\n%d failure(s), first (%s):\n%s" % (
        replay, len(stats["failures"]), stats["failures"][0][0], stats["failures"][0][1])


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(CORPUS) if f.endswith(".bin"))
                         if os.path.isdir(CORPUS) else [])
def test_corpus_regression(workdir, name, monkeypatch):
    monkeypatch.setenv("PYQCRYPT_MAX_ITERATIONS", "200000")
    kind = name.rsplit("-", 1)[0]
    path = os.path.join(workdir, "input")
    shutil.copy(os.path.join(CORPUS, name), path)
    signal.signal(signal.SIGALRM, fuzz_harness._alarm)
    signal.alarm(fuzz_harness.TIME_LIMIT)
    try:
        fuzz_harness.run_targets(path, workdir, kind)      # raises on a regression
    finally:
        signal.alarm(0)
