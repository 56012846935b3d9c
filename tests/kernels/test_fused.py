"""The fused paths under the interpreter: the encoder matmul with sub-block maxima in its epilogue, the row
selection read off those maxima (and its fallback), b_pre's gradient folded into W_enc's, and the decode fused
with the squared error; each against float64 and the torch twin."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, TOL, check_topk_valid, encoder_case, rand, rel, spy

import kernels
from kernels import encode_matmul_triton, encode_triton
from kernels import submax_select_triton as maxima
from kernels.blocks import submax_width, tile_select_caps, tile_select_fits


def _submax_ref(pre: torch.Tensor, sub: int, mode: int) -> torch.Tensor:
    score = pre.float().abs() if mode else pre.float()
    B, n = score.shape
    T = -(-n // sub)
    pad = torch.full((B, T * sub - n), float("-inf"))
    return torch.cat([score, pad], 1).view(B, T, sub).amax(2)


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("layout", ["row-major", "column-major"])
@pytest.mark.parametrize("B,d,n,sub,bias", [(70, 40, 300, 16, True), (9, 33, 520, 32, False)])
def test_gemm_submax_matches_float64(tri, B, d, n, sub, bias, layout, mode):
    """pre = x @ W (+ b) within fp32 rounding, and the epilogue's maxima exactly those of the pre it wrote
    (n not a multiple of the column tile; W in either layout)."""
    x = rand(B, d, seed=1)
    W = rand(n, d, seed=2).t() if layout == "column-major" else rand(d, n, seed=2)
    b = rand(n, seed=3) if bias else None
    pre, smax = encode_matmul_triton.gemm_submax(x, W, b, mode, sub)
    ref = x.double() @ W.double() + (b.double() if bias else 0)
    assert rel(pre, ref) < 1e-6
    assert torch.equal(smax.float(), _submax_ref(pre, sub, mode))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("B,n,k", [(8, 2048, 8), (5, 4096, 16), (3, 3000, 5)])
def test_select_from_submax_is_the_exact_topk(tri, B, n, k, mode, dtype):
    pre = rand(B, n, dtype=dtype, seed=n + k)
    sub = submax_width(n, k)
    smax = maxima.submax(pre, mode, sub)
    assert torch.equal(smax.float(), _submax_ref(pre, sub, mode))
    idx, val, flag = maxima.select_from_submax(pre, smax, k, mode, sub)
    assert (flag == 0).all()  # random rows never overflow the buffers
    code = kernels.SparseCode(val.relu() if mode == 0 else val, idx)
    check_topk_valid(pre, code, k, by_abs=mode == 1)
    if dtype == torch.float32:  # no ties: the exact set, in torch.topk's order
        score = pre.abs() if mode else pre
        assert torch.equal(idx, score.topk(k, dim=1).indices)


@pytest.mark.parametrize("mode", [0, 1])
def test_rows_that_overflow_the_buffers_fall_back_exactly(tri, mode):
    """Row 0: every sub-block maximum ties (more than 2k candidate sub-blocks); row 1: the top entries bunched in
    one sub-block's neighbours so that more than 4k entries pass t; row 2: an ordinary row. The kernel flags
    rows 0 and 1, and the public selection still returns the exact top k of every row."""
    n, k = 2048, 8
    sub = submax_width(n, k)
    _, tcap, cap = tile_select_caps(k)
    pre = rand(3, n, seed=5, scale=0.1)
    pre[0] = 1.0  # all equal: every sub-block's maximum is the k-th
    pre[1, : (cap // sub + 2) * sub] = 5.0 + torch.arange((cap // sub + 2) * sub) * 1e-3  # > C entries at >= t
    if mode == 1:
        pre[1, :4] *= -1  # the magnitudes decide
    smax = maxima.submax(pre, mode, sub)
    _, _, flag = maxima.select_from_submax(pre, smax, k, mode, sub)
    assert flag.tolist() == [1, 1, 0]
    idx, raw = maxima.topk_from_submax(pre, k, mode)
    code = kernels.SparseCode(raw.relu() if mode == 0 else raw, idx)
    check_topk_valid(pre, code, k, by_abs=mode == 1)
    assert torch.equal(idx[0], torch.arange(k))  # ties go to the lowest columns, as in torch's order
    assert torch.equal(raw, pre.gather(1, idx))


def test_public_select_takes_the_tile_path_where_it_fits(tri, monkeypatch):
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    calls = []
    real = maxima.select_from_submax
    monkeypatch.setattr(maxima, "select_from_submax", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    for n, k, expect in ((2048, 8, True), (300, 8, False)):
        calls.clear()
        pre = rand(6, n, seed=n)
        code = kernels.select(pre, "row", k=k)
        assert bool(calls) == expect == tile_select_fits(n, k)
        assert torch.equal(code.indices, pre.topk(k, dim=1).indices)


def _encode_grads(x0, W0, b0, p0, rule, k, R, want_x):
    x = x0.clone().requires_grad_(want_x)
    W, b, p = (t.clone().requires_grad_() for t in (W0, b0, p0))
    enc = kernels.encode(x, W, b, rule, k=k, b_pre=p)
    (enc.code.values.double() * R).sum().backward()
    return enc, {"x": x.grad, "W_enc": W.grad, "b_enc": b.grad, "b_pre": p.grad}


@pytest.mark.parametrize("want_x", [False, True])
@pytest.mark.parametrize("rule", ["row", "abs"])
def test_fused_encode_with_b_pre_matches_float64_and_the_twin(tri, monkeypatch, rule, want_x):
    """The Triton encoder on the fused path (forced for fp32) and the twin, with b_pre: values and the gradients
    of W_enc, b_enc and b_pre (as -W_enc @ b_enc's gradient when x needs none, else through x's) in float64."""
    monkeypatch.setattr(encode_triton, "FUSED_FP32", True)
    B, d, n, k = 24, 20, 2048, 8
    assert tile_select_fits(n, k)
    x0, W0, b0, p0 = encoder_case(B, d, n)
    R = rand(B, k, dtype=torch.float64, seed=44)
    calls = spy(monkeypatch, encode_matmul_triton, "gemm_submax")
    out = {}
    for backend in ("torch", "triton"):
        monkeypatch.setattr(kernels, "BACKEND", backend)
        out[backend] = _encode_grads(x0, W0, b0, p0, rule, k, R, want_x)
    assert calls, "the fused matmul did not run"
    (e_twin, g_twin), (enc, grads) = out["torch"], out["triton"]
    assert torch.equal(enc.code.indices, e_twin.code.indices)
    xd, Wd, bd, pd = (t.double().requires_grad_() for t in (x0, W0, b0, p0))
    pre = (xd - pd) @ Wd + bd
    v = pre.gather(1, enc.code.indices)
    v = v.relu() if rule == "row" else v
    (v * R).sum().backward()
    ref = {"x": xd.grad if want_x else None, "W_enc": Wd.grad, "b_enc": bd.grad, "b_pre": pd.grad}
    assert rel(enc.code.values, v) < 1e-6
    for name, r in ref.items():
        if r is None:
            assert grads[name] is None and g_twin[name] is None
            continue
        assert rel(grads[name], r) < 1e-5, name
        assert rel(g_twin[name], r) < 1e-5, name


def _decode_case(dtype, B=19, n=90, w=6, d=40, seed=50):
    idx = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(seed + i))[:w] for i in range(B)])
    vals = rand(B, w, dtype=dtype, seed=seed).relu()
    vals[3, 4:] = 0  # padding
    W = rand(n, d, dtype=dtype, seed=seed + 1, scale=d**-0.5)
    b = rand(d, dtype=dtype, seed=seed + 2, scale=0.1)
    x = rand(B, d, dtype=dtype, seed=seed + 3)
    return vals, idx, W, b, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra_use,chunked", [(False, False), (True, False), (False, True)])
def test_decode_sse_matches_float64(tri, monkeypatch, dtype, extra_use, chunked):
    """x_hat, the summed squared error and every gradient (values, W_dec, b_dec, target); with extra_use the
    loss also reads x_hat directly, so the backward gets an x_hat gradient beside the sse's. chunked: an L2
    budget small enough to cut d = 150 into column chunks of 64, 64 and 22 (each chunk's part of the values'
    gradient summed; 19 tokens x 6 gather each of the 40 rows 2.9 times on average)."""
    from kernels import decode_triton

    if chunked:
        monkeypatch.setattr(decode_triton, "L2_BUDGET", 40 * 64 * 4)
        assert decode_triton.decode_chunk(40, 150, 4, 64, 19 * 6, decode_triton.L2_BUDGET) == 64
        assert decode_triton.decode_chunk(40, 150, 4, 64, 40, decode_triton.L2_BUDGET) == 150  # rows read once
    vals0, idx, W0, b0, x0 = _decode_case(dtype, n=40, d=150) if chunked else _decode_case(dtype)
    R = rand(*x0.shape, dtype=torch.float64, seed=60)
    out = {}
    for backend in ("torch", "triton"):
        monkeypatch.setattr(kernels, "BACKEND", backend)
        v, W, b, x = (t.clone().requires_grad_() for t in (vals0, W0, b0, x0))
        x_hat, sse = kernels.decode_sse(kernels.SparseCode(v, idx), W, b, x)
        loss = 0.5 * sse + ((x_hat.double() * R).sum() if extra_use else 0)
        loss.backward()
        out[backend] = (x_hat, sse, v.grad, W.grad, b.grad, x.grad)
    vd, Wd, bd, xd = (t.double().requires_grad_() for t in (vals0, W0, b0, x0))
    xh = (vd[:, :, None] * Wd[idx]).sum(1) + bd
    sse = (xh - xd).pow(2).sum()
    (0.5 * sse + ((xh * R).sum() if extra_use else 0)).backward()
    ref = (xh, sse, vd.grad, Wd.grad, bd.grad, xd.grad)
    for backend, got in out.items():
        assert got[1].dtype == torch.float32
        for ours, r, name in zip(got, ref, ("x_hat", "sse", "values", "W_dec", "b_dec", "target")):
            assert rel(ours, r) <= TOL[dtype], (backend, name)
    assert (out["triton"][3][~torch.isin(torch.arange(W0.shape[0]), idx)] == 0).all()  # rows never fired: zero


def test_model_forward_uses_the_fused_decode(tri, monkeypatch):
    """A dictionary's training loss and gradients through the Triton path (fused decode + sse, b_pre in the
    encoder) equal the twin's."""
    from sae import SAEConfig, SparseAutoencoder

    x = rand(32, 24, seed=70)
    grads = {}
    for backend in ("torch", "triton"):
        monkeypatch.setattr(kernels, "BACKEND", backend)
        sae = SparseAutoencoder(SAEConfig(d_in=24, n_latents=96, k=6, normalize="none"), seed=0)
        with torch.no_grad():
            sae.b_dec.copy_(rand(24, seed=71, scale=0.2))
        out = sae(x, dead=torch.arange(96) % 7 == 0)
        out.loss.backward()
        grads[backend] = (out.loss.detach(), *(p.grad for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)))
    for a, b in zip(grads["torch"], grads["triton"]):
        assert rel(b, a) < 1e-5


def test_sorted_pairs_are_shared_until_the_indices_change(tri):
    from kernels.weight_grad_triton import sorted_pairs

    idx = torch.randint(0, 50, (8, 4))
    a = sorted_pairs(idx, 50)
    assert sorted_pairs(idx, 50) is a  # the decoder's and the encoder's backward share one sort
    assert sorted_pairs(idx.clone(), 50) is not a
    idx[0, 0] = (idx[0, 0] + 1) % 50  # an in-place change: the version counter moves
    assert sorted_pairs(idx, 50) is not a
