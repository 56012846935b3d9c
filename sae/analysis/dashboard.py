"""The offline feature browser: `index.html` plus data shards, opened from disk with no server.

`file://` pages cannot fetch JSON, so the data are JavaScript files that hand their JSON to the
page (`data/index.js` for the latent list, `data/shard_NNNNN.js` per `shard_size` latents, loaded
when a latent of theirs is opened). The page's code (`browser/` in this package) inserts every
corpus string as text, never as markup, and loads nothing from the network.

A transcoder's page names its input and target hooks; a CLT's list has a layer column (sortable) and each
feature's page a "writes to layers" panel: the norm of its decoder slice for each layer it writes to.

Explanations (`explanations.jsonl`, from `python -m sae explain`) join the list (a column per text and
score, searched and sorted by the page) and each latent's panels; they are model output, shown as text too.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae.analysis.features import FeatureStats
from sae.io import write_text_atomic

__all__ = ["write_browser"]

_ASSETS = Path(__file__).with_name("browser")
_ASSET_FILES = ("index.html", "app.js", "style.css")


def script_json(payload: object) -> str:
    """Compact JSON that is also a JavaScript expression; `</` escaped so no string can end a script element."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def script_data(payload: object) -> str:
    """A JavaScript expression of `payload` for a page's data script: JSON.parse of one string literal, which
    parses faster than the same object written as a literal and cannot end the script element."""
    return f"JSON.parse({json.dumps(script_json(payload))})"


def _rounded(t: torch.Tensor) -> list[float]:
    return [float(f"{x:.4g}") for x in t.tolist()]


_TOKENS_PER_ROW = 6


_TRANSCODER_META = ("target_hook", "d_out", "layers", "first_layer", "latents_per_layer")
_SHOWN = ("explanation", "judge", "scorer", "prompt_version", "samples", "scores", "unparsed", "skipped")


def _autointerp(stats: FeatureStats, explanations: Mapping[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The explanation lines the browser shows: those of this dictionary (a line records its dictionary's digest)."""
    digest = stats.meta.get("identity", {}).get("sae_digest")
    keep, stale = {}, 0
    for i, rec in explanations.items():
        if not 0 <= int(i) < stats.n_latents:
            raise ValueError(f"an explanation for latent {i}, but this dictionary has {stats.n_latents} latents")
        if digest is not None and rec.get("sae_digest") not in (None, digest):
            stale += 1
            continue
        keep[int(i)] = {k: rec.get(k) for k in _SHOWN}
    if stale:
        warnings.warn(f"{stale} explanations are of another dictionary (sae_digest differs): not shown", stacklevel=3)
    return keep


def _index(stats: FeatureStats, shard_size: int, explained: Mapping[int, dict[str, Any]] | None = None) -> dict:
    """The latent list: columns per latent, the default order (frequency, descending) precomputed."""
    t = stats.tensors
    tokens = stats.peak_tokens()
    if "tokens.top_ids" in t:
        top_vocab = t["tokens.top_ids"][:, :3].tolist()
        tokens = [a + [b for b in v if b not in a] for a, v in zip(tokens, top_vocab, strict=True)]
    used = {i for row in tokens for i in row}
    flat = [x for row in tokens for x in (row + [-1] * _TOKENS_PER_ROW)[:_TOKENS_PER_ROW]]
    meta = {
        k: stats.meta[k] for k in ("n_latents", "tokens", "model", "hook", "tokens_kind", "context_len", "cooc_sample_tokens")
    }
    meta.update({k: stats.meta[k] for k in _TRANSCODER_META if k in stats.meta})
    freq = t["count"].double() / max(int(stats.meta["tokens"]), 1)
    order = torch.sort(-freq, stable=True).indices  # ties by id, as the page sorts
    columns: dict[str, Any] = {
        "frequency": _rounded(freq),
        "max": _rounded(t["max"]),
        "mean": _rounded(t["sum"] / t["count"].clamp_min(1)),
        "tokens": flat,
    }
    if stats.is_clt:
        per, first = int(stats.meta["latents_per_layer"]), int(stats.meta["first_layer"])
        columns["layer"] = [first + i // per for i in range(stats.n_latents)]
    methods: list[str] = []
    if explained:
        n = stats.n_latents
        columns["explanation"] = [explained[i]["explanation"] if i in explained else None for i in range(n)]
        methods = sorted({m for rec in explained.values() for m in (rec.get("scores") or {})})
        for m in methods:
            columns[f"score_{m}"] = [
                ((explained[i].get("scores") or {}).get(m) or {}).get("balanced_accuracy") if i in explained else None
                for i in range(n)
            ]
    return {
        "meta": {**meta, "shard_size": shard_size, "tokens_per_row": _TOKENS_PER_ROW, "score_methods": methods},
        "vocab": {str(i): stats.token_text.get(i, f"<{i}>") for i in sorted(used | set(stats.token_text))},
        "columns": columns,
        "order_frequency": order.tolist(),
    }


def write_browser(
    stats: FeatureStats | str | Path,
    out: str | Path,
    shard_size: int = 256,
    progress: bool = True,
    explanations: Mapping[int, dict[str, Any]] | str | Path | None = None,
) -> Path:
    """Write the browser for `stats` (a `FeatureStats` or its file) into `out`; returns `out/index.html`.

    `explanations` (explanations.jsonl lines by latent, or that file) are shown with the latents; by
    default the file beside a statistics file given by path, when there is one.
    """
    from sae.analysis.autointerp.results import explanations_path, load_explanations

    if explanations is None and not isinstance(stats, FeatureStats):
        explanations = explanations_path(stats)
    if not isinstance(stats, FeatureStats):
        stats = FeatureStats.load(stats)
    if isinstance(explanations, (str, Path)):
        explanations = load_explanations(explanations)
    explained = _autointerp(stats, explanations) if explanations else {}
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the browser needs a folder")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob("shard_*.js"):
        old.unlink()  # a smaller dictionary written over a larger one leaves no stale shards
    for name in _ASSET_FILES:
        shutil.copyfile(_ASSETS / name, out / name)
    n = stats.n_latents
    for k in tqdm(range(0, n, shard_size), desc="browser shards", unit="shard", disable=not progress):
        latents = stats.latents(k, min(n, k + shard_size))
        for latent in latents:
            if latent["id"] in explained:
                latent["autointerp"] = explained[latent["id"]]
        shard = f"window.SAE_SHARD({k // shard_size}, {script_json(latents)});\n"
        write_text_atomic(data / f"shard_{k // shard_size:05d}.js", shard)
    write_text_atomic(data / "index.js", f"window.SAE_INDEX = {script_data(_index(stats, shard_size, explained))};\n")
    return out / "index.html"
