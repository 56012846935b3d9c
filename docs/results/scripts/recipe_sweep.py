"""The default-recipe study: held-out FVU against the learning rate, over budgets, sizes and layers.

Harvests MiniLM's residual stream once per layer (cached under --cache), then trains one TopK dictionary
per (point, lr) and appends a line to --out (JSON lines) as each finishes, so a partial sweep is usable
and a rerun skips what is done. `--defaults` trains each point once more with no lr given (the
TrainConfig rule); `--plot` writes docs/results/recipe.html/.png and the table from the lines.

    nice -n 10 python docs/results/scripts/recipe_sweep.py               # the lr grid (about two CPU-hours on 2 cores)
    nice -n 10 python docs/results/scripts/recipe_sweep.py --defaults    # the defaults at every point
    python docs/results/scripts/recipe_sweep.py --plot                   # figure + table into docs/results/
    python docs/results/scripts/recipe_sweep.py --points L3-n1536-s400   # some points only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import time
from pathlib import Path

import torch

from activations import ActivationStream, CacheError, load_model
from sae import SAEConfig, SparseAutoencoder, TrainConfig, train
from sae.analysis.evaluate import reconstruction_metrics
from sae.data import TensorBatches

TRAIN_TOKENS, TEST_TOKENS = 400_000, 16_384
SHORT_LRS = (1e-3, 2e-3, 4e-3, 8e-3)
LONG_LRS = (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3)
# (layer, n_latents, steps, batch): budgets from 400 to 25,600 steps, dictionaries of 4x, 8x, 16x and 64x
# d = 384, three layers of the residual stream; the demo's own point (n 3072, 390 steps of 4096) among them.
# Runs longer than 400k tokens see the harvested tokens more than once (held-out FVU is measured on the
# test split, so that is visible, not hidden).
POINTS = [
    (3, 1536, 400, 512),
    (1, 1536, 400, 512),
    (5, 1536, 400, 512),
    (3, 6144, 400, 512),
    (3, 24576, 400, 512),
    (3, 3072, 390, 4096),
    (3, 1536, 3200, 512),
    (3, 1536, 25600, 64),
]


def default_lrs(steps: int) -> tuple[float, ...]:
    """The swept grid: short runs want larger rates than long ones, so each gets a grid around its optimum."""
    return SHORT_LRS if steps < 2000 else LONG_LRS


def point_name(layer: int, n: int, steps: int, batch: int) -> str:
    return f"L{layer}-n{n}-s{steps}" + ("" if batch == 512 else f"-b{batch}")


def activations(layer: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and held-out activations of blocks.{layer}.hook_resid_pre, harvested once into `cache`."""
    hook = f"blocks.{layer}.hook_resid_pre"
    out = []
    for split, tokens in (("train", TRAIN_TOKENS), ("test", TEST_TOKENS)):
        folder = cache / f"L{layer}-{split}-{tokens}"
        if not _complete(folder):  # absent, or a harvest that was interrupted: (re)start it, it resumes
            ActivationStream(
                load_model("minilm"),
                hook=hook,
                split=split,
                total_tokens=tokens,
                batch_size=4096,
                seed=0,
                cache_dir=folder,
                progress=False,
            ).harvest()
        out.append(torch.cat(list(ActivationStream.from_cache(folder, batch_size=4096, verify=False))))
    return out[0], out[1]


def _complete(folder: Path) -> bool:
    try:
        ActivationStream.from_cache(folder, batch_size=4096, verify=False)
        return True
    except (CacheError, FileNotFoundError):
        return False


SAE_FIELDS = {f.name for f in dataclasses.fields(SAEConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
POINT_FIELDS = {"lr", "tokens", "batch_size", "n_latents", "d_in", "seed"}  # set by the point, not by --set


def parse_knobs(pairs: list[str]) -> dict:
    """`name=value` overrides of SAEConfig / TrainConfig fields (the other recipe knobs), values parsed as JSON
    where they are JSON (numbers, null), else kept as strings; a name neither config has is refused."""
    knobs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in (SAE_FIELDS | TRAIN_FIELDS) - POINT_FIELDS:
            raise SystemExit(
                f"--set {pair!r}: expected NAME=VALUE with NAME a field of SAEConfig or TrainConfig "
                "other than those the point sets (lr, tokens, batch_size, n_latents, d_in, seed)"
            )
        try:
            knobs[name] = json.loads(value)
        except json.JSONDecodeError:
            knobs[name] = value
    return knobs


def run_point(
    layer: int, n: int, steps: int, batch: int, lr: float | None, data, seed: int = 0, knobs: dict | None = None
) -> dict:
    """Train one TopK (k 32) dictionary and score it on the held-out activations; `knobs` override other
    SAEConfig / TrainConfig fields."""
    train_x, test_x = data
    knobs = knobs or {}
    sae = SparseAutoencoder(
        SAEConfig(d_in=train_x.shape[1], n_latents=n, k=32, **{k: v for k, v in knobs.items() if k in SAE_FIELDS}), seed=seed
    )
    tcfg = TrainConfig(
        tokens=steps * batch,
        batch_size=batch,
        lr=lr,
        seed=seed,
        checkpoint_every=10**9,
        log_every=10**9,
        **{k: v for k, v in knobs.items() if k not in SAE_FIELDS},
    )
    with contextlib.redirect_stderr(io.StringIO()):
        result = train(sae, TensorBatches(train_x, batch, seed=seed), tcfg)
    sae.fold_input_scale()
    m = reconstruction_metrics(sae, list(test_x.split(4096)))
    return {
        "point": point_name(layer, n, steps, batch),
        "layer": layer,
        "n_latents": n,
        "steps": steps,
        "batch_size": batch,
        "lr": tcfg.learning_rate(n) if lr is None else lr,
        "default": lr is None,
        "fvu": m["fvu"],
        "l0": m["l0"],
        "dead_fraction": result.dead_fraction,
        "eval_dead_fraction": m["eval_dead_fraction"],
        "seconds": result.seconds,
        "dead_window": tcfg.dead_window(n, 32),
        **({"knobs": knobs} if knobs else {}),
    }


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summary(rows: list[dict]) -> list[dict]:
    """Per point: the best swept lr and FVU, the default's lr and FVU, and the default's gap to the best."""
    out = []
    for name in dict.fromkeys(r["point"] for r in rows):
        swept = [r for r in rows if r["point"] == name and not r["default"]]
        default = [r for r in rows if r["point"] == name and r["default"]]
        if not swept:
            continue
        best = min(swept, key=lambda r: r["fvu"])
        row = {"point": name, "best_lr": best["lr"], "best_fvu": best["fvu"], "swept": len(swept)}
        if default:
            d = default[-1]
            row.update(
                default_lr=d["lr"],
                default_fvu=d["fvu"],
                gap=d["fvu"] / best["fvu"] - 1,
                default_dead=d["dead_fraction"],
                default_silent=round(d["eval_dead_fraction"] * d["n_latents"]),
                n_latents=d["n_latents"],
                default_window=d.get("dead_window"),
            )
        out.append(row)
    return out


def plot(rows: list[dict], out_dir: Path) -> None:
    """FVU against lr, one panel per point, the default as a star; table beside it in recipe_table.md."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(dict.fromkeys(r["point"] for r in rows))
    cols = 3
    fig = make_subplots(rows=-(-len(names) // cols), cols=cols, subplot_titles=names)
    for i, name in enumerate(names):
        r, c = divmod(i, cols)
        swept = sorted((x for x in rows if x["point"] == name and not x["default"]), key=lambda x: x["lr"])
        fig.add_trace(
            go.Scatter(
                x=[x["lr"] for x in swept],
                y=[x["fvu"] for x in swept],
                mode="lines+markers",
                line={"color": "#1f77b4"},
                showlegend=i == 0,
                name="swept lr",
            ),
            row=r + 1,
            col=c + 1,
        )
        for d in (x for x in rows if x["point"] == name and x["default"]):
            fig.add_trace(
                go.Scatter(
                    x=[d["lr"]],
                    y=[d["fvu"]],
                    mode="markers",
                    name="default",
                    marker={"symbol": "star", "size": 14, "color": "#d62728"},
                    showlegend=i == 0,
                ),
                row=r + 1,
                col=c + 1,
            )
        fig.update_xaxes(type="log", title_text="lr", row=r + 1, col=c + 1)
        fig.update_yaxes(title_text="held-out FVU", row=r + 1, col=c + 1)
    fig.update_layout(
        title="TopK (k = 32) on MiniLM: held-out FVU against Adam's lr (point = layer, n, steps)",
        template="plotly_white",
        height=330 * -(-len(names) // cols),
        width=1300,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.write_html(out_dir / "recipe.html", include_plotlyjs="cdn")
    try:  # kaleido needs a Chrome/Chromium on the machine
        fig.write_image(out_dir / "recipe.png", width=1300, height=330 * -(-len(names) // cols))
    except Exception as e:  # noqa: BLE001 - the PNG is optional
        print(f"no PNG ({type(e).__name__}: {e})")
    lines = [
        "| point | best lr | best FVU | default lr | default dead window | default FVU | default vs best | "
        "dead at the end (default) | silent on held-out (default) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary(rows):
        tail = (
            f"{s['default_lr']:.2e} | {s['default_window'] or '(a quarter of the run)'} | {s['default_fvu']:.4f} | "
            f"{s['gap']:+.1%} | {s['default_dead']:.1%} | {s['default_silent']} of {s['n_latents']}"
            if "gap" in s
            else " | | | | | "
        )
        lines.append(f"| {s['point']} | {s['best_lr']:.0e} | {s['best_fvu']:.4f} | {tail} |")
    (out_dir / "recipe_table.md").write_text("\n".join(lines) + "\n")


def plot_windows(rows: list[dict], out_dir: Path) -> None:
    """The dead-window study: held-out FVU and latents silent on the held-out tokens against the window, one line
    per point that ran at two windows or more (rows whose only knob is dead_window_tokens, and default rows that
    recorded their window), into recipe_window.html."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    by_point: dict[str, dict[int, dict]] = {}
    for r in rows:
        if set(r.get("knobs", {})) <= {"dead_window_tokens"} and "dead_window" in r and (r["default"] or r.get("knobs")):
            by_point.setdefault(r["point"], {})[r["dead_window"]] = r
    fig = make_subplots(rows=1, cols=2, subplot_titles=("held-out FVU", "latents silent on 16,384 held-out tokens"))
    for i, (name, runs) in enumerate((p, r) for p, r in by_point.items() if len(r) > 1):
        mine = [runs[w] for w in sorted(runs)]
        x = [r["dead_window"] for r in mine]
        color = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")[i % 4]
        fig.add_trace(
            go.Scatter(x=x, y=[r["fvu"] for r in mine], mode="lines+markers", name=name, line={"color": color}), row=1, col=1
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[round(r["eval_dead_fraction"] * r["n_latents"]) for r in mine],
                mode="lines+markers",
                name=name,
                showlegend=False,
                line={"color": color},
            ),
            row=1,
            col=2,
        )
    for c in (1, 2):
        fig.update_xaxes(type="log", title_text="dead window (tokens)", row=1, col=c)
    fig.update_yaxes(type="log", title_text="latents (log)", row=1, col=2)
    fig.update_layout(
        title="TopK at lr 4e-3: the dead-latent window (AuxK trains latents silent that long)",
        template="plotly_white",
        height=420,
        width=1100,
    )
    fig.write_html(out_dir / "recipe_window.html", include_plotlyjs="cdn")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="runs/recipe_cache", help="harvested activations, one folder per layer/split")
    p.add_argument("--out", default="docs/results/recipe.jsonl", help="one JSON line per trained dictionary")
    p.add_argument("--points", nargs="*", help="only these points (names as in the output)")
    p.add_argument("--lrs", type=float, nargs="*", help="the swept rates (default: a grid per budget)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default); 1 lets two sweeps share a 2-core machine"
    )
    p.add_argument("--defaults", action="store_true", help="train each point with the default lr instead")
    p.add_argument("--plot", action="store_true", help="write the figure and table from --out")
    p.add_argument(
        "--plot-windows",
        metavar="JSONL",
        nargs="+",
        help="write recipe_window.html (the dead-window study) from these files' lines, beside --out",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override another SAEConfig / TrainConfig field for these runs (repeatable), e.g. "
        "--set aux_coef=0.125 --set dead_window_tokens=50000; recorded in each line's 'knobs'",
    )
    args = p.parse_args()
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot:
        plot(load_rows(out), out.parent)
        return
    if args.plot_windows:
        plot_windows([r for f in args.plot_windows for r in load_rows(Path(f))], out.parent)
        return
    knobs = parse_knobs(args.set)
    out.parent.mkdir(parents=True, exist_ok=True)
    for layer, n, steps, batch in POINTS:
        name = point_name(layer, n, steps, batch)
        if args.points and name not in args.points:
            continue
        rows = [r for r in load_rows(out) if r["point"] == name and r.get("knobs", {}) == knobs]
        lrs = args.lrs or default_lrs(steps)
        swept = {r["lr"] for r in rows if not r["default"]}
        todo = [None] if args.defaults else [lr for lr in lrs if lr not in swept]
        if args.defaults:  # done when a default run of today's rule (its lr and dead window) is there
            rule = TrainConfig(tokens=steps * batch, batch_size=batch)
            now = (rule.learning_rate(n), knobs.get("dead_window_tokens") or rule.dead_window(n, 32))
            todo = [] if any(r["default"] and (r["lr"], r.get("dead_window")) == now for r in rows) else todo
        if not todo:
            continue
        data = activations(layer, Path(args.cache))
        for lr in todo:
            t = time.perf_counter()
            row = run_point(layer, n, steps, batch, lr, data, knobs=knobs)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{name} lr {row['lr']:.2e}{' (default)' if lr is None else ''}: fvu {row['fvu']:.4f} "
                f"dead {row['dead_fraction']:.3f} held-out dead {row['eval_dead_fraction']:.3f} {knobs or ''} "
                f"({time.perf_counter() - t:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
