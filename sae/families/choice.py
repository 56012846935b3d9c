"""Feature Choice and Mutual Choice SAEs (Ayonrinde 2024, arXiv 2411.02124).

Token-feature matching as allocation of a budget of k*B (token, feature) pairs over the affinities
S = ReLU(a) [B, n]. TopK is token choice (k per row). Feature Choice: each latent takes its m
highest-affinity tokens of the batch (expert-choice routing, m = k*B/n by default), so no latent is
idle in a batch but a token can get none. Mutual Choice: the global top k*B, the same selection as
BatchTopK (shared code path).

aux_zipf: the paper generalises AuxK from dead latents to dead *and under-used* latents, measured
against a Zipf-shaped target of feature usage. Its exact formula was not retrievable here; this is
our reading: an EMA of each latent's firing rate, sorted, is compared with the Zipf law
p_r = C / r (C so that sum_r p_r = k, the mean L0); a latent whose rate falls below
zipf_fraction * p_(its rank) joins the dead ones in the AuxK selection. Inference: a threshold
estimated as for BatchTopK (our choice; per latent for Feature Choice, matching its per-latent rule).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

import kernels
from kernels import Encoding, SparseCode
from sae.families.base import DEFAULT_K_AUX, Family, TrainStep, regather
from sae.families.batchtopk import BatchTopK, ThresholdInference

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

ZIPF_OPTIONS = ("aux_zipf", "zipf_fraction", "zipf_beta")


class ZipfAux(Family):
    """aux_zipf bookkeeping: a firing-rate EMA and the under-used mask it implies (mixed into both families)."""

    firing_rate: torch.Tensor  # buffers [n], fp32
    zipf_target: torch.Tensor

    def init_zipf(self, cfg: SAEConfig) -> None:
        n = cfg.latents
        self.use_zipf = bool(cfg.options.get("aux_zipf", True))
        self.zipf_fraction = float(cfg.options.get("zipf_fraction", 0.5))
        self.zipf_beta = float(cfg.options.get("zipf_beta", 0.99))
        self.register_buffer("firing_rate", torch.full((n,), self.k / n, dtype=torch.float32))
        ranks = torch.arange(1, n + 1, dtype=torch.float32)
        target = 1.0 / ranks
        self.register_buffer("zipf_target", target * (self.k / target.sum()), persistent=False)

    @staticmethod
    def validate_zipf(name: str, cfg: SAEConfig) -> None:
        frac = cfg.options.get("zipf_fraction", 0.5)
        beta = cfg.options.get("zipf_beta", 0.99)
        if not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
            raise ValueError(f"family {name!r}: zipf_fraction={frac!r}; expected a float in [0, 1]")
        if not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ValueError(f"family {name!r}: zipf_beta={beta!r}; expected a float in [0, 1)")

    def underused(self) -> torch.Tensor:
        """Latents firing below zipf_fraction of the Zipf target at their usage rank: [n] bool."""
        order = self.firing_rate.argsort(descending=True)
        target = torch.empty_like(self.firing_rate)
        target[order] = self.zipf_target.to(target.device)
        return self.firing_rate < self.zipf_fraction * target

    def aux_mask(self, dead: torch.Tensor | None) -> torch.Tensor | None:
        """Latents the auxiliary loss trains: dead ones, plus under-used ones under aux_zipf."""
        if not (self.training and self.use_zipf):
            return dead
        under = self.underused()
        return under if dead is None else dead | under

    @torch.no_grad()
    def update_rate(self, code: SparseCode) -> None:
        counts = torch.zeros_like(self.firing_rate)
        fired = code.values != 0
        counts.index_add_(0, code.indices[fired], torch.ones_like(code.values[fired], dtype=torch.float32))
        rate = counts / code.values.shape[0]
        self.firing_rate.mul_(self.zipf_beta).add_((1 - self.zipf_beta) * rate)


class MutualChoice(ZipfAux, BatchTopK):
    """Global top k*B over the batch (BatchTopK's selection) with aux_zipf."""

    name = "mutualchoice"
    option_names = BatchTopK.option_names + ZIPF_OPTIONS

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.init_zipf(cfg)

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        cls.validate_zipf(cls.name, cfg)

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        return super().encode(sae, x_n, dead=self.aux_mask(dead), k=k, k_aux=k_aux)

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder, enc: Encoding, step: TrainStep) -> None:
        super().after_step(sae, enc, step)
        self.update_rate(enc.code)


class FeatureChoice(ZipfAux, ThresholdInference):
    """Each latent keeps its top m tokens of the batch (at most m); per-latent thresholds at inference."""

    name = "featurechoice"
    per_latent_threshold = True
    option_names = ThresholdInference.option_names + ZIPF_OPTIONS + ("m", "batch_size")

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.init_zipf(cfg)

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        cls.validate_zipf(cls.name, cfg)
        m, bs = cfg.options.get("m"), cfg.options.get("batch_size")
        for key, v in (("m", m), ("batch_size", bs)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"family 'featurechoice': {key}={v!r}; expected a positive int")
        if m is not None and bs is not None and m > bs:
            raise ValueError(
                f"family 'featurechoice': m={m} tokens per latent is larger than the batch of batch_size={bs} tokens"
            )

    def tokens_per_latent(self, batch: int, k: int | None = None) -> int:
        """m: the option, else k*B/n rounded (at least 1) so the budget is about k*B pairs."""
        m = self.cfg.options.get("m")
        if m is None:
            return max(1, math.ceil((k or self.k) * batch / self.cfg.latents))
        if m > batch:
            raise ValueError(
                f"featurechoice: m={m} tokens per latent is larger than this batch of {batch} tokens; "
                "use a larger batch or a smaller m"
            )
        return m

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        pre = self.pre(sae, x_n)
        if not self.training and k is None:
            code = self.threshold_select(pre)
            if code is not None:
                return Encoding(code, None)
        code = self.feature_choice(pre, self.tokens_per_latent(pre.shape[0], k))
        mask = self.aux_mask(dead)
        aux = kernels.aux_select(pre, mask, k_aux) if mask is not None else None
        return Encoding(code, aux)

    @staticmethod
    def feature_choice(pre: torch.Tensor, m: int) -> SparseCode:
        """Each column's top m of ReLU(pre) over the batch, packed per token (rows vary in count)."""
        cols = kernels.select(pre.detach().T.contiguous(), "row", k=m)  # [n, m] tokens per latent
        chosen = torch.zeros_like(pre, dtype=torch.bool).T.contiguous()
        chosen.scatter_(1, cols.indices, cols.values > 0)
        kept = torch.where(chosen.T, pre.detach().relu(), torch.zeros_like(pre))
        code = kernels.select(kept, "threshold", threshold=0.0)
        return regather(pre, code)

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder, enc: Encoding, step: TrainStep) -> None:
        self.update_threshold(enc.code, step)
        self.update_rate(enc.code)
