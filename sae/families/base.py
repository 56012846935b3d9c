"""A family is a selection rule plus, where its paper has one, an extra loss term.

The base class *is* TopK (Gao et al.): other families override only what their math changes.
A family is an nn.Module child of the SparseAutoencoder so its parameters and buffers
(thresholds, probes) are trained, checkpointed and saved with the dictionary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

import kernels
from kernels import Encoding, SparseCode
from sae.distributed.batch import batch_variance

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder


def regather(pre: torch.Tensor, code: SparseCode, relu: bool = True) -> SparseCode:
    """Re-read a selected code's values from `pre` so gradients reach it (kernels may return detached
    values); padding (value 0) stays 0."""
    vals = pre.gather(1, code.indices)
    if relu:
        vals = vals.relu()
    return SparseCode(torch.where(code.values != 0, vals, torch.zeros_like(vals)), code.indices)


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained over the batch: sum|x - x_hat|^2 / sum|x - mean(x)|^2."""
    err = (x - x_hat).float().pow(2).sum()
    return err / batch_variance(x).clamp_min(1e-12)  # across ranks when the batch is split (ddp)


class Family(nn.Module):
    """TopK: keep each token's k largest pre-activations, ReLU them, AuxK on dead latents."""

    name: ClassVar[str] = "topk"
    rule: ClassVar[str] = "row"  # the kernels.select rule of the training forward
    uses_k: ClassVar[bool] = True
    uses_b_enc: ClassVar[bool] = True
    signed: ClassVar[bool] = False  # codes may be negative (firing is |z| > 0)
    saelens_architecture: ClassVar[str] = "topk"
    saelens_renames: ClassVar[dict[str, str]] = {}  # our tensor name -> SAELens's, where they differ
    saelens_unsupported: ClassVar[str] = ""  # why SAELens cannot represent the family ("" = it can)
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg

    # --- configuration -------------------------------------------------------------
    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        """Raise at config time when options do not fit the family."""
        assert cfg.n_latents is not None
        if cls.uses_k:
            if cfg.k is None or not isinstance(cfg.k, int) or not 1 <= cfg.k <= cfg.n_latents:
                raise ValueError(
                    f"family {cls.name!r}: k={cfg.k!r} out of range; expected an int with 1 <= k <= n_latents={cfg.n_latents}"
                )
        unknown = set(cfg.options) - set(cls.option_names)
        if unknown:
            raise ValueError(
                f"family {cls.name!r} got unknown options {sorted(unknown)}; it takes {list(cls.option_names) or 'none'}"
            )

    @classmethod
    def check_flag(cls, cfg: SAEConfig, name: str) -> None:
        """Refuse a non-boolean value for the on/off option `name`."""
        if name in cfg.options and not isinstance(cfg.options[name], bool):
            raise ValueError(f"family {cls.name!r}: {name}={cfg.options[name]!r}; expected true or false")

    # --- the forward ----------------------------------------------------------------
    def pre(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor:
        """Dense pre-activations [B, n] of normalised inputs: (x_n - b_dec) W_enc (+ b_enc)."""
        pre = (x_n - sae.b_dec) @ sae.W_enc
        return pre + sae.b_enc if self.uses_b_enc else pre

    def encode(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, dead: torch.Tensor | None = None, k: int | None = None
    ) -> Encoding:
        """Code for normalised inputs x_n [B, d]; the AuxK code over `dead` latents in training."""
        b_enc = sae.b_enc if self.uses_b_enc else None
        return kernels.encode(
            x_n, sae.W_enc, b_enc, self.rule, k=k or self.cfg.k, dead=dead, k_aux=self.cfg.k_aux, b_pre=sae.b_dec
        )

    def select(self, pre: torch.Tensor, k: int | None = None) -> SparseCode:
        """The inference selection from (normalised) pre-activations [B, n]."""
        return kernels.select(pre, self.rule, k=k or self.cfg.k)

    def recon_loss(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, enc: Encoding, x_hat_n: torch.Tensor,
        sse: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reconstruction term of the loss (normalised MSE, i.e. FVU of the batch); `sse`, the summed
        squared error when the decoder computed it (kernels.decode_sse), saves recomputing it."""
        if sse is None:
            return fvu(x_n, x_hat_n)
        return sse / batch_variance(x_n).clamp_min(1e-12)

    def extra_losses(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, enc: Encoding, x_hat_n: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Family-specific terms added to the loss (already weighted)."""
        return {}

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder, enc: Encoding, step: int) -> None:
        """Update non-gradient state (thresholds, EMAs) after an optimiser step."""

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        """Rescale family state when the input scale is folded into the weights (pre -> pre / scale)."""

    def saelens_cfg(self) -> dict[str, Any]:
        """Extra SAELens-compatible cfg.json keys."""
        return {"architecture": self.saelens_architecture, "k": self.cfg.k}
