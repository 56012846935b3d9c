"""Encoder fixtures shared by the circuit tests: the embedded MiniLM, dictionaries fitted on it, and the graph of
a short prompt (tests/circuits/minilm_circuits.py builds them; other tests can call it directly)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import minilm_circuits as mc  # noqa: E402


@pytest.fixture(scope="session")
def minilm_clt_graph(minilm_hf):
    """(MiniLM, a skip CLT fitted on it over all 6 layers, the graph of mc.PROMPT with the default target)."""
    return mc.model_clt_graph(minilm_hf)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is faster than two spinning on a shared machine (restored after the module); a
    module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
