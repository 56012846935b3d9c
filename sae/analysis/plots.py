"""plotly figures of a run and its evaluation, and one standalone offline HTML page holding them.

`write_run_plots(run_dir)` reads `log.jsonl`, `metrics.json` and `eval/latents.safetensors` (written
by `python -m sae eval`) and writes `eval/plots.html` with plotly.js embedded (no network needed to
view it): training curves, the latent firing-density histogram (log10), the L0 distribution, the
decoder cosine histogram, and FVU against L0 for this run and its sibling runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

__all__ = [
    "decoder_cosine_histogram",
    "density_histogram",
    "fvu_vs_l0",
    "l0_distribution",
    "training_curves",
    "write_html",
    "write_run_plots",
]

CURVES = ("loss", "fvu", "l0", "dead_fraction")


def training_curves(log_path: str | Path):
    """Loss, FVU, L0 and dead fraction against training tokens, from a run's log.jsonl."""
    from plotly.subplots import make_subplots

    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{log_path} holds no logged steps")
    keys = [k for k in CURVES if k in rows[0]]
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys)
    tokens = [r["tokens"] for r in rows]
    for i, k in enumerate(keys, start=1):
        fig.add_scatter(x=tokens, y=[r.get(k) for r in rows], mode="lines", name=k, row=1, col=i)
        fig.update_xaxes(title_text="tokens", row=1, col=i)
    fig.update_layout(title="Training curves", showlegend=False)
    return fig


def density_histogram(latent_frequency: torch.Tensor, bins: int = 40):
    """Histogram of log10(firing frequency) over the latents that fired; the dead ones are counted in the title."""
    import plotly.graph_objects as go

    freq = latent_frequency.double()
    alive = freq[freq > 0]
    dead = int((freq == 0).sum())
    fig = go.Figure(go.Histogram(x=alive.log10().tolist(), nbinsx=bins))
    fig.update_layout(
        title=f"Latent firing density ({len(alive)} fired, {dead} dead)",
        xaxis_title="log10(fraction of tokens the latent fires on)",
        yaxis_title="latents",
    )
    return fig


def l0_distribution(l0: torch.Tensor):
    """Histogram of the number of active latents per token."""
    import plotly.graph_objects as go

    values = l0.long()
    counts = torch.bincount(values)
    fig = go.Figure(go.Bar(x=list(range(len(counts))), y=counts.tolist()))
    fig.update_layout(
        title=f"L0 per token (mean {values.double().mean().item():.2f})", xaxis_title="active latents", yaxis_title="tokens"
    )
    return fig


def decoder_cosine_histogram(edges: Sequence[float], counts: Sequence[int]):
    """Histogram of the pairwise cosines of decoder rows (log-scale counts)."""
    import plotly.graph_objects as go

    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    fig = go.Figure(go.Bar(x=centres, y=list(counts)))
    fig.update_layout(
        title="Decoder rows: pairwise cosine similarity", xaxis_title="cosine", yaxis_title="pairs", yaxis_type="log"
    )
    return fig


def fvu_vs_l0(run_dirs: Iterable[str | Path]):
    """FVU against L0 of several runs (their metrics.json), with the rank-L0 PCA baseline where recorded."""
    import plotly.graph_objects as go

    points = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            if "fvu" in m and "l0" in m:
                points.append((Path(d).name, m))
    if not points:
        raise ValueError("no run with fvu and l0 in its metrics.json")
    fig = go.Figure(
        go.Scatter(
            x=[m["l0"] for _, m in points],
            y=[m["fvu"] for _, m in points],
            mode="markers+text",
            text=[n for n, _ in points],
            textposition="top center",
            name="dictionary",
        )
    )
    pca = [(m["l0"], m["pca_fvu"]) for _, m in points if "pca_fvu" in m]
    if pca:
        fig.add_scatter(x=[p[0] for p in pca], y=[p[1] for p in pca], mode="markers", name="PCA, rank = L0", marker_symbol="x")
    fig.update_layout(
        title="FVU against L0",
        xaxis_title="L0 (active latents per token)",
        yaxis_title="FVU",
        xaxis_type="log" if len(points) > 1 else "linear",
    )
    return fig


def write_html(figures: Sequence, path: str | Path, title: str = "saekit") -> Path:
    """One standalone HTML page holding `figures`, plotly.js embedded once (viewable offline)."""
    path = Path(path)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{''.join(parts)}</body></html>",
        encoding="utf-8",
    )
    return path


def write_run_plots(run_dir: str | Path) -> Path:
    """Write run_dir/eval/plots.html from what the run and its evaluation left there."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    figures = []
    if (run_dir / "log.jsonl").exists():
        figures.append(training_curves(run_dir / "log.jsonl"))
    latents = run_dir / "eval" / "latents.safetensors"
    if latents.exists():
        dists = load_file(str(latents))
        figures += [density_histogram(dists["latent_frequency"]), l0_distribution(dists["l0"])]
        if "decoder_cos_hist_counts" in dists:
            figures.append(
                decoder_cosine_histogram(dists["decoder_cos_hist_edges"].tolist(), dists["decoder_cos_hist_counts"].tolist())
            )
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    if "fvu" in metrics and not math.isnan(metrics["fvu"]):
        siblings = sorted(p.parent for p in run_dir.resolve().parent.glob("*/metrics.json"))
        figures.append(fvu_vs_l0(siblings or [run_dir]))
    if not figures:
        raise ValueError(f"{run_dir} holds nothing to plot (no log.jsonl, metrics.json or eval/)")
    (run_dir / "eval").mkdir(exist_ok=True)
    return write_html(figures, run_dir / "eval" / "plots.html", title=f"saekit: {run_dir.name}")
