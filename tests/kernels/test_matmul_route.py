"""The encoder matmul's two routes (kernels/encode_matmul_triton.py): fused Triton epilogue or cuBLAS + a maxima pass give
the same code and gradients; the route is timed once per shape and remembered; a bad route name is refused."""

from __future__ import annotations

import pytest
import torch
from helpers import rand, rel

import kernels
from kernels import encode_matmul_triton as tm
from kernels import encode_triton


def _encode(rule: str, k: int):
    B, d, n = 24, 20, 2048
    x = rand(B, d, seed=80)
    W = rand(d, n, seed=81, scale=d**-0.5).requires_grad_()
    b = rand(n, seed=82, scale=0.1).requires_grad_()
    p = rand(d, seed=83, scale=0.3).requires_grad_()
    enc = kernels.encode(x, W, b, rule, k=k, b_pre=p)
    R = rand(*enc.code.values.shape, seed=84)
    (enc.code.values * R).sum().backward()
    return enc.code, (W.grad, b.grad, p.grad)


@pytest.mark.parametrize("rule,k", [("row", 8), ("abs", 8), ("batch", 4)])
def test_both_routes_give_the_same_code_and_gradients(tri, monkeypatch, rule, k):
    monkeypatch.setattr(encode_triton, "FUSED_FP32", True)
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    calls = []
    for name, fn in tm.ROUTES.items():
        monkeypatch.setitem(tm.ROUTES, name, lambda *a, f=fn, name=name, **kw: calls.append(name) or f(*a, **kw))
    out = {}
    for route in ("fused", "cublas"):
        monkeypatch.setattr(tm, "ROUTE", route)
        out[route] = _encode(rule, k)
    assert calls == ["fused", "cublas"]
    (code_f, grads_f), (code_c, grads_c) = out["fused"], out["cublas"]
    assert torch.equal(code_f.indices, code_c.indices)
    assert rel(code_c.values, code_f.values) < 1e-6
    for gf, gc in zip(grads_f, grads_c):
        assert rel(gc, gf) < 1e-6


def test_auto_times_each_shape_once_and_keeps_the_faster(monkeypatch):
    monkeypatch.setattr(tm, "_CHOICE", {})
    timed = []
    fake = {"fused": 2.0, "cublas": 1.5}
    monkeypatch.setattr(tm, "_time_ms", lambda run: timed.append(run()) or fake[timed[-1]])
    runs = {"fused": lambda: "fused", "cublas": lambda: "cublas"}
    assert tm.choose(("shape", 1), runs) == "cublas"
    fake["cublas"] = 9.0  # a later timing would flip it: the first choice is kept, nothing is timed again
    assert tm.choose(("shape", 1), runs) == "cublas" and timed == ["fused", "cublas"]
    assert tm.choose(("shape", 2), runs) == "fused" and timed[2:] == ["fused", "cublas"]


def test_auto_off_cuda_takes_the_fused_route_untimed(tri, monkeypatch):
    monkeypatch.setattr(tm, "_time_ms", lambda run: pytest.fail("timed off CUDA"))
    x, W = rand(8, 20, seed=1), rand(20, 300, seed=2)
    pre, smax = tm.matmul_with_maxima(x, W, None, 0, 16)
    ref_pre, ref_smax = tm.gemm_submax(x, W, None, 0, 16)
    assert torch.equal(pre, ref_pre) and torch.equal(smax, ref_smax)


def test_an_unknown_route_is_refused(tri, monkeypatch):
    monkeypatch.setattr(tm, "ROUTE", "cuBLAS")
    with pytest.raises(ValueError, match=r"'cuBLAS'.*expected 'auto' or one of \['cublas', 'fused'\]"):
        tm.matmul_with_maxima(rand(4, 8), rand(8, 64), None, 0, 16)


def test_a_route_that_fails_is_dropped_with_a_warning(monkeypatch):
    """A route whose kernel fails (e.g. does not compile with the installed Triton) is reported and the other
    serves; when both fail, the error reaches the caller."""
    monkeypatch.setattr(tm, "_CHOICE", {})
    monkeypatch.setattr(tm, "_time_ms", lambda run: run())

    def broken():
        raise RuntimeError("PTX too new")

    with pytest.warns(RuntimeWarning, match=r"'fused' route .*RuntimeError: PTX too new"):
        assert tm.choose(("shape", 3), {"fused": broken, "cublas": lambda: 1.0}) == "cublas"
    with pytest.raises(RuntimeError, match="PTX too new"), pytest.warns(RuntimeWarning):
        tm.choose(("shape", 4), {"fused": broken, "cublas": broken})
