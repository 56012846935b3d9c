"""Which contexts the explainer sees and which are held out for scoring, from the feature statistics alone.

Activating examples are the latent's stored top contexts and activation-quantile samples. The explainer
sees every other top context from the best (ranks 0, 2, 4, ...) and every other quantile sample (group by
group, shuffled within a group); the rest are held out as the scoring positives, so scores are measured on
examples the explanation was not written from, spread over the latent's range as the top ones are.

Non-activating examples are windows of the stored contexts in which the latent has no stored example:
drawn at random, or (`negatives="similar"`) the top contexts of the latents whose decoder rows are most
similar to this one's, which are harder to tell apart. The file does not record every firing, so a
window can hold an unrecorded one: for a latent of firing frequency f about 1 - (1 - f)^width of random
windows do (`expected_contamination`). Every draw is seeded by (seed, latent, purpose), so a latent's
samples are the same whichever latents are processed with it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from sae.analysis.features import FeatureStats

__all__ = [
    "Example",
    "ScoringItem",
    "SampleSettings",
    "LatentSamples",
    "latent_samples",
    "detection_items",
    "fuzzing_items",
    "expected_contamination",
]


@dataclass(frozen=True)
class Example:
    """A token window: ids, the latent's activation on each (zeros for a non-activating window), its peak."""

    ids: tuple[int, ...]
    acts: tuple[float, ...]
    value: float
    peak: int
    source: str  # "top", "quantile", "random" or "similar"

    @property
    def key(self) -> tuple:
        return (self.ids, self.peak, self.value)


@dataclass(frozen=True)
class ScoringItem:
    """One passage the judge scores: `marks` shown (fuzzing) or None (detection), and the right answer."""

    example: Example
    label: bool
    marks: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class SampleSettings:
    """How many examples the explainer sees and scoring uses (at most what the statistics hold)."""

    explain_top: int = 10
    """Top contexts shown to the explainer (ranks 0, 2, 4, ...)."""
    explain_quantile: int = 10
    """Activation-quantile samples shown to the explainer."""
    positives: int = 20
    """Held-out activating examples scored."""
    negatives: int | None = None
    """Non-activating examples for detection (None: as many as the positives)."""
    negative_source: str = "random"
    """'random' windows, or 'similar': top contexts of the latents with the most similar decoder rows."""
    similar_latents: int = 8
    """Neighbours drawn from with negative_source='similar'."""

    def __post_init__(self) -> None:
        for name in ("explain_top", "explain_quantile", "positives", "similar_latents"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name in ("positives", "similar_latents") else 0):
                raise ValueError(f"{name} must be a non-negative integer (positives, similar_latents >= 1), got {v!r}")
        if self.negatives is not None and (isinstance(self.negatives, bool) or not isinstance(self.negatives, int)):
            raise ValueError(f"negatives must be an integer or None, got {self.negatives!r}")
        if self.negative_source not in ("random", "similar"):
            raise ValueError(f"negative_source must be 'random' or 'similar', got {self.negative_source!r}")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LatentSamples:
    """One latent's examples: shown to the explainer, and held out (positives, negatives) for scoring."""

    latent: int
    explain: list[Example]
    positives: list[Example]
    negatives: list[Example] = field(default_factory=list)


def _rng(seed: int, latent: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}:{latent}:{purpose}")


def _as_example(e: dict[str, Any], source: str) -> Example:
    return Example(tuple(e["ids"]), tuple(float(a) for a in e["acts"]), float(e["value"]), int(e["peak"]), source)


def _split(panel: dict[str, Any], settings: SampleSettings, seed: int) -> tuple[list[Example], list[Example]]:
    """(shown to the explainer, held out) from one latent's panel (`FeatureStats.latent`)."""
    rng = _rng(seed, panel["id"], "split")
    top = [_as_example(e, "top") for e in panel["top"]]  # best first
    quant: list[Example] = []
    for g in panel["quantiles"]:  # highest group first
        group = [_as_example(e, "quantile") for e in g["examples"]]
        rng.shuffle(group)
        quant += group
    shown_top, shown_q = top[0::2], quant[0::2]
    held = top[1::2] + shown_top[settings.explain_top :] + quant[1::2] + shown_q[settings.explain_quantile :]
    shown = shown_top[: settings.explain_top] + shown_q[: settings.explain_quantile]
    seen = {e.key for e in shown}
    out = []
    for e in held:
        if e.key not in seen:
            seen.add(e.key)
            out.append(e)
    if len(out) > settings.positives:
        out = rng.sample(out, settings.positives)
    return shown, out


class _Windows:
    """Token windows of the stored contexts, shaped like the statistics' examples (same width, clipped at edges)."""

    def __init__(self, stats: FeatureStats) -> None:
        self.contexts = stats["contexts"]
        self.left, self.right = (int(x) for x in stats.meta["window"])
        self.top_ctx, self.top_pos = stats["top.ctx"], stats["top.pos"]
        self.sample_ctx = stats.tensors.get("sample.ctx")

    def used(self, latent: int) -> set[int]:
        """Contexts in which `latent` has a stored example."""
        ctx = self.top_ctx[latent].tolist() + (self.sample_ctx[latent].tolist() if self.sample_ctx is not None else [])
        return {c for c in ctx if c >= 0}

    def window(self, c: int, p: int, source: str) -> Example:
        T = self.contexts.shape[1]
        lo, hi = max(0, p - self.left), min(T, p + self.right + 1)
        ids = tuple(int(x) for x in self.contexts[c, lo:hi].tolist())
        return Example(ids, (0.0,) * len(ids), 0.0, p - lo, source)

    def random(self, latent: int, n: int, seed: int) -> list[Example]:
        C, T = self.contexts.shape
        used = self.used(latent)
        free = C - len(used)
        if free <= 0 or n <= 0:
            return []
        rng = _rng(seed, latent, "negatives")
        picked: set[tuple[int, int]] = set()
        out: list[Example] = []
        for _ in range(50 * n):
            if len(out) == n or len(picked) >= free * T:
                break
            c, p = rng.randrange(C), rng.randrange(T)
            if c in used or (c, p) in picked:
                continue
            picked.add((c, p))
            out.append(self.window(c, p, "random"))
        return out

    def similar(self, latent: int, n: int, seed: int, neighbours: list[int]) -> list[Example]:
        used = self.used(latent)
        rng = _rng(seed, latent, "similar")
        pools = []
        for j in neighbours:
            pool = [(c, p) for c, p in zip(self.top_ctx[j].tolist(), self.top_pos[j].tolist(), strict=True) if c >= 0]
            rng.shuffle(pool)
            pools.append(pool)
        out: list[Example] = []
        seen: set[int] = set()
        while len(out) < n and any(pools):
            for pool in pools:
                while pool:
                    c, p = pool.pop()
                    if c not in used and c not in seen:  # one window per context, so they are not near-copies
                        seen.add(c)
                        out.append(self.window(c, int(p), "similar"))
                        break
                if len(out) == n:
                    break
        return out + self.random(latent, n - len(out), seed) if len(out) < n else out


def _neighbours(decoder: torch.Tensor, latents: list[int], m: int) -> dict[int, list[int]]:
    """Per latent, the `m` others with the highest decoder cosine."""
    d = decoder.detach().float().cpu()
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = {}
    for s in range(0, len(latents), 256):
        chunk = latents[s : s + 256]
        cos = d[chunk] @ d.T
        cos[torch.arange(len(chunk)), torch.tensor(chunk)] = -torch.inf
        top = cos.topk(min(m, d.shape[0] - 1), dim=1).indices.tolist()
        out.update(dict(zip(chunk, top, strict=True)))
    return out


def latent_samples(
    stats: FeatureStats,
    latents: list[int],
    settings: SampleSettings | None = None,
    seed: int = 0,
    decoder: torch.Tensor | None = None,
    panels: dict[int, dict[str, Any]] | None = None,
    with_negatives: bool = True,
) -> dict[int, LatentSamples]:
    """Each latent's examples: shown to the explainer, held-out positives and negatives.

    `decoder` ([n_latents, d] decoder rows) is needed for `negative_source='similar'`; `panels` are the
    latents' `FeatureStats.latent` dicts when the caller has them already; `with_negatives=False` skips the
    negatives (what explaining alone needs).
    """
    settings = settings or SampleSettings()
    similar = with_negatives and settings.negative_source == "similar"
    if similar:
        if decoder is None:
            raise ValueError("negative_source='similar' needs the decoder rows: pass decoder=sae.W_dec")
        if decoder.shape[0] != stats.n_latents:
            raise ValueError(f"decoder has {decoder.shape[0]} rows, the statistics {stats.n_latents} latents")
    near = _neighbours(decoder, latents, settings.similar_latents) if similar and decoder is not None else {}
    windows = _Windows(stats)
    out = {}
    for i in latents:
        panel = panels[i] if panels is not None and i in panels else stats.latent(i)
        shown, held = _split(panel, settings, seed)
        n_neg = len(held) if settings.negatives is None else settings.negatives
        if not with_negatives:
            negatives = []
        elif similar:
            negatives = windows.similar(i, n_neg, seed, near[i])
        else:
            negatives = windows.random(i, n_neg, seed)
        out[i] = LatentSamples(i, shown, held, negatives)
    return out


def detection_items(samples: LatentSamples, seed: int = 0) -> list[ScoringItem]:
    """Held-out positives (label True) and negatives (False), unmarked, in a seeded order."""
    items = [ScoringItem(e, True) for e in samples.positives] + [ScoringItem(e, False) for e in samples.negatives]
    _rng(seed, samples.latent, "detection-order").shuffle(items)
    return items


def fuzzing_items(samples: LatentSamples, seed: int = 0) -> list[ScoringItem]:
    """Each held-out positive twice: marked where the latent is active (label True), and with as many marks
    on tokens where it is not (False). A window where every token is active has no wrong marks: left out."""
    rng = _rng(seed, samples.latent, "fuzzing")
    items = []
    for e in samples.positives:
        right = tuple(a > 0 for a in e.acts)
        silent = [j for j, on in enumerate(right) if not on]
        if not any(right) or not silent:
            continue
        wrong = set(rng.sample(silent, min(sum(right), len(silent))))
        items.append(ScoringItem(e, True, right))
        items.append(ScoringItem(e, False, tuple(j in wrong for j in range(len(right)))))
    _rng(seed, samples.latent, "fuzzing-order").shuffle(items)
    return items


def expected_contamination(frequency: float, width: int) -> float:
    """Chance that a random window of `width` tokens holds a firing of a latent of this frequency."""
    return 1.0 - (1.0 - min(max(frequency, 0.0), 1.0)) ** width
