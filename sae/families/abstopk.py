"""AbsTopK (Zhu, Khalili, Zhu 2025): hard thresholding H_k, the proximal step of l0-constrained coding.

Keep the k pre-activations of largest magnitude with their signs: no ReLU and no b_enc, so
a = (x - b_dec) W_enc and a latent can fire negative (one direction, two opposite meanings).
The batch variant keeps the k*B largest |a| of the whole batch in training; inference is per token.
AuxK picks dead latents by |a| and keeps the signs; firing, dead and L0 use |z| > 0.
Option `encoder_bias` adds b_enc to a (sparsify's early `signed` dictionaries have one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import kernels
from kernels import Encoding
from sae.families.base import DEFAULT_K_AUX, Family, regather

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder


class AbsTopK(Family):
    """Top-k by |a| with signs kept; option `batch` selects top k*B by |a| over the batch in training."""

    name = "abstopk"
    rule = "abs"
    uses_b_enc = False
    signed = True
    saelens_architecture = "abstopk"
    saelens_load_options = {"encoder_bias": True}  # SAELens's AbsTopK ranks |x W_enc + b_enc|
    option_names = ("batch", "encoder_bias")

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        # sparsify's early `signed` dictionaries keep an encoder bias: a = (x - b_dec) W_enc + b_enc
        self.uses_b_enc = bool(cfg.options.get("encoder_bias", False))

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        cls.check_flag(cfg, "batch")
        cls.check_flag(cfg, "encoder_bias")

    @classmethod
    def ddp_supported(cls, options: dict[str, Any]) -> bool:
        return not options.get("batch", False)  # the batch variant selects over the whole batch

    @classmethod
    def shard_rule(cls, options: dict[str, Any]) -> str | None:
        return "abs-batch" if options.get("batch", False) else "abs"

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        if not (self.training and self.cfg.options.get("batch", False)):
            return super().encode(sae, x_n, dead=dead, k=k, k_aux=k_aux)
        pre = self.pre(sae, x_n)
        # batch H_k: the k*B largest magnitudes of the batch, read back with their signs
        chosen = kernels.select(pre.abs(), "batch", k=k or self.cfg.k)
        code = regather(pre, chosen, relu=False)
        aux = kernels.aux_select(pre, dead, k_aux, signed=True) if dead is not None else None
        return Encoding(code, aux)
