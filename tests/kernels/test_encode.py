"""Triton encode (pre-activations + selection; sparse backward) against float64 and the torch twin."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, TOL, rand, rel

import kernels

RULES = ["row", "abs", "batch", "threshold", "stat"]


def _inputs(B, d, n, dtype, seed):
    x = rand(B, d, dtype=dtype, seed=seed)
    W = rand(d, n, dtype=dtype, seed=seed + 1, scale=d**-0.5)
    b = rand(n, dtype=dtype, seed=seed + 2, scale=0.1)
    return x, W, b


def _run(x0, W0, b0, rule, k, dead, k_aux, R, Ra, with_b=True):
    x, W = x0.clone().requires_grad_(), W0.clone().requires_grad_()
    b = b0.clone().requires_grad_() if with_b else None
    enc = kernels.encode(x, W, b, rule, k=k, threshold=0.5 if rule == "threshold" else None, dead=dead, k_aux=k_aux)
    loss = (enc.code.values.double() * R[:, : enc.code.values.shape[1]]).sum()
    if enc.aux is not None:
        loss = loss + (enc.aux.values.double() * Ra[:, : enc.aux.values.shape[1]]).sum()
    loss.backward()
    return enc, x.grad, W.grad, (b.grad if with_b else None)


def _ref(x0, W0, b0, enc, rule, R, Ra, with_b=True):
    """float64 gradients of the same loss at the kernel's own indices."""
    x, W, b = (t.double().requires_grad_() for t in (x0, W0, b0))
    pre = x @ W + (b if with_b else 0)
    relu = rule in ("row", "batch")
    w = enc.code.values.shape[1]
    v = pre.gather(1, enc.code.indices)
    v = v.relu() if relu else v
    v = torch.where(enc.code.values != 0, v, torch.zeros_like(v)) if rule not in ("row", "abs") else v
    loss = (v * R[:, :w]).sum()
    if enc.aux is not None:
        a = pre.gather(1, enc.aux.indices)
        a = a if rule == "abs" else a.relu()
        loss = loss + (a * Ra[:, : a.shape[1]]).sum()
    loss.backward()
    return v, x.grad, W.grad, b.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("B,d,n,k", [(1, 12, 37, 5), (45, 24, 150, 8)])
def test_encode_matches_float64(tri, monkeypatch, B, d, n, k, rule, dtype):
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    x0, W0, b0 = _inputs(B, d, n, dtype, seed=B + n)
    dead = rand(n, seed=3) > 0.6
    R = rand(B, n, dtype=torch.float64, seed=7)
    Ra = rand(B, n, dtype=torch.float64, seed=8)
    enc, gx, gW, gb = _run(x0, W0, b0, rule, k, dead, 4, R, Ra)
    v, rx, rW, rb = _ref(x0, W0, b0, enc, rule, R, Ra)
    assert rel(enc.code.values, v) <= TOL[dtype]
    assert gx.dtype == dtype and gW.dtype == dtype and gb.dtype == dtype
    for ours, ref in ((gx, rx), (gW, rW), (gb, rb)):
        assert rel(ours, ref) <= TOL[dtype]
    # AuxK trains the encoder: dead latents' encoder columns get gradient at the aux-selected entries
    assert enc.aux is not None and dead[enc.aux.indices].all()
    aux_cols = torch.unique(enc.aux.indices)
    assert (gW[:, aux_cols].abs().sum(0) > 0).all()
    # latents never selected get exactly zero gradient
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[enc.code.indices[enc.code.values != 0]] = True
    chosen[enc.aux.indices] = True
    assert (gW[:, ~chosen] == 0).all() and (gb[~chosen] == 0).all()


@pytest.mark.parametrize("rule", ["row", "abs"])
def test_encode_triton_equals_twin_fp32(tri, monkeypatch, rule):
    x0, W0, b0 = _inputs(33, 20, 150, torch.float32, seed=11)
    dead = rand(150, seed=12) > 0.7
    R = rand(33, 150, dtype=torch.float64, seed=13)
    Ra = rand(33, 150, dtype=torch.float64, seed=14)
    out = {}
    for backend in ("torch", "triton"):
        monkeypatch.setattr(kernels, "BACKEND", backend)
        out[backend] = _run(x0, W0, b0, rule, 6, dead, 5, R, Ra)
    (e1, *g1), (e2, *g2) = out["torch"], out["triton"]
    assert torch.equal(e1.code.indices, e2.code.indices) and torch.equal(e1.aux.indices, e2.aux.indices)
    assert rel(e2.code.values, e1.code.values) < 1e-6
    for a, b in zip(g1, g2):
        assert rel(b, a) < 1e-5
    # the twin also trains dead latents' encoder columns
    assert (g1[1][:, torch.unique(e1.aux.indices)].abs().sum(0) > 0).all()


def test_encode_no_bias_and_input_only_grad(tri, monkeypatch):
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    x0, W0, b0 = _inputs(16, 10, 64, torch.float32, seed=15)
    R = rand(16, 64, dtype=torch.float64, seed=16)
    enc, gx, gW, _ = _run(x0, W0, b0, "row", 4, None, 0, R, R, with_b=False)
    assert enc.aux is None
    _, rx, rW, _ = _ref(x0, W0, b0, enc, "row", R, R, with_b=False)
    assert rel(gx, rx) < 1e-5 and rel(gW, rW) < 1e-5
    x = x0.clone().requires_grad_()
    enc = kernels.encode(x, W0, None, "row", k=4)
    (enc.code.values.double() * R[:, :4]).sum().backward()
    assert rel(x.grad, rx) < 1e-5


def test_encode_column_major_W_enc_needs_no_copy(tri, monkeypatch):
    """W_enc as the transpose of an [n, d] tensor: gradients exact, and grad_W_enc keeps W_enc's layout."""
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    x0, W0, b0 = _inputs(40, 24, 150, torch.float32, seed=21)
    R = rand(40, 150, dtype=torch.float64, seed=22)
    W_cm = W0.t().contiguous().t()  # [d, n] values, column-major storage
    x, W, b = x0.clone().requires_grad_(), W_cm.clone().requires_grad_(), b0.clone().requires_grad_()
    assert W.stride() == (1, 24)
    enc = kernels.encode(x, W, b, "row", k=6)
    (enc.code.values.double() * R[:, :6]).sum().backward()
    _, rx, rW, rb = _ref(x0, W0, b0, enc, "row", R, R)
    assert W.grad.stride() == W.stride()
    for ours, ref in ((x.grad, rx), (W.grad, rW), (b.grad, rb)):
        assert rel(ours, ref) <= 1e-5


@pytest.mark.parametrize("rule", ["row", "abs"])
def test_auxk_code_has_fixed_width_whatever_the_dead_count(tri, monkeypatch, rule):
    """Triton's AuxK code is min(k_aux, n) wide (no host sync on the dead count): past the dead latents it is
    zero-valued padding that gets no gradient; with no dead latent it is all padding."""
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    x0, W0, b0 = _inputs(30, 16, 80, torch.float32, seed=31)
    R = rand(30, 80, dtype=torch.float64, seed=32)
    Ra = rand(30, 80, dtype=torch.float64, seed=33)
    dead = torch.zeros(80, dtype=torch.bool)
    dead[[5, 17]] = True
    enc, gx, gW, gb = _run(x0, W0, b0, rule, 4, dead, 6, R, Ra)
    assert enc.aux.values.shape == (30, 6)
    assert (enc.aux.values[:, 2:] == 0).all()
    assert set(enc.aux.indices[:, :2].flatten().tolist()) == {5, 17}
    # the padding is a constant 0: a weight on it changes nothing (the float64 reference below would
    # differentiate the value gathered at the padding's index, so it gets weight 0 there)
    Ra[:, 2:] = 0
    _, gx0, gW0, gb0 = _run(x0, W0, b0, rule, 4, dead, 6, R, Ra)
    assert torch.equal(gW, gW0) and torch.equal(gx, gx0) and torch.equal(gb, gb0)
    _, rx, rW, rb = _ref(x0, W0, b0, enc, rule, R, Ra)
    for ours, ref in ((gx, rx), (gW, rW), (gb, rb)):
        assert rel(ours, ref) <= 1e-5
    none = kernels.encode(x0, W0, b0, rule, k=4, dead=torch.zeros(80, dtype=torch.bool), k_aux=6)
    assert none.aux.values.shape == (30, 6) and (none.aux.values == 0).all()
