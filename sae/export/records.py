"""What both exports read from a run: its feature statistics, explanations and recorded settings, per latent."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae.analysis.features import STATS_FILE, FeatureStats

__all__ = ["ExportRun", "Example", "NOT_REPRESENTED", "load_run", "record_id"]

_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers?)\.(\d+)\.")

NOT_REPRESENTED = (
    "co-occurring latents: ours are Jaccard indices of firing together, the formats' correlated_features_* are "
    "Pearson correlations and cosine similarities, so they are left empty",
    "vocabulary effects of an encoder: ours are nearest input embeddings (cosine), not logits, so pos_str/neg_str "
    "stay empty for encoders",
    "logits histograms, neuron alignment, decoder weight distribution over heads, DFA values: not computed",
    "explanation scores (detection, fuzzing): Neuronpedia keeps scores as separate typed records; ours go into the "
    "explanation's notes as text",
    "quantile samples: exported as activation bins whose bin_min/bin_max are the range of the samples' peak values "
    "and bin_contains the quantile's share of firings (1 / quantiles)",
    "the dictionary's weights and config: a Neuronpedia source points at them (hfRepoId, saelensConfig), it does not "
    "hold them; pass --hf-repo to name the repository",
)


@dataclass
class Example:
    """One stored context of a latent: display tokens, the latent's activation on each, the peak's position."""

    tokens: list[str]
    values: list[float]
    peak: int
    bin_min: float
    bin_max: float
    bin_contains: float


@dataclass
class ExportRun:
    stats: FeatureStats
    explanations: dict[int, dict[str, Any]]
    model_id: str
    hook: str
    layer: int
    dataset: str
    context_len: int
    contexts: int
    logit_effects: bool
    cfg: dict[str, Any] = field(default_factory=dict)

    def examples(self, latent: dict[str, Any]) -> list[Example]:
        """The top contexts (bin -1..max, as SAEDashboard marks its top group), then each quantile group's samples."""
        out = []
        for ex in latent["top"]:
            out.append(Example(self.stats.text(ex["ids"]), ex["acts"], ex["peak"], -1.0, float(latent["max"]), -1.0))
        q = int(self.stats.meta["quantiles"])
        for group in latent["quantiles"]:
            vals = [e["value"] for e in group["examples"]]
            for ex in group["examples"]:
                out.append(Example(self.stats.text(ex["ids"]), ex["acts"], ex["peak"], min(vals), max(vals), 1.0 / q))
        return out

    def latents(self, chunk: int = 256) -> Iterator[dict[str, Any]]:
        n = self.stats.n_latents
        for lo in range(0, n, chunk):
            yield from self.stats.latents(lo, min(n, lo + chunk))


def record_id(*parts: object) -> str:
    """A stable 25-character id (a letter, then hex), the shape of Neuronpedia's cuids, from what names the record."""
    return "c" + hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:24]


def load_run(path: str | Path, model_id: str = "", layer: int | None = None) -> ExportRun:
    """A run folder (or its statistics file) with the statistics `python -m sae dashboard` writes."""
    from sae.analysis.autointerp.results import load_explanations

    p = Path(path)
    stats_path = p / STATS_FILE if p.is_dir() else p
    if not stats_path.exists():
        raise FileNotFoundError(f"no feature statistics at {stats_path}: write them first with python -m sae dashboard {p}")
    stats = FeatureStats.load(stats_path)
    cfg_path = stats_path.parent / "cfg.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    hook = str(stats.meta.get("hook") or cfg.get("hook_name") or "")
    if layer is None:
        m = _LAYER.search(hook)
        if m is None:
            raise ValueError(f"cannot read a layer number from the hook {hook!r}: pass --layer")
        layer = int(m.group(1))
    kind = str(stats.meta.get("tokens_kind") or "")
    digest = stats.meta.get("identity", {}).get("sae_digest")
    explanations = {  # as the browser shows them: only those of this dictionary
        i: rec for i, rec in load_explanations(stats_path).items() if rec.get("sae_digest") in (None, digest)
    }
    return ExportRun(
        stats=stats,
        explanations=explanations,
        model_id=model_id or str(stats.meta.get("model") or cfg.get("model_name") or "model"),
        hook=hook,
        layer=layer,
        dataset=str(stats.meta.get("identity", {}).get("dataset") or "embedded"),
        context_len=int(stats.meta.get("context_len") or 0),
        contexts=int(stats.meta.get("contexts_done") or 0),
        logit_effects=kind.startswith("logit"),
        cfg=cfg,
    )
