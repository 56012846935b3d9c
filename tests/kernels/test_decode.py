"""Triton decode (gather-sum) and its backward against float64 and the torch twin."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, TOL, rand, rel

import kernels
from kernels import SparseCode, decode_triton
from kernels.decode_twin import decode_twin

FLOOR = {torch.float32: 1e-6, torch.bfloat16: 2**-7}


def _code(B, n, w, dtype, seed, pad_rows=True, dup=False):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n, generator=g)[:w] for _ in range(B)])
    if dup:  # the same latent twice in a row: gradients must add
        idx[:, -1] = idx[:, 0]
    vals = rand(B, w, dtype=dtype, seed=seed + 1)
    if pad_rows and B > 1:
        vals[1, w // 2 :] = 0  # a padded row
    return SparseCode(vals, idx)


def _ref(code, W_dec, b_dec, R):
    v = code.values.double().requires_grad_()
    W = W_dec.double().requires_grad_()
    out = (v[:, :, None] * W[code.indices]).sum(1) + b_dec.double()
    (out * R).sum().backward()
    return out, v.grad, W.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n,w,d", [(1, 10, 1, 7), (37, 130, 9, 50), (64, 300, 32, 130)])
@pytest.mark.parametrize("dup", [False, True])
def test_decode_fwd_bwd(tri, B, n, w, d, dtype, dup):
    code = _code(B, n, w, dtype, seed=B + w + d, dup=dup)
    W_dec = rand(n, d, dtype=dtype, seed=2)
    b_dec = rand(d, dtype=dtype, seed=3)
    R = rand(B, d, dtype=torch.float64, seed=4)
    ref_out, ref_gv, ref_gW = _ref(code, W_dec, b_dec, R)

    v = code.values.clone().requires_grad_()
    W = W_dec.clone().requires_grad_()
    out = decode_triton.decode(SparseCode(v, code.indices), W, b_dec)
    (out.double() * R).sum().backward()
    assert out.dtype == dtype and v.grad.dtype == dtype and W.grad.dtype == dtype
    assert rel(out, ref_out) <= TOL[dtype]
    assert rel(v.grad, ref_gv) <= TOL[dtype]
    assert rel(W.grad, ref_gW) <= TOL[dtype]
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[code.indices.flatten()] = False
    assert (W.grad[untouched] == 0).all()

    # no worse than twice the twin in the same dtype
    v2 = code.values.clone().requires_grad_()
    W2 = W_dec.clone().requires_grad_()
    out2 = decode_twin(SparseCode(v2, code.indices), W2, b_dec)
    (out2.double() * R).sum().backward()
    for ours, twin, ref in ((out, out2, ref_out), (v.grad, v2.grad, ref_gv), (W.grad, W2.grad, ref_gW)):
        if B >= 32:  # on a handful of elements the comparison is rounding luck
            assert rel(ours, ref) <= max(2 * rel(twin, ref), FLOOR[dtype])


def test_decode_public_dispatch_and_noncontiguous(tri, monkeypatch):
    code = _code(12, 40, 8, torch.float32, seed=5)
    W = rand(40, 16, seed=6)
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    full = kernels.decode(code, W)
    sliced = SparseCode(code.values[:, :4], code.indices[:, :4])  # a nested prefix: non-contiguous
    assert not sliced.values.is_contiguous()
    part = kernels.decode(sliced, W)
    assert rel(part, decode_twin(SparseCode(sliced.values.contiguous(), sliced.indices.contiguous()), W)) < 1e-6
    assert rel(full, decode_twin(code, W)) < 1e-6
