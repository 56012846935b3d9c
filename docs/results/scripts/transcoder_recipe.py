"""The default recipe for transcoders: held-out FVU of the MLP output against the learning rate, W_skip's
initialisation and the other init choices, on MiniLM's MLPs (n 3072, k 32, --steps batches of 4096: by default
the demo's 392, 1.6M tokens); and the cost of a bf16 / fp16 pair cache.

Pairs come from `transcoder_common` (harvested once into runs/transcoder_cache). Every run trains one TopK
transcoder on `PairBatches(x, y, 4096, seed=0)` (the same batches for every run) and appends one JSON line to
--out as it finishes; a rerun skips the lines already there.

    python docs/results/scripts/transcoder_recipe.py --layers 3 --lrs 2e-3 4e-3 8e-3       # the lr grid at L3
    python docs/results/scripts/transcoder_recipe.py --layers 1 3 5 --lrs default          # the defaults
    python docs/results/scripts/transcoder_recipe.py --layers 3 --lrs default --seeds 1    # the seed spread
    python docs/results/scripts/transcoder_recipe.py --layers 3 --lrs default --set enc_init=random   # an init knob
    python docs/results/scripts/transcoder_recipe.py --layers 3 --lrs default --cache-dtype bfloat16  # bf16 cache
    python docs/results/scripts/transcoder_recipe.py --plot     # transcoders_recipe.html / .png, the table
    python docs/results/scripts/transcoder_recipe.py --smoke    # synthetic pairs, seconds, writes nothing

Variants: `tc` (no skip), `skip-zero` and `skip-lstsq` (W_skip zero, or the least-squares fit of y on x over the
init tokens). Knobs (`--set`, recorded in each line): enc_init = tied (default: W_enc = W_dec^T, the widths being
equal) | random (unit columns); b_dec_init = median (default) | mean (of what the skip term leaves); b_enc_init =
zero (default) | center (b_enc = -mean(x_n) W_enc over the init tokens: pre-activations centred, as sparsify does).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transcoder_common as common  # noqa: E402

from sae import SAEConfig, SparseAutoencoder, TrainConfig, train  # noqa: E402
from sae.data import PairBatches  # noqa: E402
from sae.init import init_from_sample  # noqa: E402

TRAINER = sys.modules["sae.train"]  # the module (the package's `sae.train` is the function)

N_LATENTS, BATCH = 3072, 4096
STEPS = 4 * common.TRAIN_TOKENS // BATCH  # 392, the demo's budget
VARIANTS = {
    "tc": {"skip": False},
    "skip-zero": {"skip": True, "skip_init": "zero"},
    "skip-lstsq": {"skip": True, "skip_init": "lstsq"},
}
KNOBS = {"enc_init": ("tied", "random"), "b_dec_init": ("median", "mean"), "b_enc_init": ("zero", "center")}
OUT = Path("docs/results/transcoders_recipe.jsonl")


def parse_knobs(pairs: list[str]) -> dict[str, str]:
    knobs = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in KNOBS or value not in KNOBS[name]:
            raise SystemExit(f"--set {pair!r}: expected one of {[f'{k}={v}' for k, vs in KNOBS.items() for v in vs]}")
        if value != KNOBS[name][0]:  # the default is no knob
            knobs[name] = value
    return knobs


def patched_init(knobs: dict[str, str]):
    """init_from_sample, then the knobs' changes: b_dec at the mean (not the geometric median) of what the skip
    term leaves; b_enc = -mean(x_n) W_enc, centring the pre-activations on the init sample (sparsify's)."""

    def init(tc, sample, target=None, skip_init="zero"):
        init_from_sample(tc, sample, target, skip_init=skip_init)
        with torch.no_grad():
            x_n = sample.double() * tc.input_scale.double()
            if knobs.get("b_dec_init") == "mean":
                y_n = target.double() * tc.target_scale.double()
                if tc.cfg.skip:
                    y_n = y_n - x_n @ tc.W_skip.double().T
                tc.b_dec.copy_(y_n.mean(0).to(tc.b_dec.dtype))
            if knobs.get("b_enc_init") == "center":
                tc.b_enc.copy_((-x_n.mean(0) @ tc.W_enc.double()).to(tc.b_enc.dtype))

    return init


def train_one(
    train_xy: tuple[torch.Tensor, torch.Tensor],
    variant: str,
    lr: float | None,
    seed: int,
    knobs: dict[str, str],
    steps: int = STEPS,
    n: int = N_LATENTS,
) -> tuple[SparseAutoencoder, dict]:
    """One TopK (k 32) transcoder on the pairs; (the transcoder, the run's settings and training figures)."""
    x, y = train_xy
    spec = VARIANTS[variant]
    torch.manual_seed(seed)
    tc = SparseAutoencoder(SAEConfig(d_in=x.shape[1], d_out=y.shape[1], n_latents=n, skip=spec["skip"]), seed=seed)
    if knobs.get("enc_init") == "random":
        g = torch.Generator().manual_seed(seed + 10_000)
        w = torch.randn(x.shape[1], n, generator=g, dtype=torch.float64)
        tc.W_enc.data.copy_(w / w.norm(dim=0, keepdim=True))
    tcfg = TrainConfig(
        tokens=steps * BATCH,
        batch_size=BATCH,
        lr=lr,
        seed=seed,
        checkpoint_every=10**9,
        log_every=10**9,
        **({"skip_init": spec["skip_init"]} if "skip_init" in spec else {}),
    )
    if knobs.get("b_dec_init") == "mean" or knobs.get("b_enc_init") == "center":
        TRAINER.init_from_sample = patched_init(knobs)
    try:
        with common.quiet():
            result = train(tc, PairBatches(x, y, batch_size=BATCH, seed=0), tcfg)
    finally:
        TRAINER.init_from_sample = init_from_sample
    tc.eval()
    return tc, {
        "lr": tcfg.learning_rate(n),
        "default": lr is None,
        "skip_init": tcfg.skip_init if spec["skip"] else None,
        "dead_fraction": result.dead_fraction,
        "seconds": result.seconds,
        "steps": steps,
        "n_latents": n,
    }


def score(tc: SparseAutoencoder, test_xy: tuple[torch.Tensor, torch.Tensor]) -> dict:
    x, y = test_xy
    return {
        "fvu": common.heldout_fvu(tc.predict, x, y),
        "l0": common.l0(tc, x),
        "silent": common.silent_fraction(tc, x),
    }


def done_key(r: dict) -> tuple:
    return (
        r["layer"],
        r["variant"],
        None if r["default"] else r["lr"],
        r["seed"],
        tuple(sorted(r.get("knobs", {}).items())),
        r.get("cache_dtype", "float32"),
        r["steps"],
    )


# --- the figure and the table ----------------------------------------------------------------
COLORS = {"tc": "#1f77b4", "skip-zero": "#d62728", "skip-lstsq": "#2ca02c"}


def figure(rows: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    base = [r for r in rows if not r.get("knobs") and r.get("cache_dtype", "float32") == "float32" and r["seed"] == 0]
    layers = sorted({r["layer"] for r in base})
    fig = make_subplots(rows=1, cols=len(layers), subplot_titles=[f"MLP {n} (blocks.{n}.mlp)" for n in layers])
    for c, layer in enumerate(layers, 1):
        for variant, color in COLORS.items():
            mine = sorted((r for r in base if r["layer"] == layer and r["variant"] == variant), key=lambda r: r["lr"])
            swept = {}
            for r in mine:
                if not r["default"]:
                    swept[r["lr"]] = r
            if swept:
                fig.add_trace(
                    go.Scatter(
                        x=list(swept),
                        y=[r["fvu"] for r in swept.values()],
                        mode="lines+markers",
                        name=variant,
                        line={"color": color},
                        legendgroup=variant,
                        showlegend=c == 1,
                    ),
                    row=1,
                    col=c,
                )
            for r in (r for r in mine if r["default"]):
                fig.add_trace(
                    go.Scatter(
                        x=[r["lr"]],
                        y=[r["fvu"]],
                        mode="markers",
                        marker={"symbol": "star", "size": 14, "color": color, "line": {"width": 1, "color": "black"}},
                        name=f"{variant}: default",
                        legendgroup=variant,
                        showlegend=False,
                    ),
                    row=1,
                    col=c,
                )
        fig.update_xaxes(type="log", title_text="lr (Adam)", row=1, col=c)
        fig.update_yaxes(title_text="held-out FVU of the MLP output", row=1, col=c)
    fig.update_layout(
        title=f"TopK transcoders (n 3072, k 32, {'/'.join(str(s) for s in sorted({r['steps'] for r in base}))} x 4096 "
        "tokens) on MiniLM's MLPs: held-out FVU against lr "
        "(star: the default lr)",
        template="plotly_white",
        height=430,
        width=1300,
    )
    return fig


def table(rows: list[dict]) -> str:
    """One line per (layer, variant, knobs, cache dtype, seed): FVU at each swept lr, the default's."""
    lrs = sorted({r["lr"] for r in rows if not r["default"]})
    head = "| layer | variant | seed | knobs | " + " | ".join(f"{lr:g}" for lr in lrs) + " | default (lr) | silent (default) |"
    lines = [head, "|" + "---|" * (5 + len(lrs) + 1)]
    keys = dict.fromkeys(
        (r["layer"], r["variant"], r["seed"], tuple(sorted(r.get("knobs", {}).items())), r.get("cache_dtype", "float32"))
        for r in rows
    )
    for layer, variant, seed, knobs, dtype in sorted(keys, key=lambda k: (k[0], list(VARIANTS).index(k[1]), k[3], k[4], k[2])):
        mine = [
            r
            for r in rows
            if (r["layer"], r["variant"], r["seed"], tuple(sorted(r.get("knobs", {}).items())), r.get("cache_dtype", "float32"))
            == (layer, variant, seed, knobs, dtype)
        ]
        swept = {r["lr"]: r["fvu"] for r in mine if not r["default"]}
        best = min(swept.values()) if swept else math.nan
        cells = [("**%.4f**" if v == best else "%.4f") % v if (v := swept.get(lr)) is not None else "" for lr in lrs]
        d = [r for r in mine if r["default"]]
        dcell = f"{d[-1]['fvu']:.4f} ({d[-1]['lr']:g})" if d else ""
        scell = f"{d[-1]['silent']:.1%}" if d else ""
        label = ", ".join(f"{k}={v}" for k, v in knobs) + (f" cache {dtype}" if dtype != "float32" else "")
        lines.append(f"| {layer} | {variant} | {seed} | {label} | " + " | ".join(cells) + f" | {dcell} | {scell} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="*", default=[3])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--lrs", nargs="*", default=["default"], help="rates, or 'default' for no lr given")
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--steps", type=int, default=STEPS, help="batches of 4096 per run (default: the demo's 392)")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help=f"one of {KNOBS}")
    p.add_argument(
        "--cache-dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="train on the pairs as a cache of this dtype stores them",
    )
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--plot", action="store_true", help="the figure (html + png) and the table from --out")
    p.add_argument("--smoke", action="store_true", help="synthetic pairs, 4 steps, n 256: the script in seconds")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot:
        from sae.analysis.static_figure import write_png

        rows = common.load_rows(args.out)
        fig = figure(rows)
        stem = args.out.with_suffix("")
        fig.write_html(stem.with_suffix(".html"), include_plotlyjs="cdn")
        if write_png(fig, stem.with_suffix(".png"), width=1300, height=430) is None:
            print("no PNG: neither kaleido nor a Chromium renders here")
        print(table(rows))
        return
    knobs = parse_knobs(args.set)
    lrs = [None if v == "default" else float(v) for v in args.lrs]
    if args.smoke:
        sx, sy = common.synthetic_pairs(4 * BATCH, 64, seed=0)
        (x, y), (tx, ty) = (sx[BATCH:], sy[BATCH:]), (sx[:BATCH], sy[:BATCH])
        for variant in args.variants:
            tc, info = train_one((x, y), variant, lrs[0], 0, knobs, steps=4, n=256)
            print(variant, {**info, **score(tc, (tx, ty))})
        return
    dtype = getattr(torch, args.cache_dtype)
    test_dir, train_dir = common.harvest("test", common.TEST_TOKENS), common.harvest("train", common.TRAIN_TOKENS)
    done = {done_key(r) for r in common.load_rows(args.out)}
    for layer in args.layers:
        todo = [
            (variant, lr, seed)
            for seed in args.seeds
            for lr in lrs
            for variant in args.variants
            if (layer, variant, lr, seed, tuple(sorted(knobs.items())), args.cache_dtype, args.steps) not in done
        ]
        if not todo:
            continue
        train_xy, test_xy = common.read_pairs(train_dir, layer), common.read_pairs(test_dir, layer)
        if dtype != torch.float32:
            train_xy = common.as_cached(train_xy, dtype)
        for variant, lr, seed in todo:
            tc, info = train_one(train_xy, variant, lr, seed, knobs, steps=args.steps)
            row = {"layer": layer, "variant": variant, "seed": seed, **info, **score(tc, test_xy)}
            if knobs:
                row["knobs"] = knobs
            if args.cache_dtype != "float32":
                row["cache_dtype"] = args.cache_dtype
            common.append_row(args.out, row)
            print(
                f"L{layer} {variant:10s} lr {row['lr']:.2e}{' (default)' if lr is None else ''} seed {seed} {knobs or ''}"
                f"{args.cache_dtype if args.cache_dtype != 'float32' else ''}: FVU {row['fvu']:.4f}, L0 {row['l0']:.1f}, "
                f"silent {row['silent']:.1%}, dead {row['dead_fraction']:.1%} ({row['seconds']:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
