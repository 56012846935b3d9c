"""Kernel-test fixtures: the Triton module (under the interpreter) with poisoned output buffers."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # helpers.py (pytest runs with --import-mode=importlib)


@pytest.fixture
def tri(monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1", "the kernel tests run Triton's CPU interpreter"
    from kernels import triton_common, triton_impl

    monkeypatch.setattr(triton_common, "POISON", True)
    return triton_impl
