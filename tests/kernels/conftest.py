"""Kernel-test fixtures: the Triton modules (under the interpreter) with poisoned output buffers."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # helpers.py (pytest runs with --import-mode=importlib)


@pytest.fixture
def tri(monkeypatch):
    """Every Triton output buffer starts as garbage, so an unwritten element shows."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "the kernel tests run Triton's CPU interpreter"
    from kernels import triton_common

    monkeypatch.setattr(triton_common, "POISON", True)
