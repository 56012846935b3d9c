"""Triton selection (interpreter) against the torch twins and a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, check_topk_valid, rand

import kernels
from kernels import select_triton as ST
from kernels import select_twin as S
from kernels.batch_select_triton import select_batch
from kernels.encode_twin import aux_select as aux_select_twin

SHAPES = [(1, 37, 1), (13, 37, 37), (29, 300, 7), (64, 1000, 32)]  # k = 1, k = n, odd widths, a batch of one


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["row", "abs"])
@pytest.mark.parametrize("B,n,k", SHAPES)
def test_topk_rows(tri, B, n, k, rule, dtype):
    pre = rand(B, n, dtype=dtype, seed=B + n + k)
    code = ST.select(pre, rule, k, None)
    check_topk_valid(pre, code, k, by_abs=rule == "abs")
    twin = (S.select_row if rule == "row" else S.select_abs)(pre, k)
    if dtype == torch.float32:  # continuous values: no ties, the exact set
        assert torch.equal(code.indices.sort(1).values, twin.indices.sort(1).values)
        assert torch.equal(code.values, twin.values)
    else:  # bf16 ties: same kept values, possibly other indices
        key = (lambda v: v.abs()) if rule == "abs" else (lambda v: v)
        assert torch.equal(key(code.values), key(twin.values))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["row", "abs"])
def test_topk_ties(tri, rule, dtype):
    pre = torch.randint(-3, 4, (17, 50), generator=torch.Generator().manual_seed(1)).to(dtype)
    for k in (1, 5, 50):
        code = ST.select(pre, rule, k, None)
        check_topk_valid(pre, code, k, by_abs=rule == "abs")


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_fewer_positive_than_k(tri, dtype):
    pre = -rand(9, 70, dtype=dtype, seed=3).abs()
    pre[:, 5] = 1.0  # one positive per row, k = 8
    pre[0, 10:12] = 2.0
    code = ST.select_row(pre, 8)
    check_topk_valid(pre, code, 8, by_abs=False)
    assert (code.l0() == torch.tensor([3] + [1] * 8)).all()
    twin = S.select_row(pre, 8)
    assert torch.equal(code.values, twin.values)


def test_public_select_dispatches_to_triton(tri, monkeypatch):
    pre = rand(20, 90, seed=4)
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    calls = []
    real = ST.bisect_rows  # n = 90 is too short to prune: the bisection answers
    monkeypatch.setattr(ST, "bisect_rows", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    code = kernels.select(pre, "row", k=6)
    assert calls and torch.equal(code.values, S.select_row(pre, 6).values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n,k", [(1, 37, 3), (23, 130, 5), (8, 30, 30)])
def test_batch(tri, B, n, k, dtype):
    pre = rand(B, n, dtype=dtype, seed=5 + B, shift=-0.5)
    code = select_batch(pre, k)
    twin = S.select_batch(pre, k)
    flat = pre.double().relu().flatten()
    total = min(k * B, int((flat > 0).sum()))
    assert int(code.l0().sum()) == total
    kth = flat.topk(k * B).values[-1]
    chosen = code.values.double()[code.values != 0]
    assert (chosen >= kth).all()
    dense = code.to_dense(n)
    assert torch.equal(dense.double().gather(1, code.indices)[code.values != 0], chosen)
    if dtype == torch.float32:
        assert torch.equal(dense, twin.to_dense(n))
    else:
        assert torch.equal(dense.flatten().sort().values, twin.to_dense(n).flatten().sort().values)
    v = torch.where(code.values != 0, code.values.float(), torch.full_like(code.values.float(), -math.inf))
    assert (v.diff(dim=1).nan_to_num(0.0) <= 0).all()


def test_batch_ties_and_few_positives(tri):
    pre = torch.randint(-2, 3, (11, 40), generator=torch.Generator().manual_seed(6)).float()
    code = select_batch(pre, 4)
    assert int(code.l0().sum()) == 44
    assert torch.equal(
        code.values[code.values != 0].sort().values,
        S.select_batch(pre, 4).values.flatten()[S.select_batch(pre, 4).values.flatten() != 0].sort().values,
    )
    few = -rand(6, 50, seed=7).abs()
    few[2, 3] = 0.5
    code = select_batch(few, 5)
    assert int(code.l0().sum()) == 1 and code.values.max() == 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_threshold(tri, dtype):
    pre = rand(19, 77, dtype=dtype, seed=8)
    for thr in (0.7, rand(77, seed=9).abs().to(dtype), 5.0):
        code = ST.select_threshold(pre, thr)
        twin = S.select_threshold(pre, thr)
        assert torch.equal(code.to_dense(77), twin.to_dense(77))
        assert torch.equal(code.l0(), twin.l0())


def test_threshold_bad_shape(tri):
    with pytest.raises(ValueError, match="threshold"):
        ST.select_threshold(rand(3, 10), torch.ones(9))


@pytest.mark.parametrize("rule", ["row", "abs"])
def test_column_mask(tri, rule):
    """The AuxK selection: top-k among masked-in (dead) columns only."""
    pre = rand(21, 90, seed=10)
    dead = rand(90, seed=11) > 0.5
    code = ST.select(pre, rule, 4, None, colmask=dead.to(torch.int8))
    twin = kernels.aux_select(pre, dead, 4, signed=rule == "abs")
    assert dead[code.indices].all()
    assert torch.equal(code.indices.sort(1).values, twin.indices.sort(1).values)
    assert torch.equal(code.values, twin.values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["row", "abs"])
@pytest.mark.parametrize("n", [4096, 300])  # the sub-block maxima path / the bisection (a row too short to prune)
def test_pruned_select(tri, n, rule, dtype):
    """The exact top-k on Gaussian, heavy-tailed and tied rows, on either path."""
    for k, pre in (
        (16, rand(8, n, dtype=dtype, seed=30)),
        (7, (-1 + 0.3 * rand(6, n, seed=31) + rand(6, n, seed=32).abs().pow(6)).to(dtype)),  # heavy tail
        (9, torch.randint(-3, 4, (5, n), generator=torch.Generator().manual_seed(33)).to(dtype)),  # ties
    ):
        code = ST.select(pre, rule, k, None)
        check_topk_valid(pre, code, k, by_abs=rule == "abs")


def test_pruned_column_mask(tri):
    """AuxK's selection over the dead columns (the bisection with a column mask) on a long row."""
    pre = rand(9, 3000, seed=34)
    dead = rand(3000, seed=35) > 1.0
    for rule in ("row", "abs"):
        code = ST.select(pre, rule, 5, None, colmask=dead.to(torch.int8))
        twin = kernels.aux_select(pre, dead, 5, signed=rule == "abs")
        assert dead[code.indices].all()
        assert torch.equal(code.indices.sort(1).values, twin.indices.sort(1).values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("n_dead", [0, 3, 40])
def test_aux_select_is_the_twins_at_a_fixed_width(tri, n_dead, signed, dtype):
    """Triton's and the twin's AuxK code have the same width, min(k_aux, n), whatever the dead count: the dead
    latents' top entries first (by magnitude when signed), then zero-valued padding at index 0."""
    B, n, k_aux = 11, 64, 8
    pre = rand(B, n, dtype=dtype, seed=36 + n_dead)
    dead = torch.zeros(n, dtype=torch.bool)
    dead[torch.randperm(n, generator=torch.Generator().manual_seed(37))[:n_dead]] = True
    tri_code = ST.aux_select(pre, dead, k_aux, signed)
    twin = aux_select_twin(pre, dead, k_aux, signed)
    real = min(n_dead, k_aux)
    for code in (tri_code, twin):
        assert code.values.shape == code.indices.shape == (B, k_aux)
        assert dead[code.indices[:, :real]].all()
        assert (code.values[:, real:] == 0).all() and (code.indices[:, real:] == 0).all()
    if dtype == torch.float32:  # no ties: the same code
        assert torch.equal(tri_code.indices, twin.indices) and torch.equal(tri_code.values, twin.values)
    assert kernels.aux_select(pre, dead, 0) is None
