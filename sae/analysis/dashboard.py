"""The offline feature browser: `index.html` plus data shards, opened from disk with no server.

`file://` pages cannot fetch JSON, so the data are JavaScript files that hand their JSON to the
page (`data/index.js` for the latent list, `data/shard_NNNNN.js` per `shard_size` latents, loaded
when a latent of theirs is opened). The page's code (`browser/` in this package) inserts every
corpus string as text, never as markup, and loads nothing from the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae.analysis.features import FeatureStats
from sae.checkpoint import atomic_write

__all__ = ["write_browser"]

_ASSETS = Path(__file__).with_name("browser")
_ASSET_FILES = ("index.html", "app.js", "style.css")


def _json(payload: object) -> str:
    """Compact JSON that is also a JavaScript expression; `</` escaped so no string can end a script element."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _rounded(t: torch.Tensor) -> list[float]:
    return [float(f"{x:.4g}") for x in t.tolist()]


_TOKENS_PER_ROW = 6


def _index(stats: FeatureStats, shard_size: int) -> dict:
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
    freq = t["count"].double() / max(int(stats.meta["tokens"]), 1)
    order = torch.sort(-freq, stable=True).indices  # ties by id, as the page sorts
    return {
        "meta": {**meta, "shard_size": shard_size, "tokens_per_row": _TOKENS_PER_ROW},
        "vocab": {str(i): stats.token_text.get(i, f"<{i}>") for i in sorted(used | set(stats.token_text))},
        "columns": {
            "frequency": _rounded(freq),
            "max": _rounded(t["max"]),
            "mean": _rounded(t["sum"] / t["count"].clamp_min(1)),
            "tokens": flat,
        },
        "order_frequency": order.tolist(),
    }


def write_browser(stats: FeatureStats | str | Path, out: str | Path, shard_size: int = 256, progress: bool = True) -> Path:
    """Write the browser for `stats` (a `FeatureStats` or its file) into `out`; returns `out/index.html`."""
    if not isinstance(stats, FeatureStats):
        stats = FeatureStats.load(stats)
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
        _write(data / f"shard_{k // shard_size:05d}.js", f"window.SAE_SHARD({k // shard_size}, {_json(latents)});\n")
    # JSON.parse of a string literal parses faster than the same object as a JavaScript literal
    _write(data / "index.js", f"window.SAE_INDEX = JSON.parse({json.dumps(_json(_index(stats, shard_size)))});\n")
    return out / "index.html"
