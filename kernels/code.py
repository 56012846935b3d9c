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


def code_from_mask(values: torch.Tensor, mask: torch.Tensor) -> SparseCode:
    """Pack the entries of `values` [B, n] where `mask` holds into a code as wide as the fullest row, each row's
    kept entries first (largest value first), zero-valued padding after."""
    counts = mask.sum(dim=-1)
    width = max(int(counts.max().item()), 1)
    score = torch.where(mask, values, torch.full_like(values, float("-inf")))
    top, indices = score.topk(width, dim=-1, sorted=True)
    keep = torch.isfinite(top)
    vals = torch.where(keep, values.gather(1, indices), torch.zeros_like(top))
    return SparseCode(vals, indices)
