"""Shared fixtures: the embedded model is loaded once per session."""

import pytest

from activations import load_model


@pytest.fixture(scope="session")
def minilm():
    return load_model("minilm")


@pytest.fixture(scope="session")
def minilm_hf():
    return load_model("minilm", backend="hf")
