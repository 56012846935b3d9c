"""BatchTopK (Bussmann, Leask, Nanda 2024); inference threshold as in dictionary_learning's trainer.

Training keeps the k*B largest ReLU'd pre-activations of the whole batch, so tokens share one
budget and rows hold varying counts. A batch-level rule cannot run on one token, so the model keeps
a threshold theta: an EMA (fp32, no gradient) of each batch's smallest selected value. dictionary_learning starts
it at step 1000 with beta = 0.999, on runs of about 10^5 steps; by default here both scale with the run (`schedule`):
the EMA starts at a quarter of the run and averages over about a tenth of it, and on runs of 10,000 steps or more
they are dictionary_learning's. So a short run (the demo's 400 steps) ends with an estimated threshold, instead of
encoding by the batch rule at inference. In eval mode z = a * 1[a > theta]: a JumpReLU with a constant threshold,
which is how SAELens saves BatchTopK dictionaries.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import torch

import kernels
from kernels import Encoding, SparseCode
from sae.families.base import DEFAULT_K_AUX, SAELENS_TENSORS, Family, TrainStep, regather

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder


class ThresholdInference(Family):
    """Shared by the batch-dependent families: a saved `threshold` [n] buffer used when not training."""

    per_latent_threshold = False  # True: each latent keeps its own EMA (Feature Choice)
    option_names: ClassVar[tuple[str, ...]] = ("threshold_beta", "threshold_start_step")
    # SAELens saves batch-dependent dictionaries as JumpReLU with their inference threshold
    saelens_architecture = "jumprelu"
    saelens_tensors = SAELENS_TENSORS | {"threshold"}
    threshold: torch.Tensor  # buffer [n], fp32

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        # -1 = not estimated yet; fp32 whatever the parameter dtype (SAELens JumpReLU layout: [d_sae])
        self.register_buffer("threshold", torch.full((cfg.latents,), -1.0, dtype=torch.float32))
        self.beta: float | None = None if "threshold_beta" not in cfg.options else float(cfg.options["threshold_beta"])
        self.start_step: int | None = cfg.options.get("threshold_start_step")

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        beta = cfg.options.get("threshold_beta", 0.999)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ValueError(f"family {cls.name!r}: threshold_beta={beta!r}; expected a float in [0, 1)")
        start = cfg.options.get("threshold_start_step", 0)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"family {cls.name!r}: threshold_start_step={start!r}; expected an int >= 0")

    def schedule(self, total_steps: int) -> tuple[int, float]:
        """(first step of the EMA, its beta) for a run of `total_steps`: the options when given, else
        min(1000, steps / 4) and 1 - 1 / min(1000, max(10, steps / 10))."""
        start = self.start_step if self.start_step is not None else min(1000, total_steps // 4)
        beta = self.beta if self.beta is not None else 1 - 1 / min(1000, max(10, total_steps // 10))
        return start, beta

    @property
    def has_threshold(self) -> bool:
        return bool((self.threshold >= 0).any())

    def saelens_pending(self) -> str:
        if self.has_threshold:
            return ""
        return (
            "the inference threshold has not been estimated yet, and SAELens saves this family as a JumpReLU with that threshold"
        )

    def threshold_select(self, pre: torch.Tensor) -> SparseCode | None:
        """The inference code a * 1[a > theta], or None while theta has not been estimated."""
        if not self.has_threshold:
            when = "a quarter of the training run" if self.start_step is None else f"threshold_start_step={self.start_step}"
            warnings.warn(
                f"{self.name}: the inference threshold has not been estimated yet (it starts after {when}); using "
                "the batch rule, so codes depend on the batch",
                stacklevel=3,
            )
            return None
        # a latent never selected in training (threshold still -1) never fires at inference
        theta = torch.where(self.threshold >= 0, self.threshold, torch.full_like(self.threshold, float("inf")))
        code = kernels.select(pre, "threshold", threshold=theta.to(pre.dtype))
        return regather(pre, code)

    @torch.no_grad()
    def update_threshold(self, code: SparseCode, step: TrainStep) -> None:
        """EMA of the smallest selected positive value (per latent when per_latent_threshold)."""
        start, beta = self.schedule(step.total)
        if step.index < start:
            return
        vals = code.values.detach().float()
        # no host sync: entries that are not positive count as +inf, so a latent (or a batch) without one is
        # left unchanged
        masked = torch.where(vals > 0, vals, torch.full_like(vals, float("inf")))
        if self.per_latent_threshold:
            mins = torch.full((self.cfg.latents,), float("inf"), device=vals.device)
            mins.scatter_reduce_(0, code.indices.reshape(-1), masked.reshape(-1), reduce="amin")
        else:
            mins = masked.min().expand(self.cfg.latents)
        seen = torch.isfinite(mins)
        fresh = seen & (self.threshold < 0)
        ema = beta * self.threshold + (1 - beta) * mins
        self.threshold.copy_(torch.where(fresh, mins, torch.where(seen & ~fresh, ema, self.threshold)))

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        self.threshold.copy_(torch.where(self.threshold >= 0, self.threshold / scale, self.threshold))


class BatchTopK(ThresholdInference):
    """Top k*B of the ReLU'd batch in training; the estimated threshold at inference."""

    name = "batchtopk"
    rule = "batch"

    @classmethod
    def shard_rule(cls, options: dict[str, Any]) -> str | None:
        # BatchTopK itself only: its subclasses change the loss or the AuxK mask, which the sharded forward lacks
        return "batch" if cls is BatchTopK else None

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        if not self.training and k is None:
            code = self.threshold_select(self.pre(sae, x_n))
            if code is not None:
                return Encoding(code, None)
        return super().encode(sae, x_n, dead=dead, k=k, k_aux=k_aux)

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder, enc: Encoding, step: TrainStep) -> None:
        self.update_threshold(enc.code, step)
