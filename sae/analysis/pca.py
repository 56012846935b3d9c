"""The honest baseline: a rank-r PCA fitted on the same training activations."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sae.analysis.evaluate import VarianceAccumulator


class PCA:
    """Top-`rank` principal subspace of training activations (float64 covariance, eigh)."""

    def __init__(self, train: torch.Tensor, rank: int) -> None:
        d = train.shape[1]
        if not 1 <= rank <= d:
            raise ValueError(f"PCA rank {rank} out of range: expected 1 <= rank <= d={d}")
        x = train.double()
        self.mean = x.mean(0)
        centred = x - self.mean
        cov = centred.T @ centred / x.shape[0]
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        self.components = vecs[:, -rank:]  # [d, rank]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        c = x.double() - self.mean
        return (c @ self.components) @ self.components.T + self.mean


def pca_fvu(train: torch.Tensor, held_out: Iterable[torch.Tensor], rank: int) -> float:
    """FVU on held-out batches of the rank-`rank` PCA fitted on `train`."""
    pca = PCA(train, rank)
    var, err = VarianceAccumulator(), 0.0
    for x in held_out:
        var.add(x)
        err += (x.double() - pca.reconstruct(x)).pow(2).sum().item()
    return err / var.total_variance
