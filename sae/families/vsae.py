"""Variational TopK SAE (vSAE, 2025; code: ZachData/SPAR-Variational-Sparse-Autoencoders).

The encoder output is the mean mu of a Gaussian posterior on the pre-activations; the log-variance
is learned by a second linear map (W_enc_var, b_enc_var; clamped to [-6, 2], bias initialised at -2).
Training samples z = mu + sigma * eps and applies TopK to z; inference uses mu (plain TopK).
With learned_var=False the variance is fixed at 1 and, as in the reference code's var_flag=0 path,
nothing is sampled (z = mu, KL = |mu|^2 / 2): sampling N(0, 1) noise of the pre-activations' own
scale collapses the codes (measured: eval L0 0.1 of k = 4 on the test data). Loss:
    FVU + beta(t) * KL(N(mu, sigma^2) || N(0, I)) + AuxK,
KL summed over latents, averaged over tokens and divided by the batch variance (the FVU's
denominator, so beta weighs it against the reconstruction as the reference weighs it against MSE);
beta(t) warms up linearly over the first 10% of training (the trainer's `TrainStep.progress`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

import kernels
from kernels import Encoding
from sae.families.base import DEFAULT_K_AUX, Family, TrainStep, regather

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

LOGVAR_MIN, LOGVAR_MAX = -6.0, 2.0


class VariationalTopK(Family):
    """Gaussian posterior on pre-activations, sampled in training, the mean path at inference."""

    name = "vsae"
    saelens_unsupported = "its variance encoder (W_enc_var, b_enc_var) has no place in SAELens's TopK"
    option_names = ("kl_coef", "learned_var", "kl_warmup", "log_var_init")

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.kl_coef = float(cfg.options.get("kl_coef", 0.01))
        self.kl_warmup = float(cfg.options.get("kl_warmup", 0.1))
        self.learned_var = bool(cfg.options.get("learned_var", True))
        self._posterior: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if self.learned_var:
            d, n = cfg.d_in, cfg.latents
            dtype = cfg.torch_dtype
            self.W_enc_var = nn.Parameter(torch.zeros(d, n, dtype=dtype))
            self.b_enc_var = nn.Parameter(torch.full((n,), float(cfg.options.get("log_var_init", -2.0)), dtype=dtype))

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        for key, default in (("kl_coef", 0.01), ("kl_warmup", 0.1)):
            v = cfg.options.get(key, default)
            if not isinstance(v, (int, float)) or v < 0 or (key == "kl_warmup" and v > 1):
                raise ValueError(f"family 'vsae': {key}={v!r}; expected a float >= 0 (kl_warmup <= 1)")
        if not isinstance(cfg.options.get("learned_var", True), bool):
            raise ValueError(f"family 'vsae': learned_var={cfg.options['learned_var']!r}; expected true or false")

    def log_var(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor | None:
        if not self.learned_var:
            return None
        return (sae.encoder_input(x_n) @ self.W_enc_var + self.b_enc_var).clamp(LOGVAR_MIN, LOGVAR_MAX)

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        if not self.training:
            return super().encode(sae, x_n, dead=dead, k=k, k_aux=k_aux)  # the mean path: TopK of mu
        mu = self.pre(sae, x_n)
        log_var = self.log_var(sae, x_n)
        z = mu if log_var is None else mu + (0.5 * log_var).exp() * torch.randn_like(mu)
        code = regather(z, kernels.select(z.detach(), "row", k=k or self.cfg.k))
        aux = kernels.aux_select(mu, dead, k_aux) if dead is not None else None
        self._posterior = (mu, log_var)  # read by extra_losses in this same forward
        return Encoding(code, aux)

    def kl_weight(self, progress: float) -> float:
        """beta at `progress` (the fraction of training done): linear up to kl_coef over the warm-up."""
        if self.kl_warmup == 0:
            return self.kl_coef
        return self.kl_coef * min(1.0, progress / self.kl_warmup)

    def extra_losses(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, enc: Encoding, x_hat_n: torch.Tensor, step: TrainStep
    ) -> dict[str, torch.Tensor]:
        if not self.training or self._posterior is None:
            return {}
        mu, log_var = self._posterior
        self._posterior = None
        mu = mu.float()
        if log_var is None:  # sigma = 1: KL = |mu|^2 / 2
            kl = 0.5 * mu.pow(2).sum(1)
        else:
            lv = log_var.float()
            kl = 0.5 * (mu.pow(2) + lv.exp() - 1 - lv).sum(1)
        var = (x_n - x_n.mean(0, keepdim=True)).float().pow(2).sum(1).mean().clamp_min(1e-12)
        return {"kl_loss": self.kl_weight(step.progress) * kl.mean() / var}

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        # sigma follows the pre-activations (/ s): log sigma^2 shifts by -2 ln s
        if self.learned_var:
            self.b_enc_var.sub_(2 * math.log(scale))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        # the variance map reads raw inputs
        if self.learned_var:
            self.W_enc_var.mul_(scale)
