"""The one representation of a sparse code shared by every family and kernel."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SparseCode(NamedTuple):
    """Fixed-width sparse code: row b holds `values[b, j]` at latent `indices[b, j]`.

    Rows that hold fewer than the width are padded with value 0 (at any valid index),
    so a gather-sum over the width is always correct.
    """

    values: torch.Tensor  # [B, w]
    indices: torch.Tensor  # [B, w] int64

    def to_dense(self, n_latents: int) -> torch.Tensor:
        """Scatter into a dense [B, n] tensor (zeros where inactive)."""
        dense = self.values.new_zeros(self.values.shape[0], n_latents)
        return dense.scatter_add(1, self.indices, self.values)

    def l0(self) -> torch.Tensor:
        """Active latents per row, [B]."""
        return (self.values != 0).sum(dim=-1)
