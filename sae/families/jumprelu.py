"""JumpReLU (Rajamanoharan et al. 2024), inference only: loading Gemma Scope and SAELens JumpReLU files.

z_i = a_i * 1[a_i > theta_i] with a per-latent threshold theta [n]. Gemma Scope's encoder reads x
itself (`apply_b_dec_to_input` false); SAELens's default subtracts b_dec first. No trainer support:
the threshold gets no gradient (the paper's straight-through estimator is not implemented).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import kernels
from kernels import Encoding
from sae.families.base import DEFAULT_K_AUX, SAELENS_TENSORS, Family, regather

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder


class JumpReLU(Family):
    """Per-latent threshold on the pre-activations; k is not used."""

    name = "jumprelu"
    rule = "threshold"
    uses_k = False
    saelens_architecture = "jumprelu"
    saelens_tensors = SAELENS_TENSORS | {"threshold"}
    option_names = ("apply_b_dec_to_input",)
    threshold: torch.Tensor  # buffer [n], fp32

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.apply_b_dec = bool(cfg.options.get("apply_b_dec_to_input", True))
        self.register_buffer("threshold", torch.zeros(cfg.latents, dtype=torch.float32))

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        cls.check_flag(cfg, "apply_b_dec_to_input")

    def pre(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor:
        x_in = sae.encoder_input(x_n) if self.apply_b_dec else x_n
        return x_in @ sae.W_enc + sae.b_enc

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        pre = self.pre(sae, x_n)
        code = kernels.select(pre, "threshold", threshold=self.threshold.to(pre.dtype))
        return Encoding(regather(pre, code, relu=False), None)

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        self.threshold.div_(scale)

    def saelens_cfg(self) -> dict[str, Any]:
        return {"architecture": "jumprelu", "apply_b_dec_to_input": self.apply_b_dec}
