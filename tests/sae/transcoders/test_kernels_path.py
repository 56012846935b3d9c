"""A transcoder's and a CLT's training forward through the Triton kernels (under the interpreter) equals the torch
twins': the skip term reaches the fused decode as its target, a CLT's decoders as [n, (L - l) d_out] views."""

import os

import pytest
import torch

import kernels
from sae.families import TrainStep

from .synthetic import D_IN, D_OUT, clt, transcoder


def _step(make, x, y, dead):
    sae = make()
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name.startswith("b_") or name == "W_skip":
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    out = sae(x, target=y, dead=dead, step=TrainStep(k_aux=8))
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize(
    "make, layers",
    [
        pytest.param(lambda: transcoder(skip=True), 0, id="skip-transcoder"),
        pytest.param(lambda: clt(layers=2, skip=True), 2, id="clt"),
    ],
)
def test_triton_path_equals_the_twins(monkeypatch, make, layers):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    g = torch.Generator().manual_seed(0)
    shape = [layers] if layers else []
    x, y = torch.randn(64, *shape, D_IN, generator=g), torch.randn(64, *shape, D_OUT, generator=g)
    dead = torch.zeros(64 * max(layers, 1), dtype=torch.bool)
    dead[::4] = True
    monkeypatch.setattr(kernels, "BACKEND", "torch")
    want, want_grads = _step(make, x, y, dead)
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    got, got_grads = _step(make, x, y, dead)
    for name in ("loss", "fvu", "aux_loss"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.x_hat, want.x_hat, rtol=1e-5, atol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
