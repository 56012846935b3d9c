"""The first-use check (kernels/first_use.py): on a stand-in GPU (what counts as CUDA monkeypatched, Triton in its
interpreter), a Triton kernel that returns a wrong code, wrong gradients or raises is caught on its first use,
warned about once, and the twin serves that path from then on; correct kernels raise no warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import encoder_case, rand

import kernels
from kernels import decode_triton, encode_triton, first_use, select_triton
from kernels.decode_twin import decode_twin
from kernels.select_twin import select_row


@pytest.fixture
def gpu(tri, monkeypatch):
    """The dispatch's "auto" and the check see a GPU; no verdict recorded yet."""
    monkeypatch.setattr(kernels, "BACKEND", "auto")
    monkeypatch.setattr(first_use, "CHECK", "auto")
    monkeypatch.setattr(first_use, "on_cuda", lambda t: True)
    monkeypatch.setattr(first_use, "_VERDICTS", {})


def _counting(monkeypatch, module, name, wrong):
    """Replace module.<name> by `wrong(real, *args)`, counting its calls."""
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(1) or wrong(real, *a, **kw))
    return calls


def _shifted(real, pre, *a, **kw):
    """The real top-k, with each row's last index moved to the row's least entry."""
    idx, raw = real(pre, *a, **kw)
    idx = idx.clone()
    idx[:, -1] = pre.argmin(1)
    return idx, raw


def test_a_wrong_code_falls_back_to_the_twin_with_one_warning(gpu, monkeypatch):
    pre = rand(12, 2048, seed=1)
    calls = _counting(monkeypatch, select_triton, "topk_from_submax", _shifted)
    with pytest.warns(RuntimeWarning) as seen:
        code = kernels.select(pre, "row", k=8)
    assert len(seen) == 1
    message = str(seen[0].message)
    assert "select 'row' (sub-block maxima, n=2048, k=8, torch.float32)" in message
    assert "failed its first-use check" in message and "only Triton keeps latent" in message
    twin = select_row(pre, 8)
    assert torch.equal(code.indices, twin.indices) and torch.equal(code.values, twin.values)
    assert len(calls) == 1  # the check's slice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = kernels.select(pre, "row", k=8)  # the same path and shape: the twin, no second warning
    assert torch.equal(again.indices, twin.indices) and len(calls) == 1
    (diff,) = first_use.fallbacks().values()
    assert diff in message


def test_an_exception_falls_back_with_one_warning(gpu, monkeypatch):
    code = kernels.SparseCode(rand(10, 4, seed=2).abs(), torch.randint(0, 50, (10, 4)))
    W = rand(50, 16, seed=3)

    def broken(real, *a, **kw):
        raise RuntimeError("ptxas: unsupported .version")

    calls = _counting(monkeypatch, decode_triton, "gather_sum", broken)
    with pytest.warns(RuntimeWarning, match=r"decode \(n=50, d=16, width 4.*raised RuntimeError: ptxas") as seen:
        out = kernels.decode(code, W)
    assert len(seen) == 1 and len(calls) == 1
    assert torch.equal(out, decode_twin(code, W))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.decode(code, W)
    assert len(calls) == 1


def test_a_wrong_gradient_falls_back(gpu, monkeypatch):
    """decode's forward is right but its values' gradient is twice what it should be: caught on first use."""
    code = kernels.SparseCode(rand(10, 4, seed=4).requires_grad_(), torch.randint(0, 50, (10, 4)))
    W = rand(50, 16, seed=5).requires_grad_()
    _counting(monkeypatch, decode_triton, "gather_dot", lambda real, *a, **kw: 2 * real(*a, **kw))
    with pytest.warns(RuntimeWarning, match="the values' gradient differs") as seen:
        out = kernels.decode(code, W)
    assert len(seen) == 1
    out.sum().backward()
    torch.testing.assert_close(code.values.grad, W[code.indices].sum(-1).detach(), rtol=1e-5, atol=1e-5)  # the twin's


def test_a_wrong_encode_falls_back_with_its_gradients(gpu, monkeypatch):
    """The fused encoder's selection returns a wrong code: the whole encode key takes the twin, gradients too."""
    monkeypatch.setattr(encode_triton, "FUSED_FP32", True)
    x, W0, b0, p0 = encoder_case(24, 20, 2048)
    _counting(monkeypatch, encode_triton, "topk_from_submax", _shifted)
    W, b, p = (t.clone().requires_grad_() for t in (W0, b0, p0))
    with pytest.warns(RuntimeWarning, match=r"encode 'row' \(fused matmul.*first-use check") as seen:
        enc = kernels.encode(x, W, b, "row", k=8, b_pre=p)
    assert len(seen) == 1
    monkeypatch.setattr(kernels, "BACKEND", "torch")
    Wt, bt, pt = (t.clone().requires_grad_() for t in (W0, b0, p0))
    twin = kernels.encode(x, Wt, bt, "row", k=8, b_pre=pt)
    assert torch.equal(enc.code.indices, twin.code.indices)
    enc.code.values.sum().backward()
    twin.code.values.sum().backward()
    for ours, ref in ((W, Wt), (b, bt), (p, pt)):
        assert torch.equal(ours.grad, ref.grad)


@pytest.mark.slow  # every op on its Triton path in the interpreter: about 18 s a dtype
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_correct_kernels_raise_no_warning(gpu, monkeypatch, dtype):
    """Every op on its Triton path passes its first-use check: codes, values and gradients (the fused encoder
    with AuxK and b_pre, the fused decode, the plain decode, and each selection rule)."""
    monkeypatch.setattr(encode_triton, "FUSED_FP32", True)
    B, d, n, k = 24, 20, 2048, 8
    x, W0, b0, p0 = (t.to(dtype) for t in encoder_case(B, d, n))
    dead = torch.arange(n) % 5 == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rule in ("row", "abs", "batch"):
            W, b, p = (t.clone().requires_grad_() for t in (W0, b0, p0))
            enc = kernels.encode(x, W, b, rule, k=k, dead=dead, k_aux=16, b_pre=p)
            W_dec = W0.t().contiguous().requires_grad_()
            x_hat, sse = kernels.decode_sse(enc.code, W_dec, p, x)
            e_hat = kernels.decode(enc.aux, W_dec)
            (sse + e_hat.float().pow(2).sum()).backward()
        pre = rand(B, n, dtype=dtype, seed=6)
        for rule in ("row", "abs", "batch", "stat"):
            kernels.select(pre, rule, k=k)
        kernels.select(pre, "threshold", threshold=0.5)
        kernels.select(pre[:, :300], "row", k=k)  # the bisection
        kernels.aux_select(pre, dead, 16, signed=True)
    keys = {key[0] for key in first_use._VERDICTS}
    assert keys == {"encode", "decode_sse", "decode", "select", "aux_select"}
    assert first_use.fallbacks() == {}


def test_off_the_gpu_or_switched_off_nothing_is_checked(tri, monkeypatch):
    """The check runs only where the Triton path runs for real (CUDA) or when asked: on the interpreter by default,
    or with SAE_KERNELS_CHECK=0, a wrong kernel's code goes through (the tests check the kernels themselves)."""
    pre = rand(12, 2048, seed=7)
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    monkeypatch.setattr(first_use, "_VERDICTS", {})
    _counting(monkeypatch, select_triton, "topk_from_submax", _shifted)
    for check, cuda in (("auto", False), ("0", True)):
        monkeypatch.setattr(first_use, "CHECK", check)
        monkeypatch.setattr(first_use, "on_cuda", lambda t, c=cuda: c)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            code = kernels.select(pre, "row", k=8)
        assert not torch.equal(code.indices, select_row(pre, 8).indices)
    assert first_use._VERDICTS == {}
    monkeypatch.setattr(first_use, "CHECK", "yes")
    with pytest.raises(ValueError, match=r"SAE_KERNELS_CHECK='yes': expected one of \('auto', '0', '1'\)"):
        kernels.select(pre, "row", k=8)
