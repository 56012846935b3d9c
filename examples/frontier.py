"""The FVU-L0 frontier of the families on MiniLM's layer-3 residual stream (the embedded model and corpus).

For each family and each L0 in --l0s: a TopK-style family trains with k = L0, a penalty family (jumprelu, gated,
standard) with --target-l0 L0 (TrainConfig.target_l0); every dictionary at the trainer's defaults otherwise, on the
same activations and batches. Scored on held-out activations of the test split and, with --spliced, spliced into
the model (sae.analysis.evaluate's embedding recovered on the test split's text). Writes docs/results/frontier.json,
frontier_table.md, frontier.html and frontier.png.

    python examples/frontier.py --n-latents 768 --tokens 204800 --batch-size 1024 --threads 1 --spliced
                                                                 # the committed study (docs/results/frontier.md)
    python examples/frontier.py                                  # the demo's dictionary (n 3072, 1.6M tokens)
    python examples/frontier.py --families topk jumprelu --l0s 16 32 --out /tmp/f    # a part of it
    python examples/frontier.py --sweep standard --coefs 0.003 0.01 0.03 0.1   # the default-coefficient sweep
    python examples/frontier.py --replot                         # redraw from frontier.json

Activations come from a tensor file (--acts, {"train": [N, d], "test": [M, d]}) when given, else from the same
cached harvest as docs/results/scripts/compare_families.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import torch

from sae import SAEConfig, SparseAutoencoder, TrainConfig, train
from sae.analysis.evaluate import reconstruction_metrics
from sae.data import TensorBatches
from sae.families import get_family

HOOK = "blocks.3.hook_resid_pre"
FAMILIES = ("topk", "batchtopk", "jumprelu", "gated", "standard", "matryoshka", "abstopk")


def load_acts(args) -> tuple[torch.Tensor, torch.Tensor]:
    if args.acts:
        saved = torch.load(args.acts)
        return saved["train"], saved["test"][: args.eval_tokens]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "results" / "scripts"))
    from compare_families import harvest

    return harvest(400_000, args.eval_tokens, Path(args.cache), 0)


SPLICED_KEYS = (
    "embedding_recovered_mean",
    "embedding_recovered_zero",
    "hidden_recovered_mean",
    "embedding_cos_spliced",
    "hidden_cos_spliced",
)


def spliced_metrics(sae: SparseAutoencoder, model, tokens: int) -> dict:
    """The dictionary spliced into MiniLM at its hook on `tokens` held-out positions of the test split (evaluate's
    `spliced` measure), with evaluate's own FVU and L0 of those positions as a check on the held-out tensor's."""
    from sae.analysis.evaluate import evaluate
    from sae.analysis.measures import MEASURES

    m = evaluate(sae, model, tokens=tokens, skip=[k for k in MEASURES if k != "spliced"], progress=False)
    out = {k: m[k] for k in SPLICED_KEYS}
    out.update(spliced_fvu=m["fvu"], spliced_l0=m["l0"], spliced_eval_tokens=m["eval_tokens"])
    return out


def run_one(family: str, l0: int | None, seed: int, train_x, test_x, args, coef: float | None = None, model=None) -> dict:
    """One dictionary: k = l0 for a top-k family, target_l0 = l0 (or the coefficient `coef`) for a penalty family;
    spliced into `model` as well when one is given."""
    penalty = bool(get_family(family).penalty)
    cfg = SAEConfig(
        d_in=train_x.shape[1],
        n_latents=args.n_latents,
        family=family,
        k=None if penalty else l0,
        hook_name=HOOK,
        model_name="minilm",
    )
    sae = SparseAutoencoder(cfg, seed=seed)
    tcfg = TrainConfig(
        tokens=args.tokens,
        batch_size=args.batch_size,
        seed=seed,
        checkpoint_every=10**9,
        log_every=10**9,
        target_l0=l0 if penalty and coef is None else None,
        sparsity_coef=coef,
    )
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        result = train(sae, TensorBatches(train_x, args.batch_size, seed=seed), tcfg, out_dir=None)
    sae.eval()
    sae.fold_input_scale()
    m = reconstruction_metrics(sae, list(test_x.split(4096)))
    row = {
        "family": family,
        "asked_l0": l0,
        "coef": coef,
        "seed": seed,
        "fvu": m["fvu"],
        "l0": m["l0"],
        "eval_dead_fraction": m["eval_dead_fraction"],
        "seconds": time.perf_counter() - t,
        "train_tokens": result.tokens,
        "date": time.strftime("%Y-%m-%d"),
    }
    if model is not None:
        t = time.perf_counter()
        row.update(spliced_metrics(sae, model, args.spliced_tokens))
        row["spliced_seconds"] = time.perf_counter() - t
    return row


def write(rows: list[dict], meta: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if name != "frontier":
        return
    lines = [
        "| family | asked L0 | seed | L0 (held-out) | FVU (held-out) | embedding recovered (spliced) | silent latents | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (FAMILIES.index(r["family"]), r["asked_l0"], r["seed"])):
        rec = f"{r['embedding_recovered_mean']:.4f}" if "embedding_recovered_mean" in r else ""
        lines.append(
            f"| {r['family']} | {r['asked_l0']} | {r['seed']} | {r['l0']:.1f} | {r['fvu']:.4f} | {rec} "
            f"| {r['eval_dead_fraction']:.3f} | {r.get('date', r.get('rerun', ''))} |"
        )
    (out / "frontier_table.md").write_text("\n".join(lines) + "\n")
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        print("plotly is not installed: no figure")
        return
    from plotly.colors import qualitative

    panels = [("fvu", "FVU (held-out, log)")]
    if any("embedding_recovered_mean" in r for r in rows):
        panels.append(("embedding_recovered_mean", "embedding recovered, spliced (mean-ablation scale)"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels], horizontal_spacing=0.1)
    for i, fam in enumerate(f for f in FAMILIES if any(r["family"] == f for r in rows)):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        for col, (key, _) in enumerate(panels, start=1):
            have = [r for r in rows if r["family"] == fam and key in r]
            pts = sorted((r for r in have if r["seed"] == 0), key=lambda r: r["l0"])
            fig.add_trace(
                go.Scatter(
                    x=[r["l0"] for r in pts],
                    y=[r[key] for r in pts],
                    mode="lines+markers",
                    name=fam,
                    legendgroup=fam,
                    showlegend=col == 1,
                    line={"color": color},
                    marker={"color": color},
                ),
                row=1,
                col=col,
            )
            extra = [r for r in have if r["seed"] != 0]
            if extra:
                fig.add_trace(
                    go.Scatter(
                        x=[r["l0"] for r in extra],
                        y=[r[key] for r in extra],
                        mode="markers",
                        name=f"{fam}, seed 1",
                        legendgroup=f"{fam}-1",
                        showlegend=col == 1,
                        marker={"color": color, "symbol": "x", "size": 10},
                    ),
                    row=1,
                    col=col,
                )
    for col, (key, title) in enumerate(panels, start=1):
        fig.update_xaxes(title_text="L0 (mean active latents per token, held-out)", type="log", row=1, col=col)
        fig.update_yaxes(title_text=title, type="log" if key == "fvu" else "linear", row=1, col=col)
    fig.update_layout(
        title=f"The families on MiniLM {HOOK} (n={meta['n_latents']}, {meta['tokens']:,} training tokens each)",
        template="plotly_white",
    )
    fig.write_html(out / "frontier.html", include_plotlyjs="cdn")
    from sae.analysis.static_figure import write_png

    if write_png(fig, out / "frontier.png", width=1000, height=640) is None:
        print("no PNG: neither kaleido nor a headless Chromium is installed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--l0s", nargs="*", type=int, default=[8, 16, 32, 64])
    p.add_argument("--seed1-at", type=int, default=32, help="the L0 at which some families also train with seed 1")
    p.add_argument("--seed1-families", nargs="*", default=["topk", "jumprelu"], choices=FAMILIES)
    p.add_argument("--tokens", type=int, default=1_638_400, help="training tokens per dictionary")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--n-latents", type=int, default=3072)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--acts", default="", help="a torch file {'train': ..., 'test': ...} instead of the harvest")
    p.add_argument("--cache", default="runs/families_cache")
    p.add_argument("--sweep", choices=("standard", "jumprelu", "gated"), help="sweep this family's coefficient instead")
    p.add_argument("--coefs", nargs="*", type=float, default=[0.003, 0.01, 0.03, 0.1])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--spliced", action="store_true", help="also splice each dictionary into MiniLM (evaluate's measure)")
    p.add_argument("--spliced-tokens", type=int, default=16_384, help="held-out positions of the test split, spliced")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--replot", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if args.replot:
        saved = json.loads((out / "frontier.json").read_text())
        write(saved["rows"], saved["meta"], out, "frontier")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    train_x, test_x = load_acts(args)
    model = None
    if args.spliced:
        from activations.models import load_model

        model = load_model("minilm")
    meta = {
        "model": "minilm",
        "hook": HOOK,
        "n_latents": args.n_latents,
        "tokens": args.tokens,
        "batch_size": args.batch_size,
        "eval_tokens": test_x.shape[0],
        "harvested_train_tokens": train_x.shape[0],
        "threads": torch.get_num_threads(),
    }
    if args.spliced:
        meta["spliced_tokens"] = args.spliced_tokens
    rows: list[dict] = []
    if args.sweep:
        name = f"frontier_sweep_{args.sweep}"
        for coef in args.coefs:
            rows.append(run_one(args.sweep, None, 0, train_x, test_x, args, coef=coef))
            print(json.dumps(rows[-1]), flush=True)
            write(rows, meta, out, name)
        return
    plan = [(f, l0, 0) for f in args.families for l0 in args.l0s]
    plan += [(f, args.seed1_at, 1) for f in args.families if f in args.seed1_families and args.seed1_at in args.l0s]
    old = out / "frontier.json"
    if old.exists():  # keep the rows of other families and points; re-run the ones planned
        rows = [r for r in json.loads(old.read_text())["rows"] if (r["family"], r["asked_l0"], r["seed"]) not in plan]
    for family, l0, seed in plan:
        rows.append(run_one(family, l0, seed, train_x, test_x, args, model=model))
        print(json.dumps(rows[-1]), flush=True)
        write(rows, meta, out, "frontier")


if __name__ == "__main__":
    main()
