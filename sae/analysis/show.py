"""Feature panels inline in a notebook: static HTML (escaped), so a saved notebook shows them too.

`show(sae, latent, stats)` renders what the browser shows for one latent, its explanation and scores
included where `explanations.jsonl` has them (a transcoder's: its hooks too; a CLT feature's: its layer and the
layers it writes to); `show_explanations(explanations)` a table of explanations
sorted by score; `show_text(sae, model, text)` (also named `explain_text`) the per-token activations of
the latents that respond most to a text. Explanations are model output: escaped like the corpus.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae.analysis.features import FeatureStats

__all__ = [
    "ExplanationTable",
    "LatentView",
    "TextExplanation",
    "explain_text",
    "show",
    "show_explanations",
    "show_text",
    "text_html",
]

_STYLE = (
    "<style>.saek{font:13px system-ui,sans-serif}.saek .ctx{font-family:monospace;font-size:12px;"
    "white-space:pre-wrap;margin:1px 0}.saek .v{color:#777;font-size:11px;margin-right:6px}"
    ".saek h4{margin:8px 0 2px}.saek td{padding:0 6px}</style>"
)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _token(text: str, act: float, top: float, peak: bool = False) -> str:
    alpha = min(1.0, 0.15 + 0.85 * act / top) if act > 0 and top > 0 else 0.0
    style = f"background:rgba(255,120,0,{alpha:.3f});" if alpha else ""
    if peak:
        style += "outline:1px solid #e65100;"
    return f'<span style="{style}" title="{_fmt(act)}">{html.escape(text)}</span>'


def _context(ex: dict[str, Any], text: FeatureStats, top: float) -> str:
    toks = "".join(
        _token(t, a, top, j == ex["peak"]) for j, (t, a) in enumerate(zip(text.text(ex["ids"]), ex["acts"], strict=True))
    )
    return f'<div class="ctx"><span class="v">{_fmt(ex["value"])}</span>{toks}</div>'


def _histogram(h: dict[str, Any], width: int = 360, height: int = 70) -> str:
    counts, n = h["counts"], len(h["counts"])
    top = max(max(counts), 1)
    bars = "".join(
        f'<rect x="{b * width / n:.1f}" y="{height - height * c / top:.1f}" width="{width / n - 1:.1f}" '
        f'height="{height * c / top:.1f}" fill="#ef6c00"/>'
        for b, c in enumerate(counts)
    )
    return (
        f'<svg width="{width}" height="{height + 14}">{bars}<text x="0" y="{height + 12}" font-size="10">0</text>'
        f'<text x="{width}" y="{height + 12}" font-size="10" text-anchor="end">{_fmt(h["upper"])}</text></svg>'
    )


def _score_text(s: Mapping[str, Any] | None) -> str:
    if not s or s.get("balanced_accuracy") is None:
        return "–"
    text = f"{s['balanced_accuracy']:.2f}"
    if s.get("ci95"):
        text += f" ({s['ci95'][0]:.2f}–{s['ci95'][1]:.2f})"
    return text


def explanation_html(rec: Mapping[str, Any]) -> str:
    """A latent's explanation and scores (one explanations.jsonl line) as escaped HTML."""
    text = rec.get("explanation")
    head = html.escape(text) if text is not None else f"<i>no explanation{html.escape(': ' + (rec.get('skipped') or ''))}</i>"
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{_score_text(s)}</td><td>{_fmt(s['auroc']) if s.get('auroc') is not None else '–'}"
        f"</td><td>{s['n_positive']} / {s['n_negative']}</td><td>{s['unparsed']}</td></tr>"
        for m, s in (rec.get("scores") or {}).items()
    )
    table = (
        "<table><tr><th>score</th><th>balanced accuracy (95% CI)</th><th>AUROC</th><th>positives / negatives</th>"
        f"<th>unparsed</th></tr>{rows}</table>"
        if rows
        else ""
    )
    who = html.escape(f"explained by {rec.get('judge')} · prompts {rec.get('prompt_version')}")
    return f'<h4>explanation</h4><div class="expl">{head}</div>{table}<div class="v">{who}</div>'


def latent_html(panel: dict[str, Any], stats: FeatureStats) -> str:
    """One latent's panels (the dict of `FeatureStats.latent`, with its explanation line under
    'autointerp' when it has one) as static, escaped HTML."""
    clt = "writes" in panel
    title = f"feature {panel['id']} · layer {panel['layer']}, latent {panel['local']}" if clt else f"latent {panel['id']}"
    parts = [
        _STYLE,
        '<div class="saek">',
        f"<h3>{title}</h3>",
        f"<div>fires on {panel['count']} of {stats.meta['tokens']} tokens (frequency {_fmt(panel['frequency'])}),"
        f" mean when active {_fmt(panel['mean'])}, max {_fmt(panel['max'])}</div>",
    ]
    target = stats.meta.get("target_hook")
    if target:
        reads = stats.meta["hook"].replace("{}", str(panel["layer"])) if clt else stats.meta["hook"]
        parts.append(f'<div class="v">reads {html.escape(reads)} · predicts {html.escape(target)}</div>')
    if clt:
        top = max([w for _, w in panel["writes"]] + [1e-12])
        rows = "".join(
            f'<tr><td>layer {layer}</td><td>{_fmt(w)}</td><td><svg width="160" height="10">'
            f'<rect width="{160 * w / top:.1f}" height="10" fill="#ef6c00"/></svg></td></tr>'
            for layer, w in panel["writes"]
        )
        parts.append(f"<h4>writes to layers (decoder norm per target layer)</h4><table>{rows}</table>")
    if panel.get("autointerp"):
        parts.append(explanation_html(panel["autointerp"]))
    if panel["count"]:
        parts.append(_histogram(panel["hist"]))
    parts.append("<h4>top activating contexts</h4>")
    parts += [_context(ex, stats, panel["max"]) for ex in panel["top"]]
    for g in panel["quantiles"]:
        parts.append(f"<h4>quantile {_fmt(g['low'])}–{_fmt(g['high'])}</h4>")
        parts += [_context(ex, stats, panel["max"]) for ex in g["examples"]]
    if panel["tokens_kind"]:
        rows = "".join(
            f"<tr><td>{html.escape(a)}</td><td>{_fmt(va)}</td><td>{html.escape(b)}</td><td>{_fmt(vb)}</td></tr>"
            for (a, va), (b, vb) in zip(
                [(stats.text([i])[0], v) for i, v in panel["tokens_top"]],
                [(stats.text([i])[0], v) for i, v in panel["tokens_bottom"]],
                strict=True,
            )
        )
        parts.append(
            f"<h4>{html.escape(panel['tokens_kind'])}</h4><table><tr><th>top</th><th></th>"
            f"<th>bottom</th><th></th></tr>{rows}</table>"
        )
    cooc = ", ".join(f"{j} ({_fmt(s)})" for j, s in panel["cooccurring"]) or "none"
    parts.append(f"<h4>co-occurring latents (Jaccard)</h4><div>{cooc}</div></div>")
    return "".join(parts)


class LatentView:
    """What `show` returns: the panels as HTML in a notebook, the panel data in `.panel`."""

    def __init__(self, panel: dict[str, Any], stats: FeatureStats) -> None:
        self.panel, self._stats = panel, stats

    def _repr_html_(self) -> str:
        return latent_html(self.panel, self._stats)

    def __repr__(self) -> str:
        p = self.panel
        return f"LatentView(latent={p['id']}, count={p['count']}, max={_fmt(p['max'])})"


def show(
    sae, latent: int, stats: FeatureStats | str | Path, explanations: Mapping[int, Any] | str | Path | None = None
) -> LatentView:
    """The browser's panels for one latent, inline; `stats` is a `FeatureStats` or its file. `explanations`
    (explanations.jsonl lines by latent, or that file) default to the file beside a statistics file given by path."""
    from sae.analysis.autointerp.results import explanations_path, load_explanations

    if explanations is None and not isinstance(stats, FeatureStats):
        explanations = explanations_path(stats)
    if not isinstance(stats, FeatureStats):
        stats = FeatureStats.load(stats)
    if stats.n_latents != sae.cfg.n_features:
        raise ValueError(
            f"these statistics are of a dictionary with {stats.n_latents} latents, this one has {sae.cfg.n_features}"
        )
    if isinstance(explanations, (str, Path)):
        explanations = load_explanations(explanations)
    panel = stats.latent(int(latent))
    if explanations and int(latent) in explanations:
        panel["autointerp"] = explanations[int(latent)]
    return LatentView(panel, stats)


class ExplanationTable:
    """What `show_explanations` returns: a table in a notebook, the lines shown in `.rows`."""

    def __init__(self, rows: list[dict[str, Any]], methods: list[str]) -> None:
        self.rows, self.methods = rows, methods

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(m)}</th>" for m in self.methods)
        body = "".join(
            f"<tr><td>{r['latent']}</td><td>{html.escape(r.get('explanation') or '')}</td>"
            + "".join(f"<td>{_score_text((r.get('scores') or {}).get(m))}</td>" for m in self.methods)
            + "</tr>"
            for r in self.rows
        )
        return f'{_STYLE}<div class="saek"><table><tr><th>latent</th><th>explanation</th>{head}</tr>{body}</table></div>'

    def __repr__(self) -> str:
        return f"ExplanationTable({len(self.rows)} latents, scores {self.methods})"


def show_explanations(
    explanations: Mapping[int, Any] | str | Path, sort: str = "detection", top: int | None = 50, descending: bool = True
) -> ExplanationTable:
    """Explanations (explanations.jsonl lines by latent, or the file, or its run folder) as a table sorted
    by a score ('detection', 'fuzzing') or 'latent'; latents without that score last."""
    from sae.analysis.autointerp.results import load_explanations

    recs = load_explanations(explanations) if isinstance(explanations, (str, Path)) else dict(explanations)
    methods = sorted({m for r in recs.values() for m in (r.get("scores") or {})})
    if sort != "latent" and sort not in methods:
        raise ValueError(f"sort must be 'latent' or a score of these explanations {methods}, got {sort!r}")

    def key(r: Mapping[str, Any]) -> tuple:
        if sort == "latent":
            return (0, r["latent"] * (-1 if descending else 1))
        v = ((r.get("scores") or {}).get(sort) or {}).get("balanced_accuracy")
        return (1, 0) if v is None else (0, -v if descending else v)

    rows = sorted(recs.values(), key=lambda r: (*key(r), r["latent"]))
    return ExplanationTable(rows[:top] if top is not None else rows, methods)


@dataclass
class TextExplanation:
    """`acts[t, j]` is latent `latents[j]`'s activation on token `tokens[t]`; latents ordered by their peak."""

    tokens: list[str]
    latents: list[int]
    acts: torch.Tensor  # [T, L]

    def _repr_html_(self) -> str:
        return text_html(self)


def text_html(ex: TextExplanation) -> str:
    """Each top latent as a row of the text's tokens, coloured by that latent's activation."""
    rows = []
    for j, lat in enumerate(ex.latents):
        col = ex.acts[:, j].tolist()
        top = max(col)
        toks = "".join(_token(t, a, top) for t, a in zip(ex.tokens, col, strict=True))
        rows.append(f'<div class="ctx"><span class="v">latent {lat} · max {_fmt(top)}</span>{toks}</div>')
    return _STYLE + '<div class="saek">' + ("".join(rows) or "no latent is active on this text") + "</div>"


def show_text(sae, model, text: str, top: int = 8) -> TextExplanation:
    """Run `text` through the model, encode it at the dictionary's hook, keep the `top` latents by peak
    activation; in a notebook the result shows each as a row of the text's tokens, coloured by its activation.

    Special tokens (CLS/BOS/SEP) are left out of the ranking, as in `feature_stats`. A transcoder's latents are
    read at its input hook, a CLT's at each layer's (feature l * n + f).
    """
    from activations import load_model
    from sae.analysis.features import token_strings
    from sae.analysis.interventions import input_hooks

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    model = load_model(model)
    hooks = list(input_hooks(model, sae))
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ([model.bos_token_id] if model.bos_token_id is not None else []) + ids
    ids = ids[: model.max_context]
    tokens = torch.tensor([ids])
    out = model.run(tokens, hooks)
    acts = torch.stack([out[h][0] for h in hooks], 1) if sae.cfg.is_clt else out[hooks[0]][0]
    with torch.no_grad():
        dense = sae.encode_dense(acts.to(sae.W_dec.device)).abs().float().cpu()  # [T, n]
    special = torch.isin(tokens[0], torch.tensor(sorted(model.special_token_ids), dtype=torch.long))
    dense[special] = 0
    peak = dense.max(0).values
    chosen = [int(i) for i in peak.topk(min(top, peak.numel())).indices if peak[i] > 0]
    text_of = token_strings(model.tokenizer, ids)
    return TextExplanation([text_of[i] for i in ids], chosen, dense[:, chosen])


explain_text = show_text  # one function, two public names
