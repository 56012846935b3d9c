"""Shared helpers for the kernel tests (Triton under TRITON_INTERPRET=1 against the torch twins and float64)."""

from __future__ import annotations

import torch

DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error in the Frobenius norm against a float64 reference."""
    ref = ref.double()
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def check_topk_valid(pre: torch.Tensor, code, k: int, by_abs: bool) -> None:
    """Every chosen index holds a value >= the row's k-th (ties allowed); indices distinct; ordered."""
    p = pre.double().abs() if by_abs else pre.double()
    kth = p.topk(k, dim=1).values[:, -1:]
    chosen = p.gather(1, code.indices)
    assert code.indices.shape == (pre.shape[0], k)
    assert (chosen >= kth).all()
    assert (code.indices.sort(1).values.diff(dim=1) > 0).all(), "an index chosen twice"
    assert (chosen.diff(dim=1) <= 0).all(), "not sorted descending"
    gathered = pre.gather(1, code.indices)
    expect = gathered if by_abs else gathered.relu()
    assert torch.equal(code.values, expect)


def encoder_case(B: int, d: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, W_enc, b_enc, b_pre) of a small encoder test, W_enc scaled so pre-activations are of order one."""
    return (rand(B, d, seed=40), rand(d, n, seed=41, scale=d**-0.5), rand(n, seed=42, scale=0.1), rand(d, seed=43, scale=0.3))


def spy(monkeypatch, module, name: str) -> list:
    """A list that grows by one at each call of module.<name>, which still runs."""
    calls: list = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls
