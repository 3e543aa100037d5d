# SPDX-License-Identifier: LGPL-2.1-or-later
"""The fuzzing harness, briefly (a fixed seed, a few hundred inputs), and
the corpus of inputs that once found bugs, replayed as regressions.
Run long with: python tests/fuzz_harness.py --seconds 600"""

import os
import shutil
import signal

import pytest

import fuzz_harness

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_corpus")


def test_brief_fuzz_run(monkeypatch):
    monkeypatch.setenv("PYQCRYPT_MAX_ITERATIONS", "200000")
    stats = fuzz_harness.fuzz(seconds=120, iterations=int(os.environ.get("PYQCRYPT_FUZZ_INPUTS", 300)),
                              seed=20261125)
    assert stats["inputs"] > 0
    assert not stats["failures"], stats["failures"][0][1]


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
