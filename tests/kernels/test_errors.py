"""Bad input gives clear errors on both paths; importing kernels never loads Triton."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import rand

import kernels
from kernels import SparseCode


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch, tri):
    monkeypatch.setattr(kernels, "BACKEND", request.param)
    return request.param


def test_select_errors(backend):
    pre = rand(4, 10)
    with pytest.raises(ValueError, match="k=11 out of range"):
        kernels.select(pre, "row", k=11)
    with pytest.raises(ValueError, match="k=0 out of range"):
        kernels.select(pre, "abs", k=0)
    with pytest.raises(ValueError, match="needs k"):
        kernels.select(pre, "batch")
    with pytest.raises(ValueError, match="unknown selection rule"):
        kernels.select(pre, "top", k=2)
    with pytest.raises(ValueError, match="needs threshold"):
        kernels.select(pre, "threshold")
    with pytest.raises(ValueError, match="empty batch"):
        kernels.select(rand(0, 10), "row", k=2)
    with pytest.raises(ValueError, match=r"\[batch, n_latents\]"):
        kernels.select(rand(10), "row", k=2)
    with pytest.raises(TypeError, match="floating point"):
        kernels.select(torch.ones(3, 4, dtype=torch.int64), "row", k=2)


def test_decode_errors(backend):
    W = rand(10, 6)
    code = SparseCode(rand(3, 2), torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        kernels.decode(code, W.to(torch.bfloat16))
    with pytest.raises(ValueError, match="must both be"):
        kernels.decode(SparseCode(rand(3, 2), torch.zeros(3, 3, dtype=torch.int64)), W)
    with pytest.raises(ValueError, match="empty batch"):
        kernels.decode(SparseCode(rand(0, 2), torch.zeros(0, 2, dtype=torch.int64)), W)
    with pytest.raises(TypeError, match="int64 or int32"):
        kernels.decode(SparseCode(rand(3, 2), torch.zeros(3, 2)), W)


def test_encode_errors(backend):
    x, W, b = rand(4, 6), rand(6, 10), rand(10)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.encode(rand(4, 5), W, b, "row", k=2)
    with pytest.raises(TypeError, match="dtype"):
        kernels.encode(x.to(torch.bfloat16), W, b, "row", k=2)
    with pytest.raises(ValueError, match="b_enc of shape"):
        kernels.encode(x, W, rand(9), "row", k=2)
    with pytest.raises(ValueError, match="empty batch"):
        kernels.encode(rand(0, 6), W, b, "row", k=2)
    with pytest.raises(ValueError, match="k=11 out of range"):
        kernels.encode(x, W, b, "row", k=11)
    with pytest.raises(ValueError, match="dead must be"):
        kernels.encode(x, W, b, "row", k=2, dead=torch.ones(9, dtype=torch.bool), k_aux=2)


def test_noncontiguous_inputs_are_accepted(backend):
    pre = rand(10, 24).T[:, :20].contiguous().T  # a transposed view: non-contiguous
    assert not pre.is_contiguous()
    a = kernels.select(pre, "row", k=3)
    b = kernels.select(pre.contiguous(), "row", k=3)
    assert torch.equal(a.values, b.values) and torch.equal(a.indices, b.indices)
    W = rand(24, 6).T  # [6, 24] view
    x = rand(5, 6)
    e1 = kernels.encode(x, W, None, "abs", k=3)
    e2 = kernels.encode(x, W.contiguous(), None, "abs", k=3)
    assert torch.equal(e1.code.indices, e2.code.indices)


def test_import_does_not_load_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import sys, torch, kernels; "
        "kernels.decode(kernels.select(torch.randn(3, 8), 'row', k=2), torch.randn(8, 4)); "
        "loaded = [m for m in sys.modules if m == 'triton' or m.startswith('kernels.') and 'triton' in m]; "
        "assert not loaded, loaded"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
