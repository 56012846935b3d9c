"""Data-dependent initialisation: input scale and b_dec at the geometric median (Gao et al.)."""

from __future__ import annotations

import math

import torch

from sae.model import SparseAutoencoder
from sae.normalize import normalize


def geometric_median(x: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm from the mean: reweight points by 1 / |x - m| until m moves < tol."""
    x = x.double()
    m = x.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() < tol * max(m.norm().item(), 1.0):
            return new
        m = new
    return m


@torch.no_grad()
def init_from_sample(sae: SparseAutoencoder, sample: torch.Tensor) -> None:
    """Set the dataset input scale (E|s x|^2 = d_in) and b_dec from a sample of raw activations."""
    sample = sample.to(device=sae.W_dec.device, dtype=torch.float64)
    if sae.cfg.normalize == "dataset_scalar":
        mean_sq = sample.pow(2).sum(1).mean().item()
        if not math.isfinite(mean_sq) or mean_sq <= 0:
            raise ValueError(f"cannot set the input scale: mean squared norm of the sample is {mean_sq}")
        sae.input_scale.fill_(math.sqrt(sae.cfg.d_in / mean_sq))
    x_n, _ = normalize(sample, sae.cfg.normalize, sae.input_scale.double())
    sae.b_dec.copy_(geometric_median(x_n).to(sae.b_dec.dtype))
