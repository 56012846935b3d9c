"""A training step never reads a device value on the host (so it can be captured in a CUDA graph): run one
on the Triton path (the interpreter) with every host read of a tensor made to fail."""

from __future__ import annotations

import os

import pytest
import torch

import kernels
from sae import SAEConfig, SparseAutoencoder
from sae.config import TrainConfig
from sae.train import Trainer

HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


# BatchTopK reads one value per step: the width of its code (rows hold varying counts); a skip transcoder and a CLT
# read nothing either
@pytest.mark.parametrize(
    "family,kind,reads",
    [
        pytest.param("topk", {}, 0, id="topk"),
        pytest.param("batchtopk", {}, 1, id="batchtopk"),
        pytest.param("topk", {"d_out": 12, "skip": True}, 0, id="skip-transcoder"),
        pytest.param("topk", {"d_out": 12, "layers": 2}, 0, id="clt", marks=pytest.mark.slow),
    ],
)
def test_train_step_reads_nothing_back(monkeypatch, family, kind, reads):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    monkeypatch.setattr(kernels, "BACKEND", "triton")
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=64, k=4, family=family, **kind), seed=0)
    cfg = TrainConfig(tokens=64 * 4, batch_size=64, dead_window_tokens=64, init_tokens=64, log_every=4)
    trainer = Trainer(sae, cfg)
    g = torch.Generator().manual_seed(0)
    layers = [kind["layers"]] if "layers" in kind else []
    x = torch.randn(64, *layers, 16, generator=g)
    if "d_out" in kind:
        x = (x, torch.randn(64, *layers, kind["d_out"], generator=g))
    trainer.train_step(x)  # the first step may set things up; then two steps with host reads forbidden
    trainer.since_fired[:10] = 10_000  # some dead latents: AuxK runs

    # Adam keeps its step counter as a host tensor (also on CUDA, unless capturable): reading it is no sync
    allowed = {id(s["step"]) for s in trainer.opt.state.values()}
    seen = []

    def forbid(name):
        real = getattr(torch.Tensor, name)

        def read(self, *a, **kw):
            if id(self) not in allowed:
                seen.append(name)
                if len(seen) > 2 * reads:
                    raise AssertionError(f"Tensor.{name} inside the training step: a host sync on a GPU")
            return real(self, *a, **kw)

        return read

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, forbid(name))
        for _ in range(2):
            stats = trainer.train_step(x)
    assert len(seen) == 2 * reads, seen
    assert all(torch.isfinite(torch.as_tensor(v)) for v in stats.values())
    assert trainer.step == 3
