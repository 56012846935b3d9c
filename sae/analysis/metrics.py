"""Reconstruction metrics over a stream of held-out activations (FVU, L0, dead latents)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sae.model import SparseAutoencoder


class VarianceAccumulator:
    """Streams sum|x|^2 and sum x so the total variance of many batches is exact (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_sq = 0.0
        self.sum: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.n += x.shape[0]
        self.sum_sq += x.pow(2).sum().item()
        s = x.sum(0)
        self.sum = s if self.sum is None else self.sum + s

    @property
    def total_variance(self) -> float:
        """sum over tokens of |x - mean|^2."""
        assert self.sum is not None
        return self.sum_sq - self.sum.pow(2).sum().item() / self.n


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """FVU (1 - explained variance, Gao et al.), mean L0 and the fraction of latents silent on this data."""
    was_training = sae.training
    sae.eval()
    var = VarianceAccumulator()
    err, l0_sum = 0.0, 0.0
    fired = torch.zeros(sae.cfg.n_latents, dtype=torch.bool, device=sae.W_enc.device)
    for x in batches:
        x = x.to(device=sae.W_enc.device)
        out = sae(x)
        var.add(x)
        err += (x.double() - out.x_hat.double()).pow(2).sum().item()
        active = out.code.values != 0
        l0_sum += active.sum().item()
        fired[out.code.indices[active]] = True
    sae.train(was_training)
    if var.n == 0:
        raise ValueError("evaluation data is empty")
    return {
        "fvu": err / var.total_variance,
        "l0": l0_sum / var.n,
        "eval_dead_fraction": 1.0 - fired.float().mean().item(),
        "mse": err / (var.n * sae.cfg.d_in),
        "eval_tokens": var.n,
    }
