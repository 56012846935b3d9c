"""Per-latent feature statistics in one streaming pass, written to one file.

`feature_stats(sae, model, source)` runs the model over `tokens` tokens of text, encodes each
batch with the dictionary and keeps, per latent: firing count, activation sum and max, an
activation histogram, the top-N contexts (a token window around the peak with that latent's
activation on every token), a uniform sample of firings (grouped by activation quantile at the
end), the most co-occurring latents (on a token sample) and logit effects or nearest tokens.

A transcoder's latents are read at its input hook (their contexts are where its input makes them fire) and act
through its decoder rows, in its target's space (the vocabulary view needs a target as wide as the model). A CLT's
feature l * n + f is read at its layer's input hook; its output effect is what it writes into every layer it
reaches (its decoder rows summed, in raw space), and `writes` [L * n, L] holds the norm of its decoder slice for
each target layer (zero before its own layer): which layers it writes to, and how much.

Memory is bounded by n_latents x (top_n + samples) x window, never tokens x n_latents: each batch
is encoded to its sparse code and merged into fixed-size per-latent tables with batched torch
ops (sort, scatter, topk), so the same code runs on a GPU. The pass writes a partial file every
`checkpoint_every` contexts and resumes from it when run again with the same arguments.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from activations.source import TextSource, as_source
from sae.analysis.interventions import input_hooks
from sae.checkpoint import atomic_write

__all__ = ["FEATURE_TEXT", "FeatureStats", "feature_stats", "STATS_FILE"]

STATS_FILE = "feature_stats.safetensors"
_META_KEY = "saekit_feature_stats"
_FORMAT = 1
_HIST_BINS = 32
_LOGIT_K = 10
_COOC_M = 8
_PRE_ACT_BUDGET = 1 << 24  # elements of the [batch tokens, n_latents] pre-activations held per forward
FEATURE_TEXT = TextSource(context_len=64)  # what a dataset given on its own is read as: its train split

# --- batched per-latent tables ----------------------------------------------------------------


def _rank_in_group(group: torch.Tensor) -> torch.Tensor:
    """For a sorted 1-D `group` tensor, each element's position within its run of equal values."""
    pos = torch.arange(group.numel(), device=group.device)
    start = torch.ones_like(group, dtype=torch.bool)
    start[1:] = group[1:] != group[:-1]
    first = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
    return pos - first


def _top_per_group(group: torch.Tensor, key: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` largest `key`s of each `group` value (any order), by two stable sorts."""
    order = torch.argsort(key, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    return order[_rank_in_group(group[order]) < keep]


class _TopTable:
    """Per latent, the K entries with the largest key: key, value, context id, peak position, window."""

    def __init__(self, n: int, k: int, width: int, device: torch.device) -> None:
        self.key = torch.full((n, k), -math.inf, device=device)
        self.value = torch.zeros(n, k, device=device)
        self.ctx = torch.full((n, k), -1, dtype=torch.long, device=device)
        self.pos = torch.zeros(n, k, dtype=torch.int32, device=device)
        self.window = torch.zeros(n, k, width, dtype=torch.float16, device=device)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": getattr(self, name) for name in ("key", "value", "ctx", "pos", "window")}

    def load(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        for name in ("key", "value", "ctx", "pos", "window"):
            getattr(self, name).copy_(tensors[f"{prefix}.{name}"])

    def merge(
        self, latent: torch.Tensor, key: torch.Tensor, value: torch.Tensor, ctx: torch.Tensor, pos: torch.Tensor, windows
    ) -> None:
        """Merge candidates (one per row of the 1-D inputs); `windows(sel)` gives the new entries' [E, width]."""
        k = self.key.shape[1]
        live = key > self.key[latent, -1]  # cannot enter a full row otherwise
        if not bool(live.any()):
            return
        cand = live.nonzero().squeeze(1)[_top_per_group(latent[live], key[live], k)]
        cand = cand[torch.argsort(latent[cand], stable=True)]
        rows, slot_of = torch.unique_consecutive(latent[cand], return_inverse=True)
        slot = _rank_in_group(latent[cand])
        ck = torch.full((rows.numel(), k), -math.inf, device=key.device)
        ci = torch.full((rows.numel(), k), -1, dtype=torch.long, device=key.device)
        ck[slot_of, slot] = key[cand]
        ci[slot_of, slot] = cand
        both = torch.cat([self.key[rows], ck], 1)  # [R, 2K]
        top = both.topk(k, dim=1).indices  # [R, K]
        is_new = (top >= k) & (both.gather(1, top) > -math.inf)  # an empty candidate slot is not new
        old = top.clamp(max=k - 1)
        for name in ("key", "value", "ctx", "pos"):
            t = getattr(self, name)
            t[rows] = t[rows].gather(1, old)
        self.window[rows] = self.window[rows].gather(1, old[..., None].expand(-1, -1, self.window.shape[2]))
        r, s = is_new.nonzero(as_tuple=True)
        sel = ci[r, top[r, s] - k]
        rr = rows[r]
        self.key[rr, s] = key[sel]
        self.value[rr, s] = value[sel]
        self.ctx[rr, s] = ctx[sel]
        self.pos[rr, s] = pos[sel].to(torch.int32)
        self.window[rr, s] = windows(sel).to(torch.float16)


class _Histogram:
    """Per-latent histogram of activations on [0, upper), upper a power of two that doubles as needed.

    Doubling merges neighbouring bins, so one pass needs no range fixed in advance.
    """

    def __init__(self, n: int, bins: int, device: torch.device) -> None:
        self.counts = torch.zeros(n, bins, dtype=torch.int64, device=device)
        self.upper = torch.zeros(n, device=device)

    def add(self, latent: torch.Tensor, value: torch.Tensor, max_per_latent: torch.Tensor) -> None:
        bins = self.counts.shape[1]
        fired = max_per_latent > 0
        fresh = fired & (self.upper == 0)
        self.upper[fresh] = torch.exp2(torch.ceil(torch.log2(max_per_latent[fresh] * (1 + 1e-6))))
        need = torch.ceil(torch.log2(max_per_latent / self.upper.clamp_min(1e-30) * (1 + 1e-6))).clamp_min(0)
        need = torch.where(fired, need, torch.zeros_like(need)).long()
        for step in range(int(need.max()) if need.numel() else 0):
            rows = (need > step).nonzero().squeeze(1)
            c = self.counts[rows]
            merged = c[:, 0::2] + c[:, 1::2]
            self.counts[rows] = torch.cat([merged, torch.zeros_like(merged)], 1)
            self.upper[rows] *= 2
        b = (value / self.upper[latent] * bins).long().clamp(0, bins - 1)
        flat = self.counts.view(-1)
        flat.index_add_(0, latent * bins + b, torch.ones_like(b))

    def quantile_of(self, latent: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Fraction of a latent's firings below `value` (bin-resolution estimate)."""
        bins = self.counts.shape[1]
        cdf = self.counts.cumsum(1).float()
        total = cdf[:, -1].clamp_min(1)
        b = (value / self.upper[latent].clamp_min(1e-30) * bins).long().clamp(0, bins - 1)
        below = torch.where(b > 0, cdf[latent, (b - 1).clamp_min(0)], torch.zeros_like(value))
        return (below + 0.5 * self.counts[latent, b].float()) / total[latent]


# --- the result -------------------------------------------------------------------------------


@dataclass
class FeatureStats:
    """What `feature_stats` computed; `latent(i)` gives one latent's panels as plain data."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    token_text: dict[int, str] = field(default_factory=dict)

    @property
    def n_latents(self) -> int:
        return int(self.meta["n_latents"])

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def save(self, path: str | Path) -> Path:
        """One safetensors file; meta and token strings as JSON in its header."""
        path = Path(path)
        meta = {**self.meta, "token_text": {str(k): v for k, v in self.token_text.items()}}
        tensors = {k: v.contiguous().cpu() for k, v in self.tensors.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read a file written by `save` (or by `feature_stats`)."""
        path = Path(path)
        if path.is_dir():
            path = path / STATS_FILE
        if not path.exists():
            raise FileNotFoundError(f"no feature statistics at {path}: run feature_stats (or python -m sae dashboard)")
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(_META_KEY)
            if header is None:
                raise ValueError(f"{path} is a safetensors file but not feature statistics (no {_META_KEY} header)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(header)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: feature statistics format {meta.get('format')!r}, expected {_FORMAT}")
        text = {int(k): v for k, v in meta.pop("token_text").items()}
        return cls(meta, tensors, text)

    def text(self, ids) -> list[str]:
        """Display strings of token ids (-1, outside a context, is '')."""
        return [self.token_text.get(int(i), f"<{int(i)}>") if int(i) >= 0 else "" for i in ids]

    def _examples(self, prefix: str, lo: int, hi: int) -> list[list[dict[str, Any]]]:
        """Per latent in [lo, hi): its stored examples (value, token ids, activations, peak index)."""
        t = self.tensors
        ctx = t[f"{prefix}.ctx"][lo:hi]
        r, j = (ctx >= 0).nonzero(as_tuple=True)  # only the slots that hold an example
        left, width = int(self.meta["window"][0]), t[f"{prefix}.window"].shape[2]
        contexts = t["contexts"].long()
        q = t[f"{prefix}.pos"][lo:hi][r, j].long()[:, None] - left + torch.arange(width)  # [E, W] positions
        ok = (q >= 0) & (q < contexts.shape[1])
        ids = torch.where(ok, contexts[ctx[r, j][:, None], q.clamp(0, contexts.shape[1] - 1)], -1)
        full = ok.all(1).tolist()
        id_rows, ok_rows = ids.tolist(), ok.tolist()
        acts = t[f"{prefix}.window"][lo:hi][r, j].double().mul(1e4).round().div(1e4).tolist()
        values = t[f"{prefix}.value"][lo:hi][r, j].double().mul(1e5).round().div(1e5).tolist()
        out: list[list[dict[str, Any]]] = [[] for _ in range(hi - lo)]
        for e, row in enumerate(r.tolist()):
            if full[e]:
                out[row].append({"value": values[e], "ids": id_rows[e], "acts": acts[e], "peak": left})
            else:
                keep = [w for w in range(width) if ok_rows[e][w]]
                out[row].append(
                    {
                        "value": values[e],
                        "ids": [id_rows[e][w] for w in keep],
                        "acts": [acts[e][w] for w in keep],
                        "peak": keep.index(left),
                    }
                )
        return out

    def latents(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """Panels of latents lo..hi-1 as plain data (what the browser and `show` display)."""
        if not 0 <= lo < hi <= self.n_latents:
            raise IndexError(f"latents {lo}..{hi - 1} out of range: this dictionary has {self.n_latents} latents")
        t = self.tensors
        q = int(self.meta["quantiles"])
        top = self._examples("top", lo, hi)
        has_samples = "sample.ctx" in t
        samples = self._examples("sample", lo, hi) if has_samples else [[] for _ in top]
        quants = (
            [
                [x for x, c in zip(qr, cr, strict=True) if c >= 0]
                for qr, cr in zip(t["sample.quantile"][lo:hi].tolist(), t["sample.ctx"][lo:hi].tolist(), strict=True)
            ]
            if has_samples
            else [[] for _ in top]
        )
        count, total, peak = t["count"][lo:hi].tolist(), t["sum"][lo:hi].tolist(), t["max"][lo:hi].tolist()
        upper, hist = t["hist.upper"][lo:hi].tolist(), t["hist.counts"][lo:hi].tolist()
        cl, cj = t["cooc.latent"][lo:hi].tolist(), t["cooc.jaccard"][lo:hi].tolist()
        kind = self.meta["tokens_kind"]
        if kind:
            vocab = [t[f"tokens.{k}"][lo:hi].tolist() for k in ("top_ids", "top_values", "bottom_ids", "bottom_values")]
        writes = t["clt.writes"][lo:hi].tolist() if "clt.writes" in t else None
        out = []
        for r in range(hi - lo):
            groups: dict[int, list[dict[str, Any]]] = {}
            for e, quant in zip(samples[r], quants[r], strict=True):
                groups.setdefault(min(int(quant * q), q - 1), []).append(e)
            latent = {
                "id": lo + r,
                "count": count[r],
                "frequency": count[r] / max(int(self.meta["tokens"]), 1),
                "mean": total[r] / max(count[r], 1),
                "max": peak[r],
                "hist": {"upper": upper[r], "counts": hist[r]},
                "top": sorted(top[r], key=lambda e: -e["value"]),
                "quantiles": [
                    {"group": g, "low": g / q, "high": (g + 1) / q, "examples": sorted(groups[g], key=lambda e: -e["value"])}
                    for g in sorted(groups, reverse=True)
                ],
                "cooccurring": [(j, round(s, 4)) for j, s in zip(cl[r], cj[r], strict=True) if j >= 0],
                "tokens_kind": kind,
            }
            if kind:
                latent["tokens_top"] = [(a, round(b, 4)) for a, b in zip(vocab[0][r], vocab[1][r], strict=True)]
                latent["tokens_bottom"] = [(a, round(b, 4)) for a, b in zip(vocab[2][r], vocab[3][r], strict=True)]
            if writes is not None:
                latent.update(self._clt_fields(lo + r, writes[r]))
            out.append(latent)
        return out

    @property
    def is_clt(self) -> bool:
        """Whether these are a CLT's features (each of one layer, writing to that layer and later ones)."""
        return int(self.meta.get("layers", 1)) > 1

    def _clt_fields(self, i: int, writes: list[float]) -> dict[str, Any]:
        """A CLT feature's layer, its latent within the layer, and [target layer, decoder norm] for each layer it
        writes to."""
        per, first = int(self.meta["latents_per_layer"]), int(self.meta["first_layer"])
        own = i // per
        return {
            "layer": first + own,
            "local": i % per,
            "writes": [[first + j, round(w, 5)] for j, w in enumerate(writes) if j >= own],
        }

    def latent(self, i: int) -> dict[str, Any]:
        """One latent's panels: summary numbers, histogram, top contexts, quantile samples, tokens, co-occurrence."""
        if not 0 <= i < self.n_latents:
            raise IndexError(f"latent {i} out of range: this dictionary has {self.n_latents} latents")
        return self.latents(i, i + 1)[0]

    def peak_tokens(self, n: int = 3) -> list[list[int]]:
        """Per latent, the distinct tokens at the peaks of its top contexts, best first (for search by text)."""
        t = self.tensors
        order = torch.argsort(t["top.value"], dim=1, descending=True)
        ctx, pos = t["top.ctx"].gather(1, order), t["top.pos"].gather(1, order).long()
        tok = torch.where(ctx >= 0, t["contexts"].long()[ctx.clamp_min(0), pos], -1).tolist()
        out = []
        for row in tok:
            seen: list[int] = []
            for x in row:
                if x >= 0 and x not in seen:
                    seen.append(x)
                    if len(seen) == n:
                        break
            out.append(seen)
        return out


# --- the pass ---------------------------------------------------------------------------------


def _vocab_effects(sae, model, chunk: int = 1024) -> tuple[str | None, dict[str, torch.Tensor]]:
    """Top / bottom tokens of each latent's decoder direction (`_decoder_rows`): logit effects, or nearest input
    embeddings; none when what the dictionary writes is not as wide as the model."""
    W_U = model.unembedding()
    if W_U is not None:
        kind, M = "logit effect (W_dec @ W_U)", W_U.float().cpu()
    else:
        W_E = model.input_embedding().float().cpu()
        kind, M = (
            "nearest input embeddings (cosine of W_dec row and W_E row)",
            (W_E / W_E.norm(dim=1, keepdim=True).clamp_min(1e-12)).T,
        )
    if M.shape[0] != sae.cfg.out_width:
        return None, {}  # the hook's width is not the model's width (e.g. an MLP hook): no vocabulary view
    W_dec = _decoder_rows(sae)
    if sae.cfg.is_clt:
        kind = kind.replace("W_dec", "W_dec summed over target layers")
    if W_U is None:
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(_LOGIT_K, M.shape[1])
    parts: dict[str, list[torch.Tensor]] = {"top_ids": [], "top_values": [], "bottom_ids": [], "bottom_values": []}
    for s in range(0, W_dec.shape[0], chunk):
        e = W_dec[s : s + chunk] @ M  # [chunk, vocab]
        hi, lo = e.topk(k, dim=1), e.topk(k, dim=1, largest=False)
        parts["top_ids"].append(hi.indices)
        parts["top_values"].append(hi.values)
        parts["bottom_ids"].append(lo.indices)
        parts["bottom_values"].append(lo.values)
    return kind, {f"tokens.{k}": torch.cat(v) for k, v in parts.items()}


def _cooccurrence(sample: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent the `m` latents with the highest Jaccard index of firing together, on sampled tokens.

    `sample` [S, w] holds the active latent ids of each sampled token (-1 for none).
    """
    latent = torch.full((n, m), -1, dtype=torch.long)
    score = torch.zeros(n, m)
    if sample.numel() == 0:
        return latent, score
    a = sample[:, :, None].expand(-1, -1, sample.shape[1])
    b = sample[:, None, :].expand(-1, sample.shape[1], -1)
    ok = (a >= 0) & (b >= 0)
    count = torch.bincount(sample[sample >= 0], minlength=n)
    keys = a[ok & (a != b)] * n + b[ok & (a != b)]
    if keys.numel() == 0:
        return latent, score
    pair, together = torch.unique(keys, return_counts=True)
    i, j = pair // n, pair % n
    jac = together / (count[i] + count[j] - together).clamp_min(1)
    keep = _top_per_group(i, jac, m)
    i, j, jac = i[keep], j[keep], jac[keep]
    order = torch.argsort(jac, descending=True, stable=True)
    order = order[torch.argsort(i[order], stable=True)]
    slot = _rank_in_group(i[order])
    latent[i[order], slot] = j[order]
    score[i[order], slot] = jac[order].float()
    return latent, score


def _pad_cat(rows: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate [S_i, w_i] latent-id tables, padding narrower ones with -1."""
    rows = [r for r in rows if r.numel()]
    if not rows:
        return torch.zeros(0, 1, dtype=torch.long)
    w = max(r.shape[1] for r in rows)
    return torch.cat([torch.nn.functional.pad(r.long(), (0, w - r.shape[1]), value=-1) for r in rows])


def token_strings(tokenizer, ids) -> dict[int, str]:
    """Display text of each token id, spacing included, so consecutive tokens read as the text they came from.

    WordPiece (BERT, MiniLM) marks word continuations with '##' and drops spaces: a piece without the mark
    gets a leading space. Byte-level BPE and SentencePiece pieces carry their space already.
    """
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    prefix = getattr(model, "continuing_subword_prefix", None) if type(model).__name__ == "WordPiece" else None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = {}
    for i in sorted({int(x) for x in ids if int(x) >= 0}):
        tok = tokenizer.convert_ids_to_tokens(i)
        if prefix and i not in special:
            out[i] = tok[len(prefix) :] if tok.startswith(prefix) else " " + tok
            continue
        try:
            out[i] = tokenizer.convert_tokens_to_string([tok])
        except Exception:  # noqa: BLE001 - some tokenizers cannot render a lone piece; show the raw piece
            out[i] = str(tok)
        if out[i] == "" and tok:
            out[i] = str(tok)
    return out


def _identity(
    sae, model, source: TextSource, tokens, top_n, quantiles, per_quantile, window, cooc_tokens, seed
) -> dict[str, Any]:
    w = sae.W_dec.detach() if not sae.cfg.is_clt else torch.cat([W.detach().reshape(-1) for W in sae.decoders()])
    ident = {
        "format": _FORMAT,
        "n_latents": sae.cfg.n_features,
        "d_in": sae.cfg.d_in,
        "hook": sae.cfg.hook_name,
        "model": model.name,
        "dataset": source.describe(),
        "tokens_target": tokens,
        "context_len": source.context_len,
        "top_n": top_n,
        "quantiles": quantiles,
        "per_quantile": per_quantile,
        "window": list(window),
        "cooc_tokens": cooc_tokens,
        "seed": seed,
        "sae_digest": f"{float(w.double().sum()):.10e}/{float(w.double().abs().sum()):.10e}",
    }
    if sae.cfg.is_transcoder:
        ident.update(_kind_meta(sae))
    return ident


def _kind_meta(sae) -> dict[str, Any]:
    """What statistics record of a transcoder (its target) and a CLT (its layers) beside an SAE's fields."""
    cfg = sae.cfg
    return {
        "target_hook": cfg.target_hook,
        "d_out": cfg.out_width,
        "layers": cfg.layers,
        "first_layer": cfg.first_layer,
        "latents_per_layer": cfg.latents,
    }


def _decoder_rows(sae) -> torch.Tensor:
    """Each latent's output direction [n_features, d_out], in raw space: W_dec's row; a CLT feature's decoder slices
    summed over the layers it writes to (what it adds to the residual stream, all of it read by what follows)."""
    if not sae.cfg.is_clt:
        return sae.W_dec.detach().float().cpu()
    return torch.cat([W.detach().float().sum(1) for W in sae.folded().decoders()]).cpu()


def clt_writes(sae) -> torch.Tensor:
    """[L * n, L]: the norm of each CLT feature's decoder slice for each target layer, in raw space (zero for the
    layers before its own): which layers it writes to, and how much."""
    L, n = sae.cfg.layers, sae.cfg.latents
    out = torch.zeros(L * n, L)
    for layer, W in enumerate(sae.folded().decoders()):
        out[layer * n : (layer + 1) * n, layer:] = W.detach().float().norm(dim=2).cpu()
    return out


def feature_stats(
    sae,
    model,
    source: TextSource | Any = None,
    *,
    tokens: int = 65_536,
    top_n: int = 20,
    quantiles: int = 10,
    per_quantile: int = 2,
    window: tuple[int, int] = (8, 4),
    split: str | None = None,
    context_len: int | None = None,
    cooc_tokens: int = 4096,
    exclude_special: bool = True,
    out: str | Path | None = None,
    checkpoint_every: int = 256,
    batch_tokens: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> FeatureStats:
    """Per-latent statistics of `sae` over `tokens` tokens of text, in one streaming pass.

    `model` is a `ModelAdapter` or a name for `load_model`; `source` is a `TextSource`, read as given, or
    anything `load_text` takes, read as `FEATURE_TEXT` (its train split, 64-token contexts; None: the
    embedded corpus, whose held-out "test" split has only about 18k tokens); `split` and `context_len`,
    when given, replace the source's (a context longer than the model's is cut to it). With `out` the
    result is written there (a file, or `feature_stats.safetensors` in a folder) and a partial file
    beside it lets an interrupted pass resume. Token windows are `window = (before, after)` tokens around the peak.
    `batch_tokens` (tokens per forward) defaults to what keeps the `[tokens, n_latents]`
    pre-activations of one batch at 2^24 elements.
    """
    from activations import load_model

    src = as_source(source, FEATURE_TEXT, split=split, context_len=context_len)
    for name, v, lo in (
        ("tokens", tokens, 1),
        ("top_n", top_n, 1),
        ("quantiles", quantiles, 1),
        ("per_quantile", per_quantile, 0),
        ("cooc_tokens", cooc_tokens, 0),
        ("checkpoint_every", checkpoint_every, 1),
        ("batch_tokens", batch_tokens or 1, 1),
    ):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if len(window) != 2 or min(window) < 0:
        raise ValueError(f"window must be (tokens before, tokens after), both >= 0, got {window!r}")
    model = load_model(model)
    hooks = list(input_hooks(model, sae))  # a transcoder's input hook; a CLT's, one per layer
    if src.context_len > model.max_context:
        src = src.replace(context_len=model.max_context)
    context_len = src.context_len
    path = None
    if out is not None:
        path = Path(out)
        path = path / STATS_FILE if path.is_dir() or path.suffix != ".safetensors" else path
    partial = path.with_name(path.name + ".partial") if path else None
    n, device = sae.cfg.n_features, sae.W_enc.device
    ident = _identity(sae, model, src, tokens, top_n, quantiles, per_quantile, window, cooc_tokens, seed)
    width = window[0] + 1 + window[1]
    top = _TopTable(n, top_n, width, device)
    samples = _TopTable(n, quantiles * per_quantile, width, device) if per_quantile else None
    hist = _Histogram(n, _HIST_BINS, device)
    count = torch.zeros(n, dtype=torch.int64, device=device)
    total = torch.zeros(n, dtype=torch.float64, device=device)
    peak = torch.zeros(n, device=device)
    contexts: list[torch.Tensor] = []
    cooc: list[torch.Tensor] = []
    done_ctx, done_tokens = 0, 0
    if partial is not None and partial.exists():
        state = FeatureStats.load(partial)
        if state.meta["identity"] != ident:
            diff = {k: (state.meta["identity"].get(k), v) for k, v in ident.items() if state.meta["identity"].get(k) != v}
            raise ValueError(
                f"{partial} is a partial pass with other settings {diff} (was, now): delete it or pass the same arguments"
            )
        t = state.tensors
        top.load("top", t)
        if samples is not None:
            samples.load("sample", t)
        hist.counts.copy_(t["hist.counts"]), hist.upper.copy_(t["hist.upper"])
        count.copy_(t["count"]), total.copy_(t["sum"]), peak.copy_(t["max"])
        contexts = [t["contexts"]]
        cooc = [t["cooc.sample"]]
        done_ctx, done_tokens = int(state.meta["contexts_done"]), int(state.meta["tokens"])

    def checkpoint(final: bool) -> FeatureStats:
        t = {
            **top.tensors("top"),
            "hist.counts": hist.counts,
            "hist.upper": hist.upper,
            "count": count,
            "sum": total,
            "max": peak,
            "contexts": torch.cat(contexts) if contexts else torch.zeros(0, context_len, dtype=torch.int32),
            "cooc.sample": _pad_cat(cooc),
        }
        if samples is not None:
            t.update(samples.tensors("sample"))
        meta = {"format": _FORMAT, "identity": ident, "contexts_done": done_ctx, "tokens": done_tokens}
        return FeatureStats(meta, {k: v.cpu() for k, v in t.items()})

    per_batch = max(1, (batch_tokens or min(4096, _PRE_ACT_BUDGET // n)) // context_len)
    special = torch.tensor(sorted(model.special_token_ids), dtype=torch.long, device=device)
    stream = src.contexts(model, src.open(streaming=True))
    n_ctx_target = math.ceil(tokens / context_len)
    cooc_p = min(1.0, cooc_tokens / max(tokens, 1))
    bar = tqdm(
        total=n_ctx_target * context_len, initial=done_ctx * context_len, unit="tok", desc="feature stats", disable=not progress
    )
    batch: list[torch.Tensor] = []
    index = 0
    since_ckpt = 0
    sae_was_training = sae.training
    sae.eval()

    def process(ctx_tokens: torch.Tensor, first_ctx: int) -> None:
        nonlocal done_tokens
        C, T = ctx_tokens.shape
        out = model.run(ctx_tokens, hooks)
        parts = [out[h].reshape(C * T, -1) for h in hooks]
        acts = torch.stack(parts, 1) if sae.cfg.is_clt else parts[0]
        with torch.no_grad():
            code = sae.encode(acts.to(device))
        vals = code.values.float().abs()
        idx = code.indices.long()
        toks = ctx_tokens.to(device).reshape(-1)
        if exclude_special and special.numel():
            vals = vals * ~torch.isin(toks, special)[:, None]
        fired = vals > 0
        w = idx.shape[1]
        tok_of = torch.arange(C * T, device=device)[:, None].expand(-1, w)[fired]
        lat, val = idx[fired], vals[fired]
        count.index_add_(0, lat, torch.ones_like(lat))
        total.index_add_(0, lat, val.double())
        batch_max = torch.zeros(n, device=device).scatter_reduce_(0, lat, val, "amax")
        peak.copy_(torch.maximum(peak, batch_max))
        hist.add(lat, val, batch_max)
        idx3, vals3 = idx.view(C, T, w), vals.view(C, T, w)

        def windows_for(c_local: torch.Tensor, lat_e: torch.Tensor, pos_e: torch.Tensor) -> torch.Tensor:
            q = pos_e[:, None] + torch.arange(-window[0], window[1] + 1, device=device)  # [E, W]
            valid = (q >= 0) & (q < T)
            qc = q.clamp(0, T - 1)
            hit = idx3[c_local[:, None], qc] == lat_e[:, None, None]  # [E, W, w]
            return (vals3[c_local[:, None], qc] * hit).sum(-1) * valid

        # top contexts: each (context, latent) enters with its peak token
        c_of, p_of = tok_of // T, tok_of % T
        order = _top_per_group(c_of * n + lat, val, 1)
        cl, ll, vl, pl = c_of[order], lat[order], val[order], p_of[order]
        top.merge(ll, vl, vl, cl + first_ctx, pl, lambda s: windows_for(cl[s], ll[s], pl[s]))
        # uniform sample of firings: the largest random keys (priority sampling), reproducible per batch
        if samples is not None:
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + first_ctx)
            key = torch.rand(lat.shape, generator=gen, device=device)
            samples.merge(lat, key, val, c_of + first_ctx, p_of, lambda s: windows_for(c_of[s], lat[s], p_of[s]))
        if cooc_p > 0:
            gen = torch.Generator(device=device).manual_seed(seed * 2_000_003 + first_ctx)
            pick = torch.rand(C * T, generator=gen, device=device) < cooc_p
            cooc.append(torch.where(fired[pick], idx[pick], torch.full_like(idx[pick], -1)).cpu())
        done_tokens += C * T

    try:
        for ctx in stream:
            if index >= n_ctx_target:
                break
            index += 1
            if index <= done_ctx:
                continue
            batch.append(ctx)
            if len(batch) == per_batch or index == n_ctx_target:
                block = torch.stack(batch)
                process(block, index - len(batch))
                contexts.append(block.to(torch.int32))
                done_ctx = index
                bar.update(block.numel())
                since_ckpt += len(batch)
                batch = []
                if partial is not None and since_ckpt >= checkpoint_every and done_ctx < n_ctx_target:
                    checkpoint(False).save(partial)
                    since_ckpt = 0
        if batch:
            block = torch.stack(batch)
            process(block, index - len(batch))
            contexts.append(block.to(torch.int32))
            done_ctx = index
            bar.update(block.numel())
    finally:
        bar.close()
        sae.train(sae_was_training)
    if done_tokens == 0:
        raise ValueError(f"no text in the {src.split!r} split of {src.dataset or 'the embedded corpus'}: nothing to measure")
    if done_tokens < tokens:
        warnings.warn(
            f"the {src.split!r} split of {src.dataset or 'the embedded corpus'} ran out after "
            f"{done_tokens} tokens (asked for {tokens})",
            stacklevel=2,
        )

    result = checkpoint(True)
    t = result.tensors
    if samples is not None:
        ctx_ok = t["sample.ctx"] >= 0
        rows = torch.arange(n)[:, None].expand_as(ctx_ok)
        q = torch.zeros_like(t["sample.value"])
        q[ctx_ok] = hist.quantile_of(rows[ctx_ok].to(device), t["sample.value"][ctx_ok].to(device)).cpu()
        t["sample.quantile"] = q
    t["cooc.latent"], t["cooc.jaccard"] = _cooccurrence(t.pop("cooc.sample"), n, _COOC_M)
    kind, vocab = _vocab_effects(sae, model)
    t.update(vocab)
    if sae.cfg.is_clt:
        t["clt.writes"] = clt_writes(sae)
    shown = [t["contexts"].reshape(-1)] + [v.reshape(-1) for k, v in vocab.items() if k.endswith("_ids")]
    result.token_text = token_strings(model.tokenizer, torch.unique(torch.cat(shown)).tolist())
    result.meta = {
        "format": _FORMAT,
        "identity": ident,
        "n_latents": n,
        "tokens": done_tokens,
        "contexts_done": done_ctx,
        "context_len": context_len,
        "top_n": top_n,
        "quantiles": quantiles,
        "window": list(window),
        "hook": sae.cfg.hook_name,
        "model": model.name,
        "tokens_kind": kind,
        "cooc_sample_tokens": int(sum(c.shape[0] for c in cooc)),
        "hist_bins": _HIST_BINS,
    }
    if sae.cfg.is_transcoder:
        result.meta.update(_kind_meta(sae))
    if path is not None:
        result.save(path)
        if partial is not None and partial.exists():
            os.remove(partial)
    return result
