"""SAE, transcoder, skip transcoder and CLT on MiniLM's MLPs at equal L0: held-out FVU of each MLP's output, and
the spliced embedding recovered.

At every layer of --layers (default 0-5), with defaults only (n 3072 per layer, k 32 per layer, --steps batches
of 4096 tokens: by default the demo's 392):

- `sae`: a TopK SAE on the MLP output (`blocks.N.mlp.hook_out`), reading the output itself;
- `tc`: a TopK transcoder from the MLP's input to its output;
- `skip`: the same with `skip=True`;
- `clt`: one cross-layer transcoder over all the layers (each layer's encoder selects k 32 of its n 3072, so the
  L0 per layer is the others'; the prediction of layer l' sums the decoded features of every layer l <= l').

The per-layer dictionaries train on `PairBatches(x, y, 4096, seed=0)` (the SAE on `TensorBatches(y, ...)`, the
same rows), the CLT on the stacked pairs of all its layers (`PairBatches` of [N, L, d]). FVU: sum of squared
errors over the total variance of y, on the 16,384 held-out pairs. Training leaves the spliced cell "pending";
`--spliced-only` fills it from the dictionaries saved under --runs with `sae.analysis.evaluate.evaluate` (the
model with the dictionary's prediction in place of the MLP's output: embedding recovered against zero and mean
ablation), keeping the reason where evaluate does not take the dictionary. One JSON line per dictionary goes to
--out as it finishes; a rerun skips what is there.

    python docs/results/scripts/transcoder_compare.py                  # everything (CPU-hours: see transcoders.md)
    python docs/results/scripts/transcoder_compare.py --kinds tc skip  # some kinds only
    python docs/results/scripts/transcoder_compare.py --spliced-only   # the spliced column, from the saved runs
    python docs/results/scripts/transcoder_compare.py --table          # the markdown table from --out
    python docs/results/scripts/transcoder_compare.py --smoke          # synthetic pairs, seconds, writes nothing
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transcoder_common as common  # noqa: E402

from sae import SAEConfig, SparseAutoencoder, TrainConfig, train  # noqa: E402
from sae.data import PairBatches, TensorBatches  # noqa: E402

N_LATENTS, BATCH = 3072, 4096
STEPS = 4 * common.TRAIN_TOKENS // BATCH
KINDS = ("sae", "tc", "skip", "clt")
OUT = Path("docs/results/transcoders_compare.jsonl")
RUNS = Path("runs/transcoder_compare")
SPLICED_KEYS = ("embedding_recovered_mean", "embedding_recovered_zero", "hidden_recovered_mean")


def config(kind: str, layers: tuple[int, ...], layer: int | None, d: int, n: int) -> SAEConfig:
    if kind == "sae":
        return SAEConfig(d_in=d, n_latents=n, hook_name=common.mlp_out(layer), model_name="minilm")
    if kind == "clt":
        return SAEConfig(
            d_in=d,
            d_out=d,
            n_latents=n,
            layers=len(layers),
            first_layer=layers[0],
            hook_name=common.mlp_in("{}"),
            target_hook=common.mlp_out("{}"),
            model_name="minilm",
        )
    return SAEConfig(
        d_in=d,
        d_out=d,
        n_latents=n,
        skip=kind == "skip",
        hook_name=common.mlp_in(layer),
        target_hook=common.mlp_out(layer),
        model_name="minilm",
    )


def fit(kind: str, cfg: SAEConfig, data, steps: int) -> tuple[SparseAutoencoder, float, float]:
    """Train with defaults only (the budget given); (the dictionary, seconds, dead fraction at the end)."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(cfg, seed=0)
    with common.quiet():
        result = train(sae, data, TrainConfig(tokens=steps * BATCH, batch_size=BATCH, checkpoint_every=10**9, log_every=10**9))
    sae.eval()
    return sae, result.seconds, result.dead_fraction


def scores(kind: str, sae: SparseAutoencoder, test_xy: tuple[torch.Tensor, torch.Tensor]) -> dict:
    x, y = test_xy
    inputs = y if kind == "sae" else x
    row = {
        "fvu": common.heldout_fvu(sae.predict, inputs, y),
        "l0": common.l0(sae, inputs),
        "silent": common.silent_fraction(sae, inputs),
    }
    if kind == "clt":
        row["fvu_per_layer"] = common.per_layer_fvu(sae.predict, x, y)
        row["l0_per_layer"] = row["l0"] / sae.cfg.layers
    return row


def spliced(sae: SparseAutoencoder, model, tokens: int) -> dict:
    """evaluate()'s spliced measures of the dictionary, or {"spliced": "pending", "reason": ...} where evaluate
    does not take it yet."""
    from sae.analysis.evaluate import evaluate
    from sae.analysis.measures import MEASURES

    try:
        m = evaluate(sae, model, tokens=tokens, skip=[k for k in MEASURES if k != "spliced"], progress=False)
    except (ValueError, NotImplementedError, TypeError, KeyError) as e:
        return {"spliced": "pending", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    got = {k: m[k] for k in SPLICED_KEYS if k in m}
    if not got:
        return {"spliced": "pending", "reason": f"evaluate gave no embedding recovered (keys {sorted(m)[:20]})"}
    return {"spliced": got, "spliced_eval_tokens": m.get("eval_tokens")}


def run_name(kind: str, layers: tuple[int, ...], layer: int | None) -> str:
    return f"clt-L{layers[0]}-{layers[-1]}" if kind == "clt" else f"{kind}-L{layer}"


def table(rows: list[dict]) -> str:
    """Per layer: each kind's held-out FVU and spliced embedding recovered (mean ablation)."""
    by = {r["run"]: r for r in rows}
    clt = next((r for r in rows if r["kind"] == "clt"), None)
    layers = sorted({r["layer"] for r in rows if r["kind"] != "clt"} | set(clt["layers"] if clt else []))

    def spl(r: dict | None, i: int | None = None) -> str:
        if r is None:
            return ""
        s = r.get("spliced")
        if isinstance(s, dict):
            return f"{s['embedding_recovered_mean']:.3f}"
        return "pending"

    head = (
        "| MLP | SAE on the output: FVU | transcoder: FVU | skip transcoder: FVU | CLT: FVU | "
        "SAE: spliced emb. rec. | transcoder: spliced | skip: spliced | CLT: spliced (all layers at once) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for layer in layers:
        cells = [by.get(f"{k}-L{layer}") for k in ("sae", "tc", "skip")]
        fvus = [f"{c['fvu']:.4f}" if c else "" for c in cells]
        clt_fvu = f"{clt['fvu_per_layer'][clt['layers'].index(layer)]:.4f}" if clt and layer in clt["layers"] else ""
        clt_spl = spl(clt) if clt and layer == layers[0] else ""
        lines.append(
            f"| {layer} | " + " | ".join(fvus) + f" | {clt_fvu} | " + " | ".join(spl(c) for c in cells) + f" | {clt_spl} |"
        )
    if clt:
        per = [by.get(f"{k}-L{n}") for k in ("sae", "tc", "skip") for n in clt["layers"]]
        if all(per):
            mean = {k: sum(by[f"{k}-L{n}"]["fvu"] for n in clt["layers"]) / len(clt["layers"]) for k in ("sae", "tc", "skip")}
            clt_mean = sum(clt["fvu_per_layer"]) / len(clt["layers"])
            lines.append(f"| mean | {mean['sae']:.4f} | {mean['tc']:.4f} | {mean['skip']:.4f} | {clt_mean:.4f} | | | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="0-5", help="first-last")
    p.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    p.add_argument("--steps", type=int, default=STEPS, help="batches of 4096 per run (default: the demo's 392)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--runs", type=Path, default=RUNS, help="where the trained dictionaries are saved")
    p.add_argument("--spliced-tokens", type=int, default=common.TEST_TOKENS)
    p.add_argument("--spliced-only", action="store_true", help="recompute the spliced cells still pending, from --runs")
    p.add_argument("--table", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="synthetic pairs, 4 steps, n 256: the script in seconds")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    first, _, last = args.layers.partition("-")
    layers = tuple(range(int(first), int(last or first) + 1))
    if args.table:
        print(table(common.load_rows(args.out)))
        return
    if args.smoke:
        sx, sy = common.synthetic_pairs(4 * BATCH, 32, seed=0, layers=3)
        (x, y), (tx, ty) = (sx[BATCH:], sy[BATCH:]), (sx[:BATCH], sy[:BATCH])
        for kind in args.kinds:
            if kind == "clt":
                sae, *_ = fit(kind, config(kind, (0, 1, 2), None, 32, 128), PairBatches(x, y, BATCH), 2)
                print(kind, scores(kind, sae, (tx, ty)))
            else:
                data = TensorBatches(y[:, 1], BATCH) if kind == "sae" else PairBatches(x[:, 1], y[:, 1], BATCH)
                sae, *_ = fit(kind, config(kind, (0, 1, 2), 1, 32, 128), data, 2)
                print(kind, scores(kind, sae, (tx[:, 1], ty[:, 1])))
        return
    rows = common.load_rows(args.out)
    if args.spliced_only:
        from activations import load_model

        model = load_model("minilm")
        for r in rows:
            if r.get("spliced") == "pending" and (args.runs / r["run"]).exists():
                r.pop("reason", None)
                r.update(spliced(SparseAutoencoder.load(args.runs / r["run"]), model, args.spliced_tokens))
                print(r["run"], r.get("spliced"), r.get("reason", ""), flush=True)
        args.out.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
        return
    done = {(r["run"], r["steps"]) for r in rows}
    test_dir, train_dir = common.harvest("test", common.TEST_TOKENS), common.harvest("train", common.TRAIN_TOKENS)
    for kind in args.kinds:
        for layer in [None] if kind == "clt" else layers:
            name = run_name(kind, layers, layer)
            if (name, args.steps) in done:
                continue
            t = time.perf_counter()
            if kind == "clt":
                test_xy = common.read_pairs(test_dir, layers)
                x, y = common.read_pairs(train_dir, layers)
                data = PairBatches(x, y, BATCH, seed=0)
                sae, seconds, dead = fit(kind, config(kind, layers, None, x.shape[-1], N_LATENTS), data, args.steps)
            else:
                test_xy = common.read_pairs(test_dir, layer)
                x, y = common.read_pairs(train_dir, layer)
                data = TensorBatches(y, BATCH, seed=0) if kind == "sae" else PairBatches(x, y, BATCH, seed=0)
                sae, seconds, dead = fit(kind, config(kind, layers, layer, x.shape[1], N_LATENTS), data, args.steps)
            del x, y, data
            sae.save(args.runs / name)
            row = {"run": name, "kind": kind, "layer": layer, "layers": list(layers), "steps": args.steps, "n_latents": N_LATENTS}
            row.update(seconds=seconds, dead_fraction=dead, **scores(kind, sae, test_xy))
            row.update(spliced="pending", reason="not computed yet: --spliced-only")
            common.append_row(args.out, row)
            print(
                f"{name}: FVU {row['fvu']:.4f}, L0 {row['l0']:.1f}, silent {row['silent']:.1%}, spliced {row['spliced']} "
                f"({time.perf_counter() - t:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
