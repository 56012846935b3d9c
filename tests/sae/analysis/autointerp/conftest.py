"""Fixtures of the autointerp tests: synthetic latents of known ground truth, a loopback OpenAI-compatible server."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # loopback.py (pytest runs with importlib mode)

from loopback import Loopback  # noqa: E402


@pytest.fixture(scope="session")
def synthetic():
    """(stats, truth, sae): 12 latents firing on word sets, 4 on the word after a word, 16k tokens."""
    from sae.analysis.autointerp.synthetic import synthetic_stats

    stats, truth, sae, _ = synthetic_stats(n_words=12, n_after=4, tokens=16_384, seed=0)
    return stats, truth, sae


@pytest.fixture(scope="module")
def server():
    s = Loopback().start()
    yield s
    s.stop()


@pytest.fixture
def fresh(server):
    """The module's server with its records cleared."""
    server.reset()
    return server
