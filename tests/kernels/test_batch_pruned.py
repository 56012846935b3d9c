"""BatchTopK on Triton under the interpreter: the selection pruned by sub-block maxima (kernels/batch_select_triton.py)
against the full-batch bisection (the same ties), the torch twin and float64; its fallback; the fused encoder."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, encoder_case, rand, rel, spy

import kernels
from kernels import batch_select_triton as tb
from kernels import encode_matmul_triton, encode_triton, first_use
from kernels import select_twin as S
from kernels.blocks import batch_prune_fits, submax_width
from kernels.submax_select_triton import submax


def _pruned(pre: torch.Tensor, k: int):
    sub = submax_width(pre.shape[1], k)
    return tb.select_from_submax(pre, submax(pre, 0, sub), k, sub)


def _same(a: kernels.SparseCode, b: kernels.SparseCode) -> None:
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n,k", [(16, 512, 2), (33, 700, 3), (6, 4100, 16)])  # n off the sub-block grid; SUB 16, 16
def test_pruned_batch_is_the_full_path_exactly(tri, B, n, k, dtype):
    """The pruned path answers (no fallback) and returns what the full-batch path does, values and order; for
    fp32 (no ties) the twin's code as well, and k*B entries at or above the batch's (k*B)-th value."""
    assert batch_prune_fits(n, k)
    pre = rand(B, n, dtype=dtype, seed=B + n, shift=-0.3)
    assert _pruned(pre, k) is not None
    code = tb.select_batch(pre, k)
    _same(code, tb.select_batch_bisected(pre, pre.detach(), k))
    flat = pre.double().relu().flatten()
    assert int(code.l0().sum()) == k * B
    assert (code.values.double()[code.values != 0] >= flat.topk(k * B).values[-1]).all()
    if dtype == torch.float32:
        assert torch.equal(code.to_dense(n), S.select_batch(pre, k).to_dense(n))


def test_a_hot_row_takes_most_of_the_batch(tri):
    """BatchTopK's point: one row may hold far more than k. Row 3 is large everywhere: it takes almost the
    whole budget, and the pruned path still answers exactly."""
    B, n, k = 12, 1024, 4
    pre = rand(B, n, seed=9, shift=-0.5)
    pre[3] += 4.0
    assert _pruned(pre, k) is not None
    code = tb.select_batch(pre, k)
    _same(code, tb.select_batch_bisected(pre, pre, k))
    assert torch.equal(code.to_dense(n), S.select_batch(pre, k).to_dense(n))
    assert int(code.l0()[3]) == k * B


def test_ties_at_the_threshold_go_in_row_then_column_order(tri):
    """10 entries at 2.0 and 40 at 1.0 (total 32): all of the 2.0s, then the first 22 of the 1.0s in flat order."""
    B, n, k = 16, 512, 2
    pre = rand(B, n, seed=11, scale=0.1, shift=-1.0)
    g = torch.Generator().manual_seed(12)
    spots = torch.randperm(B * n, generator=g)[:50]
    pre.view(-1)[spots[:10]] = 2.0
    pre.view(-1)[spots[10:]] = 1.0
    assert _pruned(pre, k) is not None
    code = tb.select_batch(pre, k)
    _same(code, tb.select_batch_bisected(pre, pre, k))
    dense = code.to_dense(n).flatten()
    ties = spots[10:].sort().values
    assert (dense[spots[:10]] == 2.0).all()
    assert (dense[ties[:22]] == 1.0).all() and (dense[ties[22:]] == 0).all()


@pytest.mark.slow
def test_overflow_and_few_positives_fall_back_exactly(tri, monkeypatch):
    """Buffers too small for the listed sub-blocks or entries, and a batch with fewer than k*B positive maxima,
    make the pruned path decline; the public selection then returns the full path's answer."""
    B, n, k = 16, 512, 2
    pre = rand(B, n, seed=13, shift=-0.3)
    full = tb.select_batch_bisected(pre, pre, k)
    for caps in ((20, 10_000), (10_000, 20)):  # at least total = 32 of each are listed: 20 is too few
        monkeypatch.setattr(tb, "batch_caps", lambda total, c=caps: c)
        assert _pruned(pre, k) is None
        _same(tb.select_batch(pre, k), full)
    monkeypatch.undo()
    few = -rand(B, n, seed=14).abs()
    few[2, 3], few[5, 100] = 0.5, 0.25
    assert _pruned(few, k) is None
    code = tb.select_batch(few, k)
    assert int(code.l0().sum()) == 2 and sorted(code.values[code.values != 0].tolist()) == [0.25, 0.5]


def test_fused_batch_encode_matches_float64_and_the_twin(tri, monkeypatch):
    """BatchTopK on the fused matmul (forced for fp32) with b_pre: the twin's code, and the values and the
    gradients of W_enc, b_enc and b_pre against float64."""
    monkeypatch.setattr(encode_triton, "FUSED_FP32", True)
    B, d, n, k = 24, 20, 1024, 4
    x0, W0, b0, p0 = encoder_case(B, d, n)
    calls = spy(monkeypatch, encode_matmul_triton, "gemm_submax")
    out = {}
    for backend in ("torch", "triton"):
        monkeypatch.setattr(kernels, "BACKEND", backend)
        W, b, p = (t.clone().requires_grad_() for t in (W0, b0, p0))
        enc = kernels.encode(x0, W, b, "batch", k=k, b_pre=p)
        R = rand(*enc.code.values.shape, dtype=torch.float64, seed=44)
        (enc.code.values.double() * R).sum().backward()
        out[backend] = enc, R, {"W_enc": W.grad, "b_enc": b.grad, "b_pre": p.grad}
    assert calls, "the fused matmul did not run"
    (e_twin, _, g_twin), (enc, R, grads) = out["torch"], out["triton"]
    # the same kept entries (the two matmuls round differently: values within fp32 rounding)
    dense, dense_twin = enc.code.to_dense(n), e_twin.code.to_dense(n)
    assert torch.equal(dense != 0, dense_twin != 0) and rel(dense, dense_twin) < 1e-6
    Wd, bd, pd = (t.double().requires_grad_() for t in (W0, b0, p0))
    v = ((x0.double() - pd) @ Wd + bd).gather(1, enc.code.indices).relu()
    v = torch.where(enc.code.values != 0, v, torch.zeros_like(v))
    (v * R).sum().backward()
    assert rel(enc.code.values, v) < 1e-6
    for name, r in {"W_enc": Wd.grad, "b_enc": bd.grad, "b_pre": pd.grad}.items():
        assert rel(grads[name], r) < 1e-5, name
        assert rel(g_twin[name], r) < 1e-5, name


def test_values_carry_the_gradient_to_pre(tri):
    """`select` on a pre that needs a gradient: the pruned path's values come from pre (through autograd), so the
    gradient lands on the kept entries only, once each, with the ReLU's mask."""
    B, n, k = 16, 512, 2
    pre0 = rand(B, n, seed=21, shift=-0.3)
    assert _pruned(pre0, k) is not None
    pre = pre0.clone().requires_grad_()
    code = tb.select_batch(pre, k)
    code.values.sum().backward()
    assert torch.equal(pre.grad, (code.to_dense(n) > 0).float())
    _same(code, tb.select_batch_bisected(pre0, pre0, k))


def test_a_failing_first_use_falls_back_for_good_with_a_warning(tri, monkeypatch):
    """If the pruned path fails the first time it runs on a GPU (its kernels not compiling with the installed
    Triton, say), the first-use check warns once and the call returns the twin's exact code; later calls skip the
    Triton path. With the check off, the failure reaches the caller."""
    B, n, k = 16, 512, 2
    pre = rand(B, n, seed=31, shift=-0.3)
    twin = S.select_batch(pre, k)
    calls = []

    def broken(*a, **kw):
        calls.append(1)
        raise RuntimeError("no histogram here")

    monkeypatch.setattr(kernels, "BACKEND", "auto")
    monkeypatch.setattr(first_use, "on_cuda", lambda t: True)  # a stand-in GPU
    monkeypatch.setattr(first_use, "_VERDICTS", {})
    monkeypatch.setattr(tb, "select_from_submax", broken)
    with pytest.warns(RuntimeWarning, match="select 'batch' .*first-use check.*no histogram here") as seen:
        _same(kernels.select(pre, "batch", k=k), twin)
    assert len(seen) == 1
    _same(kernels.select(pre, "batch", k=k), twin)
    assert len(calls) == 1
    monkeypatch.setattr(first_use, "CHECK", "0")
    monkeypatch.setattr(first_use, "_VERDICTS", {})
    with pytest.raises(RuntimeError, match="no histogram here"):
        kernels.select(pre, "batch", k=k)
