"""Every SAE family side by side on MiniLM's layer-3 residual stream (the embedded default corpus).

Same activations (one harvest, cached), same token budget, same dictionary size, k = 32 wherever the
family has a k. Writes docs/results/families.json, families_table.md and families.html (FVU vs L0;
HierarchicalTopK and Matryoshka as curves over k, per-k TopK dictionaries as the reference curve).

Every dictionary trains at the trainer's defaults (learning rate and dead-latent window from TrainConfig's
rules, docs/results/recipe.md) unless --lr / --dead-window are given.

    python docs/results/scripts/compare_families.py    # the committed study (2.8 CPU-hours: about 85 min on 2 cores)
    python docs/results/scripts/compare_families.py --tokens 98304 --tokens-per-family 114688 --n-latents 1536 \
        --batch-size 1024    # a quick look (a few minutes)
    python docs/results/scripts/compare_families.py --only topk batchtopk   # re-run some rows, keep the others
    # two halves side by side on a 2-core machine (after one run has filled the harvest cache):
    python docs/results/scripts/compare_families.py --threads 1 --only topk ... --out /tmp/a &
    python docs/results/scripts/compare_families.py --threads 1 --only batchtopk ... --out /tmp/b
    python docs/results/scripts/compare_families.py --merge /tmp/a /tmp/b     # -> docs/results
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import torch

from activations import ActivationStream, load_model
from sae import SAEConfig, SparseAutoencoder, TrainConfig, train
from sae.analysis.evaluate import reconstruction_metrics
from sae.analysis.static_figure import write_png
from sae.data import TensorBatches

HOOK = "blocks.3.hook_resid_pre"


def family_runs(k: int, steps: int) -> list[tuple[str, str, dict]]:
    """(label, family, SAEConfig kwargs) for every run of the study."""
    # thresholds: the families' default schedule (ThresholdInference.schedule: the EMA starts at a quarter of the
    # run and averages over about a tenth of it), the rule this study passed explicitly before it became the default
    thr: dict = {}
    return [
        ("topk", "topk", {"k": k}),
        ("batchtopk", "batchtopk", {"k": k, "options": thr}),
        ("abstopk", "abstopk", {"k": k}),
        ("adaptivek", "adaptivek", {"k": k, "options": {"probe_fit_at": 0.3}}),
        ("featurechoice", "featurechoice", {"k": k, "options": thr}),
        ("mutualchoice", "mutualchoice", {"k": k, "options": thr}),
        ("topafa", "topafa", {"k": None}),
        ("hierarchicaltopk", "hierarchicaltopk", {"k": k}),
        ("matryoshka", "matryoshka", {"k": k, "options": thr}),
        ("vsae", "vsae", {"k": k}),
        # ReLU + decoder-norm-weighted L1 (the classic baseline): L0 is set by l1_coef, not by a k
        ("standard", "standard", {"k": None, "options": {"l1_coef": 0.3}}),
        # per-k TopK dictionaries: the reference curve for HierarchicalTopK
        ("topk_k8", "topk", {"k": k // 4}),
        ("topk_k16", "topk", {"k": k // 2}),
        # the same TopK run with another seed: the scale of run-to-run noise
        ("topk_seed1", "topk", {"k": k, "seed": 1}),
    ]


def harvest(tokens: int, eval_tokens: int, cache: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    model = load_model("minilm")
    train_stream = ActivationStream(
        model,
        hook=HOOK,
        split="train",
        total_tokens=tokens,
        batch_size=4096,
        seed=seed,
        cache_dir=cache / f"train_{tokens}",
        progress=False,
    )
    test_stream = ActivationStream(
        model,
        hook=HOOK,
        split="test",
        total_tokens=eval_tokens,
        batch_size=4096,
        seed=seed,
        cache_dir=cache / f"test_{eval_tokens}",
        progress=False,
    )
    return torch.cat(list(train_stream)), torch.cat(list(test_stream))


def fvu_l0(x: torch.Tensor, encode, decode, block: int = 4096) -> tuple[float, float]:
    """FVU and mean L0 of `decode(encode(xb))` over x in blocks."""
    err, l0 = 0.0, 0.0
    with torch.no_grad():
        for xb in x.split(block):
            code = encode(xb)
            err += (xb - decode(code)).double().pow(2).sum().item()
            l0 += (code.values != 0).sum().item()
    return err / (x.double() - x.double().mean(0)).pow(2).sum().item(), l0 / x.shape[0]


def fvu_at(sae: SparseAutoencoder, x: torch.Tensor, k: int) -> tuple[float, float]:
    """FVU and mean L0 of the dictionary's code at a given k (batch rule for batch families)."""
    was = sae.training
    sae.eval()
    out = fvu_l0(x, lambda xb: sae.encode(xb, k=k), sae.decode)
    sae.train(was)
    return out


def run_one(label, family, kw, train_x, test_x, args) -> tuple[dict, SparseAutoencoder]:
    kw = dict(kw)
    seed = kw.pop("seed", args.seed)
    cfg = SAEConfig(d_in=train_x.shape[1], n_latents=args.n_latents, family=family, hook_name=HOOK, model_name="minilm", **kw)
    sae = SparseAutoencoder(cfg, seed=seed)
    tcfg = TrainConfig(
        tokens=args.tokens_per_family,
        batch_size=args.batch_size,
        seed=seed,
        lr=args.lr,
        dead_window_tokens=args.dead_window,
        checkpoint_every=10**9,
        log_every=10**9,
    )
    data = TensorBatches(train_x, args.batch_size, seed=seed)
    with contextlib.redirect_stderr(io.StringIO()):  # no progress bars in the study's log
        result = train(sae, data, tcfg, out_dir=None)
    sae.fold_input_scale()
    metrics = reconstruction_metrics(sae, list(test_x.split(4096)))
    row = {
        "family": label,
        "fvu": metrics["fvu"],
        "l0": metrics["l0"],
        "dead_fraction": result.dead_fraction,
        "eval_dead_fraction": metrics["eval_dead_fraction"],
        "tokens_per_s": result.tokens / max(result.seconds, 1e-9),
        "k": kw.get("k"),
        "seed": seed,
        "train_tokens": result.tokens,
        "lr": tcfg.learning_rate(args.n_latents),
        "dead_window_tokens": tcfg.dead_window(args.n_latents, cfg.k),
    }
    if family in ("batchtopk", "mutualchoice", "featurechoice", "matryoshka"):
        # the threshold's inference L0 is not exactly k: also score the batch rule at exactly k (equal L0)
        row["fvu_batch_rule"], row["l0_batch_rule"] = fvu_at(sae, test_x, kw["k"])
        row["threshold"] = sae.family.threshold[sae.family.threshold >= 0].mean().item()
    if family == "adaptivek":
        row.update(sae.family.k_stats(sae, test_x))
        # the training allocation (mean k exactly k per batch of the held-out set): equal L0 by construction
        sae.eval()
        sae.family.train()
        row["fvu_batch_rule"], row["l0_batch_rule"] = fvu_l0(test_x, sae.encode, sae.decode, args.batch_size)
        sae.family.eval()
    if family == "hierarchicaltopk":
        row["curve"] = [dict(zip(("k", "fvu", "l0"), (k, *fvu_at(sae, test_x, k)))) for k in args.curve_ks]
    if family == "matryoshka":
        row["curve"] = [dict(zip(("k", "fvu", "l0"), (k, *fvu_at(sae, test_x, k)))) for k in args.curve_ks]
        with torch.no_grad():
            sae.eval()
            code = sae.encode(test_x[:4096])
            x_n = test_x[:4096]
            row["prefix_fvu"] = {m: v.item() for m, v in zip(sae.family.prefixes, sae.family.prefix_losses(sae, x_n, code))}
    if family == "topafa":
        from sae.families.topafa import afa_diagnostic

        diag = afa_diagnostic(sae, test_x[:4096])
        row.update({k: diag[k] for k in ("eps_lbo", "over_activated_fraction", "max_abs_cos", "mean_abs_cos")})
        l0 = sae.encode(test_x[:4096]).l0().float()
        row.update({"l0_std": l0.std().item(), "l0_min": l0.min().item(), "l0_max": l0.max().item()})
    return row, sae


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "| family | FVU | L0 | FVU, batch rule at L0 = k | dead (train) | dead (eval) | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at_k = f"{r['fvu_batch_rule']:.4f} (L0 {r['l0_batch_rule']:.1f})" if "fvu_batch_rule" in r else ""
        lines.append(
            f"| {r['family']} | {r['fvu']:.4f} | {r['l0']:.1f} | {at_k} | {r['dead_fraction']:.3f} | "
            f"{r['eval_dead_fraction']:.3f} | {r['tokens_per_s']:.0f} |"
        )
    (out / "families_table.md").write_text("\n".join(lines) + "\n")
    try:
        import plotly.graph_objects as go
    except ImportError:
        print("plotly is not installed: no figure")
        return
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    main_rows = [r for r in rows if not r["family"].startswith("topk_")]
    palette = qualitative.Plotly + qualitative.D3  # more colours than families: no two share one
    color = {r["family"]: palette[i % len(palette)] for i, r in enumerate(main_rows)}
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.6, 0.4],
        horizontal_spacing=0.16,
        subplot_titles=("FVU against L0 (held-out)", f"FVU at L0 = {meta['k']} (batch rule where it applies)"),
    )
    ref = sorted((r for r in rows if r["family"] in ("topk", "topk_k8", "topk_k16")), key=lambda r: r["l0"])
    fig.add_trace(
        go.Scatter(
            x=[r["l0"] for r in ref],
            y=[r["fvu"] for r in ref],
            mode="lines+markers",
            name="TopK, one dictionary per k",
            line={"dash": "dot", "color": "black"},
            marker={"color": "black"},
        ),
        row=1,
        col=1,
    )
    for r in main_rows:
        c = color[r["family"]]
        if "curve" in r:
            fig.add_trace(
                go.Scatter(
                    x=[p["l0"] for p in r["curve"]],
                    y=[p["fvu"] for p in r["curve"]],
                    mode="lines+markers",
                    name=f"{r['family']}, one dictionary, k varied",
                    line={"color": c},
                    marker={"color": c},
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=[r["l0"]],
                y=[r["fvu"]],
                mode="markers",
                name=r["family"],
                marker={"size": 11, "color": c, "line": {"width": 1, "color": "white"}},
            ),
            row=1,
            col=1,
        )
    matched = sorted(
        ((r["family"], r.get("fvu_batch_rule", r["fvu"])) for r in main_rows if r["k"] is not None), key=lambda t: -t[1]
    )
    fig.add_trace(
        go.Bar(
            y=[f for f, _ in matched],
            x=[v for _, v in matched],
            orientation="h",
            marker={"color": [color[f] for f, _ in matched]},
            showlegend=False,
            text=[f"{v:.4f}" for _, v in matched],
            textposition="outside",
        ),
        row=1,
        col=2,
    )
    seeds = [r["fvu"] for r in rows if r["family"] in ("topk", "topk_seed1")]
    if len(seeds) == 2:
        for v in seeds:
            fig.add_vline(x=v, line={"dash": "dot", "color": "gray"}, row=1, col=2)
    lo = min(v for _, v in matched)
    fig.update_xaxes(title_text="L0 (mean active latents per token)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="FVU (log)", type="log", row=1, col=1)  # a collapsed run at 1 keeps the rest readable
    fig.update_xaxes(
        title_text="FVU (dotted: TopK, two seeds)", range=[lo * 0.9, max(v for _, v in matched) * 1.04], row=1, col=2
    )
    fig.update_layout(
        title=f"SAE families on MiniLM {HOOK} (n={meta['n_latents']}, {meta['tokens_per_family']:,} training tokens each)",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.18},
    )
    fig.write_html(out / "families.html", include_plotlyjs="cdn")
    if write_png(fig, out / "families.png", width=1300, height=720) is None:  # a static copy for the markdown report
        print("no PNG: neither kaleido nor a headless Chromium is installed")


def merge(dirs: list[str], out: Path) -> None:
    """One study from several --only runs: each row from the run that trained it (its meta's 'rerun'), in the
    study's order; meta from the first run, with the seconds summed."""
    parts = [json.loads((Path(d) / "families.json").read_text()) for d in dirs]
    fresh = {}
    for part in parts:
        ran = set(part["meta"].get("rerun") or [r["family"] for r in part["rows"]])
        fresh.update({r["family"]: r for r in part["rows"] if r["family"] in ran})
    order = [label for label, _, _ in family_runs(32, 1)]
    rows = sorted(fresh.values(), key=lambda r: order.index(r["family"]) if r["family"] in order else len(order))
    meta = {key: v for key, v in parts[0]["meta"].items() if key != "rerun"}
    meta["total_seconds"] = sum(p["meta"]["total_seconds"] for p in parts)
    meta["merged_from"] = [str(d) for d in dirs]
    write_outputs(rows, meta, out)
    print(f"merged {len(rows)} rows from {len(dirs)} runs into {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=400_000, help="activations harvested for training")
    p.add_argument("--tokens-per-family", type=int, default=1_638_400, help="training tokens per dictionary")
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--n-latents", type=int, default=3072)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument(
        "--dead-window",
        type=int,
        default=None,
        help="tokens without firing = dead (default: the trainer's rule, TrainConfig.dead_window)",
    )
    p.add_argument("--lr", type=float, default=None, help="Adam's rate (default: the trainer's rule)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="merge the rows of several --only runs (each DIR's families.json) into --out and redraw",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="runs/families_cache")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--only", nargs="*", help="run only these labels")
    p.add_argument("--replot", action="store_true", help="rewrite the table and figures from OUT/families.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        merge(args.merge, Path(args.out))
        return
    if args.replot:
        saved = json.loads((Path(args.out) / "families.json").read_text())
        write_outputs(saved["rows"], saved["meta"], Path(args.out))
        return
    args.curve_ks = [args.k // 8, args.k // 4, args.k // 2, args.k]
    torch.manual_seed(args.seed)

    labels = [label for label, _, _ in family_runs(args.k, 1)]
    unknown = sorted(set(args.only or []) - set(labels))
    if unknown:  # checked before the harvest, not after it
        p.error(f"--only {unknown}: not a label of the study (labels: {', '.join(labels)})")
    t0 = time.perf_counter()
    train_x, test_x = harvest(args.tokens, args.eval_tokens, Path(args.cache), args.seed)
    harvest_s = time.perf_counter() - t0
    print(f"harvested {train_x.shape[0]:,} train + {test_x.shape[0]:,} test activations in {harvest_s:.0f}s")
    steps = args.tokens_per_family // args.batch_size
    out = Path(args.out)
    old = json.loads((out / "families.json").read_text()) if args.only and (out / "families.json").exists() else None
    rows = []

    def save() -> dict:
        """Written after every row, so a crash keeps the rows already trained."""
        meta = {
            "model": "minilm (embedded all-MiniLM-L6-v2)",
            "hook": HOOK,
            "corpus": "embedded default",
            "d_in": train_x.shape[1],
            "n_latents": args.n_latents,
            "k": args.k,
            "batch_size": args.batch_size,
            "harvested_train_tokens": train_x.shape[0],
            "eval_tokens": test_x.shape[0],
            "tokens_per_family": args.tokens_per_family,
            # None: the trainer's rules (each row records the lr and dead window it trained with)
            "lr": args.lr,
            "dead_window_tokens": args.dead_window,
            "seed": args.seed,
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "harvest_seconds": harvest_s,
            "total_seconds": time.perf_counter() - t0,
        }
        kept = rows
        if old is not None:  # re-run some rows, keep the others
            fresh = {r["family"]: r for r in rows}
            kept = [fresh.pop(r["family"], r) for r in old["rows"]] + list(fresh.values())
            meta["rerun"] = sorted(r["family"] for r in rows)
        write_outputs(kept, meta, out)
        return meta

    for label, family, kw in family_runs(args.k, steps):
        if args.only and label not in args.only:
            continue
        t = time.perf_counter()
        row, _ = run_one(label, family, kw, train_x, test_x, args)
        rows.append(row)
        print(
            f"{label:18s} fvu {row['fvu']:.4f}  l0 {row['l0']:6.1f}  dead {row['dead_fraction']:.3f}  "
            f"{row['tokens_per_s']:7.0f} tok/s  ({time.perf_counter() - t:.0f}s)",
            flush=True,
        )
        meta = save()
    print(f"wrote {args.out}/families.json, families_table.md, families.html in {meta['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
