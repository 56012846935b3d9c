"""Matryoshka SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025; Nabeshima 2024).

The latents form consecutive groups; prefix j is latents [0, M_j) with M_1 < ... < M_G = n.
One BatchTopK over the whole dictionary gives z; every prefix must reconstruct x on its own:
    L = sum_j w_j * FVU(x, b_dec + sum_{i < M_j} z_i W_dec[i])      (w_j = 1/G by default)
plus AuxK on the full reconstruction. Early latents learn general features because every
prefix loss uses them. Inference uses BatchTopK's threshold. Latents are never permuted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

import kernels
from kernels import Encoding, SparseCode
from sae.families.batchtopk import BatchTopK
from sae.losses import fvu

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

# Bussmann et al.'s groups: n/16, n/16, n/8, n/4, n/2 (prefix ends n/16, n/8, n/4, n/2, n)
DEFAULT_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def default_prefixes(n: int) -> list[int]:
    """Prefix ends from Bussmann et al.'s group fractions, deduplicated for small n."""
    ends = sorted({max(1, round(f * n)) for f in DEFAULT_FRACTIONS} | {n})
    return ends


class Matryoshka(BatchTopK):
    """BatchTopK selection; loss averaged over nested dictionary prefixes."""

    name = "matryoshka"
    option_names = BatchTopK.option_names + ("prefixes", "weights")

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.prefixes = self.prefixes_of(cfg)
        w = cfg.options.get("weights") or [1.0 / len(self.prefixes)] * len(self.prefixes)
        self.weights = [float(v) for v in w]

    @staticmethod
    def prefixes_of(cfg: SAEConfig) -> list[int]:
        return list(cfg.options.get("prefixes") or default_prefixes(cfg.latents))

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        n = cfg.latents
        p = cfg.options.get("prefixes")
        if p is not None:
            if not isinstance(p, (list, tuple)) or not p or not all(isinstance(v, int) for v in p):
                raise ValueError(f"family 'matryoshka': prefixes={p!r}; expected a list of ints ending at n_latents={n}")
            if any(b <= a for a, b in zip(p, p[1:])) or p[0] < 1:
                raise ValueError(f"family 'matryoshka': prefixes={list(p)} must be positive and strictly increasing")
            if p[-1] != n:
                raise ValueError(
                    f"family 'matryoshka': prefixes={list(p)} do not divide the dictionary: the last prefix must be "
                    f"n_latents={n} so the groups partition the latents"
                )
        w = cfg.options.get("weights")
        if w is not None:
            count = len(p) if p is not None else len(default_prefixes(n))
            if not isinstance(w, (list, tuple)) or len(w) != count or any(not v > 0 for v in w):
                raise ValueError(f"family 'matryoshka': weights={w!r}; expected {count} positive numbers, one per prefix")

    def prefix_losses(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, code: SparseCode, base: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """FVU of each prefix's reconstruction, which reads only latents [0, M_j) (plus `base`: b_dec, and a
        skip transcoder's skip term)."""
        losses = []
        for m in self.prefixes:
            keep = code.indices < m
            part = SparseCode(torch.where(keep, code.values, torch.zeros_like(code.values)), code.indices)
            x_hat = kernels.decode(part, sae.W_dec, sae.b_dec) if base is None else kernels.decode(part, sae.W_dec) + base
            losses.append(fvu(x_n, x_hat))
        return losses

    def recon_loss(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        enc: Encoding,
        x_hat_n: torch.Tensor,
        sse: torch.Tensor | None = None,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        losses = self.prefix_losses(sae, x_n, enc.code, base)
        return sum((w * loss for w, loss in zip(self.weights, losses)), torch.zeros((), device=x_n.device))
