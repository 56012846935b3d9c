"""Fixtures of the live-server tests: the tiny causal LM of tests/sae/analysis/tiny_lm.py with a random dictionary."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "sae", "analysis"))  # tiny_lm.py

from tiny_lm import HOSTILE, tiny_lm  # noqa: E402

from sae import SAEConfig, SparseAutoencoder  # noqa: E402
from sae.serve import Inspector, Limits  # noqa: E402

__all__ = ["HOSTILE"]


@pytest.fixture(scope="session")
def causal_inspector():
    lm = tiny_lm()
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=96, k=4, hook_name="blocks.1.hook_resid_pre"), seed=0)
    limits = Limits(max_body_bytes=2048, max_text_chars=400, max_new_tokens=12, queue_size=2, top_latents=5)
    return Inspector(lm, sae, limits)
