"""A family is a selection rule plus, where its paper has one, an extra loss term.

The base class *is* TopK (Gao et al.): other families override only what their math changes.
A family is an nn.Module child of the SparseAutoencoder so its parameters and buffers
(thresholds, probes) are trained, checkpointed and saved with the dictionary.
What the rest of the package may do with a family (train it under ddp or shard, export it for
SAELens or sparsify) is declared on its class; each capability defaults to "no", so a new family
is refused by those paths until it says otherwise.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

import kernels
from kernels import Encoding, SparseCode
from sae.losses import batch_variance, fvu

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

DEFAULT_K_AUX = 256  # AuxK: dead latents each token may use (Gao et al.)
DEFAULT_AUX_COEF = 1 / 32  # AuxK loss coefficient (Gao et al.)
SAELENS_TENSORS = frozenset({"W_enc", "b_enc", "W_dec", "b_dec"})  # what SAELens's TopK and standard SAEs hold


@dataclass(frozen=True)
class TrainStep:
    """What the trainer tells one training forward: AuxK's settings and where the run stands.

    Schedules (a KL warm-up, a probe fitted part-way) read `progress`; threshold estimates start at an
    `index`. Outside the trainer the defaults apply: AuxK as TrainConfig's defaults, the start of the run."""

    index: int = 0
    """Optimiser steps taken before this one."""
    total: int = 1
    """Steps of the whole run."""
    k_aux: int = DEFAULT_K_AUX
    """AuxK: dead latents each token may use to reconstruct the residual."""
    aux_coef: float = DEFAULT_AUX_COEF
    """AuxK loss coefficient."""
    sparsity_coef: float | None = None
    """A penalty family's coefficient (TrainConfig.sparsity_coef); None: the family's own (`Family.own_coef`)."""
    sparsity_scale: torch.Tensor | float = 1.0
    """Factor on that coefficient: the warm-up times the target-L0 adaptation (sae.sparsity_target)."""

    @property
    def progress(self) -> float:
        """Fraction of training done before this step."""
        return self.index / self.total


def firing_quantile(pre: torch.Tensor, l0: float) -> torch.Tensor:
    """Per latent, the value of pre [B, n] that a fraction l0 / n of the rows exceed: a threshold at which each latent
    fires on l0 / n of the tokens, so the code's mean L0 is about l0 (Anthropic's 2025 initialisation of the encoder
    bias, per latent)."""
    B, n = pre.shape
    above = min(B - 1, max(1, round(B * min(1.0, l0 / n))))
    return pre.float().kthvalue(B - above, dim=0).values


def regather(pre: torch.Tensor, code: SparseCode, relu: bool = True) -> SparseCode:
    """Re-read a selected code's values from `pre` so gradients reach it (kernels may return detached
    values); padding (value 0) stays 0."""
    vals = pre.gather(1, code.indices)
    if relu:
        vals = vals.relu()
    return SparseCode(torch.where(code.values != 0, vals, torch.zeros_like(vals)), code.indices)


class Family(nn.Module):
    """TopK: keep each token's k largest pre-activations, ReLU them, AuxK on dead latents."""

    name: ClassVar[str] = "topk"
    rule: ClassVar[str] = "row"  # the kernels.select rule of the training forward
    uses_k: ClassVar[bool] = True
    # the sparsity penalty that sets L0 where there is no k ("" = none): "l0" (jumprelu), "l1" (standard, gated);
    # such a family reads its coefficient through `sparsity_coefficient`, which the warm-up and a target L0 scale
    penalty: ClassVar[str] = ""
    default_coef: ClassVar[float] = 0.0  # the penalty's coefficient when neither TrainConfig nor an option gives one
    uses_b_enc: bool = True  # an instance may differ from its class (AbsTopK's encoder_bias option)
    signed: ClassVar[bool] = False  # codes may be negative (firing is |z| > 0)
    option_names: ClassVar[tuple[str, ...]] = ()
    # --- SAELens's layout (format "saelens"; "saelens-strict" keeps only what SAELens reads) ---
    saelens_architecture: ClassVar[str] = "topk"
    saelens_renames: ClassVar[dict[str, str]] = {}  # our tensor name -> SAELens's, where they differ
    saelens_tensors: ClassVar[frozenset[str]] = SAELENS_TENSORS  # SAELens's names of the tensors its class holds
    saelens_unsupported: ClassVar[str] = ""  # why SAELens cannot represent the family ("" = it can)
    saelens_load_options: ClassVar[dict[str, Any]] = {}  # options a SAELens file of this family implies
    # --- sparsify's layout: its SparseCoder encodes ReLU + per-token top-k, nothing else ---
    sparsify_export: ClassVar[bool] = False
    # --- transcoders (SAEConfig.d_out): why the family cannot predict a target other than its input ("" = it can)
    transcoder_unsupported: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def k(self) -> int:
        """cfg.k as an int, for a family that uses k: SAEConfig fills the default and `validate` checks it."""
        assert self.cfg.k is not None, f"family {self.name!r} has no k"
        return self.cfg.k

    # --- configuration -------------------------------------------------------------
    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        """Raise at config time when options do not fit the family."""
        if cls.uses_k:
            if cfg.k is None or not isinstance(cfg.k, int) or not 1 <= cfg.k <= cfg.latents:
                raise ValueError(
                    f"family {cls.name!r}: k={cfg.k!r} out of range; expected an int with 1 <= k <= n_latents={cfg.n_latents}"
                )
        unknown = set(cfg.options) - set(cls.option_names)
        if unknown:
            raise ValueError(
                f"family {cls.name!r} got unknown options {sorted(unknown)}; it takes {list(cls.option_names) or 'none'}"
            )

    @classmethod
    def has_own_loss(cls) -> bool:
        """Whether the family changes the loss (recon_loss or extra_losses): a CLT, whose loss is the sum of its
        layers' FVUs, refuses such a family."""
        return cls.recon_loss is not Family.recon_loss or cls.extra_losses is not Family.extra_losses

    @classmethod
    def recon_loss_takes_base(cls) -> bool:
        """Whether recon_loss accepts `base=` (what a skip transcoder's partial reconstructions add): the base
        class's does; an override must say so in its signature."""
        return "base" in inspect.signature(cls.recon_loss).parameters

    @classmethod
    def check_flag(cls, cfg: SAEConfig, name: str) -> None:
        """Refuse a non-boolean value for the on/off option `name`."""
        if name in cfg.options and not isinstance(cfg.options[name], bool):
            raise ValueError(f"family {cls.name!r}: {name}={cfg.options[name]!r}; expected true or false")

    # --- training past one device (sae.distributed) ------------------------------------
    @classmethod
    def ddp_supported(cls, options: dict[str, Any]) -> bool:
        """Whether `ddp` can train it: a per-token, stateless selection and a loss of FVU + AuxK only, so ranks
        holding shares of a batch compute exactly the single-process step."""
        return False

    @classmethod
    def shard_rule(cls, options: dict[str, Any]) -> str | None:
        """The selection `shard` splits over the latents for its training forward: "row" (top-k per token),
        "batch" (top k*B of the batch), "abs" or "abs-batch" (by magnitude); None: it cannot be sharded."""
        return None

    # --- the forward ----------------------------------------------------------------
    def pre(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor:
        """Dense pre-activations [B, n] of normalised inputs: (x_n - b_dec) W_enc (+ b_enc); a transcoder reads
        x_n itself (`sae.encoder_input`)."""
        pre = sae.encoder_input(x_n) @ sae.W_enc
        return pre + sae.b_enc if self.uses_b_enc else pre

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        """Code for normalised inputs x_n [B, d]; in training, the AuxK code of up to k_aux `dead` latents."""
        b_enc = sae.b_enc if self.uses_b_enc else None
        return kernels.encode(x_n, sae.W_enc, b_enc, self.rule, k=k or self.cfg.k, dead=dead, k_aux=k_aux, b_pre=sae.b_pre)

    def recon_loss(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        enc: Encoding,
        x_hat_n: torch.Tensor,
        sse: torch.Tensor | None = None,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reconstruction term of the loss (normalised MSE, i.e. FVU of the batch); `sse`, the summed
        squared error when the decoder computed it (kernels.decode_sse), saves recomputing it.

        In the loss hooks `x_n` is what the dictionary predicts, normalised: its input for an SAE, the target for
        a transcoder; `x_hat_n` the whole prediction. `base` [B, d] is the part of it no latent contributes
        (b_dec plus a skip transcoder's skip term), given for skip transcoders; None: sae.b_dec."""
        if sse is None:
            return fvu(x_n, x_hat_n)
        return sse / batch_variance(x_n).clamp_min(1e-12)

    def extra_losses(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, enc: Encoding, x_hat_n: torch.Tensor, step: TrainStep
    ) -> dict[str, torch.Tensor]:
        """Family-specific terms added to the loss (already weighted)."""
        return {}

    @torch.no_grad()
    def init_from_sample(self, sae: SparseAutoencoder, x_n: torch.Tensor, l0: float) -> None:
        """A penalty family: set its thresholds or biases from normalised sample inputs x_n so that training starts
        at about `l0` active latents per token (the trainer calls it after b_dec is set; the default: nothing)."""

    def own_coef(self) -> float:
        """A penalty family's coefficient when TrainConfig gives none: its option, else `default_coef`."""
        return self.default_coef

    def sparsity_coefficient(self, step: TrainStep) -> torch.Tensor | float:
        """The penalty's coefficient at `step`: TrainConfig's (or the family's own) times the warm-up and target
        factor."""
        base = self.own_coef() if step.sparsity_coef is None else step.sparsity_coef
        return base * step.sparsity_scale

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder, enc: Encoding, step: TrainStep) -> None:
        """Update non-gradient state (thresholds, EMAs) after the optimiser step `step`."""

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        """Rescale family state when the input scale is folded into the weights (pre -> pre / scale)."""

    @torch.no_grad()
    def scale_code(self, sae: SparseAutoencoder, s: float) -> None:
        """Multiply every code value by s > 0 without changing which latents fire: here W_enc and b_enc (a code
        positively homogeneous in its pre-activations, as ReLU's); a family with thresholds or a second path
        scales those too. Used by the trainer's start of a penalty family (`sae.init.fit_code_scale`)."""
        sae.W_enc.mul_(s)
        sae.b_enc.mul_(s)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Rescale family maps that read the normalised input x_n = scale * x when it becomes the raw x (called
        beside fold_scale; for an SAE both scales are the input's, for a transcoder pre follows the target's)."""

    def saelens_cfg(self) -> dict[str, Any]:
        """Extra SAELens-compatible cfg.json keys."""
        return {"architecture": self.saelens_architecture, "k": self.cfg.k}

    def saelens_pending(self) -> str:
        """What this dictionary still lacks for SAELens to read it right ("" = nothing), e.g. an estimate."""
        return ""
