"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders"): trained
here, and loaded from SAELens and dictionary_learning gated files.

One encoder matrix, two paths (the paper's weight sharing: W_mag = W_gate * exp(r_mag)): the gate decides which
latents fire, the magnitude path how strongly.
    h = (x - b_dec) W_enc,  pi_gate = h + b_gate,  gate = 1[pi_gate > 0],  z = gate * ReLU(h * exp(r_mag) + b_mag)
b_gate is held in the dictionary's b_enc (SAELens names it `b_gate` on disk); r_mag and b_mag are family
parameters, initialised at 0.

Training (the paper's loss): the reconstruction's gradient reaches the magnitude path only (the gate is a step
function), and two terms train the gate:
- sparsity: lambda * E_b[sum_i ReLU(pi_gate)_i |W_dec_i|] / sqrt(E_b|x - mean x|^2), the decoder-norm-weighted L1
  of the gate's pre-activations, divided by the batch's RMS deviation as `standard`'s L1 is; lambda is
  TrainConfig.sparsity_coef (default `default_coef`), warmed up and, with a target L0, adapted by the trainer;
- auxiliary: the FVU of the reconstruction ReLU(pi_gate) W_dec + b_dec through a frozen copy of the decoder
  (W_dec and b_dec detached), so the gate learns to reconstruct on its own without moving the decoder.
Our trainer keeps decoder rows at unit norm (the weighting is then 1); SAELens's gated trainer leaves them free and
its `fold_W_dec_norm` moves them into W_enc, b_gate and b_mag, which a unit-norm file leaves as they are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import kernels
from kernels import Encoding, SparseCode
from sae.families.base import DEFAULT_K_AUX, SAELENS_TENSORS, Family, TrainStep, firing_quantile
from sae.families.standard import weighted_l1
from sae.losses import fvu

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder


DEFAULT_GATED_L1_COEF = 0.03  # lambda of the gate's L1 (the same units as standard's)


class Gated(Family):
    """Gate on h + b_gate (b_enc), magnitude ReLU(h * exp(r_mag) + b_mag); k is not used."""

    name = "gated"
    rule = "threshold"
    uses_k = False
    penalty = "l1"
    default_coef = DEFAULT_GATED_L1_COEF
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
        self._relu_gate: SparseCode | None = None  # set by a training forward, read by its extra_losses

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
        pi_gate = h + sae.b_enc
        gate = kernels.select(pi_gate.detach() if self.training else pi_gate, "threshold", threshold=0.0)
        real = gate.values != 0
        mag = (h * self.r_mag.exp() + self.b_mag).gather(1, gate.indices).relu()
        if self.training and torch.is_grad_enabled():  # the gate's ReLU(pi_gate), for this forward's gate losses
            self._relu_gate = SparseCode(torch.where(real, pi_gate.gather(1, gate.indices), 0.0), gate.indices)
        return Encoding(SparseCode(torch.where(real, mag, torch.zeros_like(mag)), gate.indices), None)

    def extra_losses(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, enc: Encoding, x_hat_n: torch.Tensor, step: TrainStep
    ) -> dict[str, torch.Tensor]:
        relu_gate, self._relu_gate = self._relu_gate, None
        if relu_gate is None:  # not a training forward
            return {}
        l1 = weighted_l1(sae, x_n, relu_gate)
        via_gate = kernels.decode(relu_gate, sae.W_dec.detach(), sae.b_dec.detach())
        return {"l1": self.sparsity_coefficient(step) * l1, "gate_aux": fvu(x_n, via_gate)}

    @torch.no_grad()
    def init_from_sample(self, sae: SparseAutoencoder, x_n: torch.Tensor, l0: float) -> None:
        """b_gate so each latent's gate opens on l0 / n of the sample (Anthropic's 2025 bias initialisation)."""
        sae.b_enc.copy_(-firing_quantile(self._hidden(sae, x_n), l0).to(sae.b_enc.dtype))

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        self.b_mag.div_(scale)

    @torch.no_grad()
    def scale_code(self, sae: SparseAutoencoder, s: float) -> None:
        """Only the magnitude path scales (r_mag + log s, b_mag * s): the gate, and so which latents fire, stay."""
        self.r_mag.add_(math.log(s))
        self.b_mag.mul_(s)

    def saelens_cfg(self) -> dict[str, Any]:
        return {"architecture": "gated", "apply_b_dec_to_input": self.apply_b_dec}
