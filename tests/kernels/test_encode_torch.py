"""The torch twin of kernels.encode: its sparse backward against autograd of the dense pre-activations."""

from __future__ import annotations

import pytest
import torch
from helpers import rand, rel

import kernels
from kernels.select_twin import select_by_rule

RULES = ["row", "abs", "batch", "threshold", "stat"]


def _leaves(B, d, n, dtype, seed):
    x = rand(B, d, dtype=dtype, seed=seed).requires_grad_()
    W = rand(d, n, dtype=dtype, seed=seed + 1, scale=d**-0.5).requires_grad_()
    b = rand(n, dtype=dtype, seed=seed + 2, scale=0.1).requires_grad_()
    return x, W, b


def _loss(enc, R, Ra):
    loss = (enc.code.values * R[:, : enc.code.values.shape[1]]).sum()
    if enc.aux is not None:
        loss = loss + (enc.aux.values * Ra[:, : enc.aux.values.shape[1]]).sum()
    return loss


def _dense_reference(x, W, b, rule, k, thr, dead, k_aux):
    """The former CPU path: autograd through the dense [B, n] pre-activations."""
    pre = x @ W + (b if b is not None else 0)
    code = select_by_rule(pre, rule, k, thr)
    aux = kernels.aux_select(pre, dead, k_aux, signed=rule == "abs") if dead is not None else None
    return kernels.Encoding(code, aux)


CASES = [(rule, torch.float64, True, True) for rule in RULES] + [
    ("row", torch.float64, False, True),
    ("abs", torch.float64, True, False),
    ("row", torch.float32, True, True),
    ("abs", torch.float32, False, True),
]


@pytest.mark.parametrize("rule,dtype,with_b,with_dead", CASES)
def test_sparse_backward_equals_dense(rule, dtype, with_b, with_dead):
    B, d, n, k = 40, 24, 150, 8
    thr = 0.3 if rule == "threshold" else None
    # about half the latents dead, so the main code and the AuxK code often pick the same latent
    dead = rand(n, seed=5) > 0.0 if with_dead else None
    R, Ra = rand(B, n, dtype=dtype, seed=7), rand(B, n, dtype=dtype, seed=8)
    grads = []
    for fn in (kernels.encode, _dense_reference):
        x, W, b = _leaves(B, d, n, dtype, seed=3)
        b = b if with_b else None
        enc = fn(x, W, b, rule, k if rule != "threshold" else None, thr, dead, 6)
        _loss(enc, R, Ra).backward()
        grads.append((enc, x.grad, W.grad, b.grad if with_b else None))
    (enc, gx, gW, gb), (ref, rx, rW, rb) = grads
    assert torch.equal(enc.code.indices, ref.code.indices)
    assert torch.equal(enc.code.values.detach(), ref.code.values.detach())
    assert (enc.aux is None) == (not with_dead)
    if with_dead:
        assert torch.equal(enc.aux.indices, ref.aux.indices)
        overlap = (enc.code.indices[:, :, None] == enc.aux.indices[:, None, :]).any()
        assert overlap, "the test should cover a latent picked by both codes"
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert gx.dtype == dtype and gW.dtype == dtype
    for ours, theirs in ((gx, rx), (gW, rW), (gb, rb)):
        if theirs is None:
            assert ours is None
        else:
            assert rel(ours, theirs) <= tol


def test_backward_runs_no_matmul():
    """The point of the twin: no dense [B, n] x [n, d] product in the backward, only gathers and index-adds."""
    x, W, b = _leaves(64, 32, 512, torch.float32, seed=1)
    enc = kernels.encode(x, W, b, "row", k=8, dead=torch.arange(512) % 3 == 0, k_aux=16)
    loss = enc.code.values.sum() + enc.aux.values.sum()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward()
    ops = {e.key for e in prof.key_averages()}
    assert not ops & {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}, sorted(ops)
    assert "aten::index_add_" in ops
    assert W.grad.shape == W.shape and (W.grad != 0).any()


def test_no_grad_inputs_give_detached_codes():
    x, W, b = (t.detach() for t in _leaves(8, 6, 20, torch.float32, seed=2))
    enc = kernels.encode(x, W, b, "row", k=3)
    assert not enc.code.values.requires_grad
    assert torch.equal(enc.code.values, (x @ W + b).topk(3).values.relu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scatter_rows_is_the_index_add_of_rank_one_rows(dtype):
    """Both ways of forming grad W_enc (embedding_bag over sorted entries; chunked index-add) against a loop."""
    from kernels.encode_twin import _scatter_rows

    B, m, d, n = 30, 5, 7, 40
    idx = torch.randint(0, n, (B, m), generator=torch.Generator().manual_seed(0))
    grad, x = rand(B, m, seed=1), rand(B, d, seed=2)
    ref = torch.zeros(n, d, dtype=torch.float64)
    for b in range(B):
        for j in range(m):
            ref[idx[b, j]] += grad[b, j].double() * x[b].double()
    out = _scatter_rows(idx, grad.to(dtype), x.to(dtype), n)
    assert out.dtype == dtype and rel(out, ref) <= (1e-6 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("shape", [(1537, 24), (24, 1537), (512, 8), (3, 5)])
def test_blocked_transpose_is_the_transpose(shape):
    from kernels.encode_twin import _transposed

    t = torch.randn(*shape, dtype=torch.float64)
    out = _transposed(t)
    assert out.is_contiguous() and torch.equal(out, t.t())


def test_encoder_gradient_arrives_in_the_encoder_layout():
    """W_enc's gradient comes back contiguous like W_enc, so accumulating it needs no further copy."""
    x = torch.randn(64, 16, requires_grad=True)
    W = torch.randn(16, 1100, requires_grad=True)
    enc = kernels.encode(x, W, None, rule="row", k=4)
    enc.code.values.sum().backward()
    assert W.grad.is_contiguous()
    dense = (x @ W).detach()
    ref = torch.zeros_like(dense).scatter(1, enc.code.indices, (enc.code.values != 0).to(dense.dtype))
    torch.testing.assert_close(W.grad, x.detach().t() @ ref)
