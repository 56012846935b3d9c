"""Tiny dictionaries and synthetic activations with sparse structure (never downloaded)."""

import pytest
import torch

from sae.config import SAEConfig
from sae.model import SparseAutoencoder


def sparse_data(n: int = 8192, d: int = 32, n_feat: int = 96, active: int = 4, seed: int = 0) -> torch.Tensor:
    """Activations that really are sparse sums of `active` of `n_feat` unit directions, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_feat, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_feat, generator=g).topk(active, dim=1).indices
    coef = torch.rand(n, active, generator=g) * 3 + 0.5
    return (coef[..., None] * feats[idx]).sum(1) + 2.0


@pytest.fixture
def acts() -> torch.Tensor:
    return sparse_data()


@pytest.fixture
def tiny_sae() -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(d_in=32, n_latents=128, k=4), seed=0)
