"""Gated SAE (Rajamanoharan et al. 2024), inference only: loading SAELens and dictionary_learning gated files.

One encoder matrix, two paths: the gate decides which latents fire, the magnitude path how strongly.
    h = (x - b_dec) W_enc,  gate = 1[h + b_gate > 0],  z = gate * ReLU(h * exp(r_mag) + b_mag)
b_gate is held in the dictionary's b_enc (SAELens names it `b_gate` on disk); r_mag and b_mag are family
parameters. No trainer support: the gate is a step function and the paper's auxiliary loss is not implemented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import kernels
from kernels import Encoding, SparseCode
from sae.families.base import DEFAULT_K_AUX, SAELENS_TENSORS, Family

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder


class Gated(Family):
    """Gate on h + b_gate (b_enc), magnitude ReLU(h * exp(r_mag) + b_mag); k is not used."""

    name = "gated"
    rule = "threshold"
    uses_k = False
    saelens_architecture = "gated"
    saelens_renames = {"b_enc": "b_gate"}
    saelens_tensors = (SAELENS_TENSORS - {"b_enc"}) | {"b_gate", "r_mag", "b_mag"}
    option_names = ("apply_b_dec_to_input",)

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.apply_b_dec = bool(cfg.options.get("apply_b_dec_to_input", True))
        n, dtype = cfg.latents, cfg.torch_dtype
        self.r_mag = nn.Parameter(torch.zeros(n, dtype=dtype))
        self.b_mag = nn.Parameter(torch.zeros(n, dtype=dtype))

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        cls.check_flag(cfg, "apply_b_dec_to_input")

    def _hidden(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor:
        return (sae.encoder_input(x_n) if self.apply_b_dec else x_n) @ sae.W_enc

    def pre(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor:
        """The magnitude path's pre-activations (SAELens's hook_sae_acts_pre)."""
        return self._hidden(sae, x_n) * self.r_mag.exp() + self.b_mag

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        h = self._hidden(sae, x_n)
        gate = kernels.select(h + sae.b_enc, "threshold", threshold=0.0)
        mag = (h * self.r_mag.exp() + self.b_mag).gather(1, gate.indices).relu()
        return Encoding(SparseCode(torch.where(gate.values != 0, mag, torch.zeros_like(mag)), gate.indices), None)

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        self.b_mag.div_(scale)

    def saelens_cfg(self) -> dict[str, Any]:
        return {"architecture": "gated", "apply_b_dec_to_input": self.apply_b_dec}
