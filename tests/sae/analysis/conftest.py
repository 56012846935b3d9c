"""Fixtures of the analysis tests: the tiny LM of tiny_lm.py and its corpus (never downloaded)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tiny_lm.py (pytest runs with importlib mode)

from tiny_lm import corpus, tiny_lm  # noqa: E402


@pytest.fixture(scope="session")
def lm():
    return tiny_lm()


@pytest.fixture(scope="session")
def docs():
    from datasets import Dataset

    return Dataset.from_dict({"text": corpus()})
