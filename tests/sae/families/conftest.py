"""Tiny dictionaries of every family on random data (d=32, n=128): fast and deterministic."""

import pytest
import torch

from sae.config import SAEConfig
from sae.families import get_family
from sae.model import SparseAutoencoder

D, N, K = 32, 128, 4


def make(family: str, seed: int = 0, **kw) -> SparseAutoencoder:
    """A dictionary of `family` with random biases so selections are not trivial."""
    kw.setdefault("k", K if get_family(family).uses_k and family != "topafa" else None)
    sae = SparseAutoencoder(SAEConfig(d_in=D, n_latents=N, family=family, **kw), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(N, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.1)
    return sae


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(256, D, generator=torch.Generator().manual_seed(7))
