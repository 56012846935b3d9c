"""Standard SAE (Bricken et al. 2023; Anthropic's April 2024 update): ReLU codes, L1 sparsity penalty.

z = ReLU((x - b_dec) W_enc + b_enc): every positive pre-activation fires, so L0 is set by the penalty,
not by a k. Loss = FVU + l1_coef * E_b[sum_i z_i |W_dec_i|] / sqrt(E_b|x - mean x|^2): the L1 of the
codes weighted by each latent's decoder norm (so a loaded dictionary with non-unit rows is penalised
as SAELens's `standard` trainer penalises it), divided by the batch's RMS deviation so the term is,
like FVU, dimensionless. Our trainer keeps decoder rows at unit norm, where the weighting is 1.
The default l1_coef (0.1) comes from a sweep on the embedded model (docs/results/frontier.md); the coefficient is
warmed up over TrainConfig.sparsity_warmup_frac and, with a target L0, adapted (sae.sparsity_target); b_enc starts
where each latent fires on about L0 / n of a sample (Anthropic's 2025 initialisation).
No AuxK: a classic standard SAE has none (dead latents stay dead). `apply_b_dec_to_input` false reads
x itself, as some published SAELens dictionaries do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import kernels
from kernels import Encoding, SparseCode
from sae.families.base import DEFAULT_K_AUX, Family, TrainStep, firing_quantile

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

DEFAULT_L1_COEF = 0.1  # the sweep in docs/results/frontier.md: the coefficient that lands near L0 = 32 there


def weighted_l1(sae: SparseAutoencoder, x_n: torch.Tensor, code: SparseCode) -> torch.Tensor:
    """E_b[sum_i z_i |W_dec_i|] / sqrt(E_b|x - mean x|^2): the decoder-norm-weighted L1 of a code, dimensionless."""
    weighted = code.values.float() * sae.W_dec.norm(dim=1).float()[code.indices]
    rms = (x_n - x_n.mean(0, keepdim=True)).float().pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
    return weighted.sum(1).mean() / rms


class Standard(Family):
    """ReLU on every pre-activation; decoder-norm-weighted L1 penalty in training."""

    name = "standard"
    rule = "threshold"
    uses_k = False
    saelens_architecture = "standard"
    option_names = ("l1_coef", "apply_b_dec_to_input")
    penalty = "l1"
    default_coef = DEFAULT_L1_COEF

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.l1_coef = float(cfg.options.get("l1_coef", DEFAULT_L1_COEF))
        self.apply_b_dec = bool(cfg.options.get("apply_b_dec_to_input", True))

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        coef = cfg.options.get("l1_coef", DEFAULT_L1_COEF)
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not coef >= 0:
            raise ValueError(f"family {cls.name!r}: l1_coef={coef!r}; expected a float >= 0")
        cls.check_flag(cfg, "apply_b_dec_to_input")

    def encoder_input(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: x - b_dec, or x itself when apply_b_dec_to_input is false (or for a transcoder)."""
        return sae.encoder_input(x_n) if self.apply_b_dec else x_n

    def pre(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor:
        return self.encoder_input(sae, x_n) @ sae.W_enc + sae.b_enc

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        enc = kernels.encode(self.encoder_input(sae, x_n), sae.W_enc, sae.b_enc, "threshold", threshold=0.0)
        return Encoding(enc.code, None)

    @torch.no_grad()
    def init_from_sample(self, sae: SparseAutoencoder, x_n: torch.Tensor, l0: float) -> None:
        """b_enc so each latent fires on l0 / n of the sample (Anthropic's 2025 bias initialisation)."""
        sae.b_enc.copy_(-firing_quantile(self.encoder_input(sae, x_n) @ sae.W_enc, l0).to(sae.b_enc.dtype))

    def own_coef(self) -> float:
        return self.l1_coef

    def extra_losses(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, enc: Encoding, x_hat_n: torch.Tensor, step: TrainStep
    ) -> dict[str, torch.Tensor]:
        coef = self.sparsity_coefficient(step)
        if isinstance(coef, float) and coef == 0:
            return {}
        return {"l1": coef * weighted_l1(sae, x_n, enc.code)}

    def saelens_cfg(self) -> dict[str, Any]:
        return {"architecture": "standard", "apply_b_dec_to_input": self.apply_b_dec}
