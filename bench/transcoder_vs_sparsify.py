"""Transcoders with defaults only, ours against sparsify 1.3.3's own transcoder trainer, side by side: held-out
FVU of the MLP output of the embedded model's block 3.

The pairs (x = `blocks.3.hook_mlp_in`, y = `blocks.3.hook_mlp_out`: on MiniLM, the MLP module's input and output)
are harvested once into --cache (training split: 401,408 tokens; test split: 16,384 tokens) and saved once more
as one file with the rows of every batch (`sae.data.PairBatches(x, y, 4096, seed=0)`'s order). Both trainers read
that file: ours in this process, sparsify's in a subprocess of the interop interpreter (--peer-python), which
imports nothing of ours. Both take the same batches in the same order (a checksum of every batch, compared), for
the same budget (--steps batches of 4096; the demo's is 392), and both are scored here on the same held-out pairs:
sum |y - y_hat|^2 over the total variance of y about its mean.

- ours: `SAEConfig(d_in, d_out)` (TopK, n = 8 d = 3072, k = 32), with and without `skip=True`,
  `train(tc, batches, TrainConfig(tokens=steps * 4096))`: nothing else given.
- sparsify 1.3.3: `SparseCoderConfig(transcode=True)` (and `skip_connection=True`) with `num_latents` set to ours
  (its default width is 32 d), with its `TrainConfig`'s defaults, its trainer's loop body (sparsify/trainer.py)
  on each batch: the dictionary built after `torch.manual_seed(seed)`; on the first batch b_enc = -mean(x) W_enc^T
  and b_dec = mean(y); loss fvu + auxk_alpha * auxk + multi_topk_fvu / 8 (auxk_alpha 0: no dead mask); no decoder
  renormalisation or parallel-gradient removal for a transcoder; its default optimiser (signum: SignSGD under
  ScheduleFreeWrapper, momentum 0.95, lr 5e-3 / sqrt(n / 2^14), no schedule); scored after `optimizer.eval()`
  (the averaged weights its trainer saves).

    PYTHONPATH=$PWD .venv/bin/python bench/transcoder_vs_sparsify.py --out docs/results/transcoders_bench.jsonl
    PYTHONPATH=$PWD .venv/bin/python bench/transcoder_vs_sparsify.py --steps 98 --seeds 0 1 --out ...
    PYTHONPATH=$PWD .venv/bin/python bench/transcoder_vs_sparsify.py --table docs/results/transcoders_bench.jsonl
    PYTHONPATH=$PWD .venv/bin/python bench/transcoder_vs_sparsify.py --smoke   # synthetic pairs, seconds

Each run appends one JSON line to --out as it finishes (a rerun skips the runs already there); the table of
held-out FVUs and the ratios ours / sparsify is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

IN_HOOK, OUT_HOOK = "blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out"
TRAIN_TOKENS, TEST_TOKENS, BATCH = 98 * 4096, 16_384, 4096
STEPS = 4 * TRAIN_TOKENS // BATCH  # 392: the demo's budget (1.6M tokens)
RUNS = ("ours", "ours-skip", "sparsify", "sparsify-skip")
PEER_PYTHON = Path(
    os.environ.get("SAEKIT_INTEROP_PYTHON") or Path(__file__).resolve().parent.parent / ".venv-interop" / "bin" / "python"
)


# --- the vectors ------------------------------------------------------------------------------
def cache_folder(cache: Path, split: str, tokens: int) -> Path:
    return cache / f"{split}-{tokens}"


def harvest(cache: Path) -> None:
    """Both splits' block-3 MLP pairs into `cache` (a complete cache is reused, an interrupted one resumed)."""
    from activations import ActivationStream, CacheError, load_model

    model = None
    for split, tokens in (("train", TRAIN_TOKENS), ("test", TEST_TOKENS)):
        folder = cache_folder(cache, split, tokens)
        with contextlib.suppress(CacheError, FileNotFoundError):
            ActivationStream.from_cache(folder, batch_size=BATCH, verify=False)
            continue
        model = model or load_model("minilm")
        ActivationStream(
            model,
            hook=IN_HOOK,
            target=OUT_HOOK,
            split=split,
            total_tokens=tokens,
            batch_size=BATCH,
            seed=0,
            cache_dir=folder,
            progress=False,
        ).harvest()


def read_pairs(cache: Path, split: str, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    from activations import ActivationStream

    reader = ActivationStream.from_cache(cache_folder(cache, split, tokens), batch_size=BATCH, verify=False)
    xs, ys = zip(*reader)
    return torch.cat(xs), torch.cat(ys)


def synthetic_pairs(rows: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random two-layer MLP's inputs and outputs, for --smoke."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(d, 4 * d, generator=g) / d**0.5, torch.randn(4 * d, d, generator=g) / (4 * d) ** 0.5
    x = torch.randn(rows, d, generator=g) + 0.5
    return x, torch.relu(x @ w1) @ w2


def batch_rows(rows: int, steps: int) -> torch.Tensor:
    """[steps, BATCH] row indices: the rows of each batch `PairBatches(x, y, BATCH, seed=0)` yields, in order."""
    from sae.data import PairBatches

    ids = torch.arange(rows, dtype=torch.float64)[:, None]
    got = []
    for i, (b, _) in enumerate(PairBatches(ids, ids, batch_size=BATCH, seed=0)):
        if i == steps:
            break
        got.append(b[:, 0].long())
    return torch.stack(got)


class OrderedBatches:
    """(x[rows], y[rows]) for each row list of `order`, with a running checksum of what was yielded (both trainers
    compute it the same way; the two are compared)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor) -> None:
        self.x, self.y, self.order, self.sums = x, y, order, []

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sums = []
        for rows in self.order:
            x, y = self.x[rows], self.y[rows]
            self.sums.append(float(x[:, 0].double().sum() + y[:, -1].double().sum()))
            yield x, y

    def checksum(self) -> str:
        return f"{len(self.sums)} batches, {math.fsum(self.sums):.9e}"


# --- the runs ---------------------------------------------------------------------------------
def ours(x, y, order: torch.Tensor, test_x: torch.Tensor, seed: int, skip: bool, n: int | None) -> dict:
    from sae import SAEConfig, SparseAutoencoder, TrainConfig, train

    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=x.shape[1], d_out=y.shape[1], skip=skip, hook_name=IN_HOOK, target_hook=OUT_HOOK, n_latents=n)
    tc = SparseAutoencoder(cfg)
    tcfg = TrainConfig(tokens=order.shape[0] * BATCH, seed=seed)
    batches = OrderedBatches(x, y, order)
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar
        train(tc, batches, tcfg)
    seconds = time.perf_counter() - t
    tc.eval()
    with torch.no_grad():
        y_hat = torch.cat([tc.predict(test_x[i : i + BATCH]) for i in range(0, test_x.shape[0], BATCH)])
        fired = torch.zeros(cfg.latents, dtype=torch.bool)
        for i in range(0, test_x.shape[0], BATCH):
            code = tc.encode(test_x[i : i + BATCH])
            fired[code.indices[code.values != 0]] = True
    return {
        "y_hat": y_hat,
        "seconds": seconds,
        "batches": batches.checksum(),
        "silent": 1 - fired.double().mean().item(),
        "n_latents": cfg.latents,
        "k": cfg.k,
        "lr": tcfg.learning_rate(cfg.latents, transcoder=tc.centres_input),
        "optimizer": "adam",
        "skip_init": tcfg.skip_init if skip else None,
        "dead_window": tcfg.dead_window(cfg.latents, cfg.k),
    }


def sparsify_worker(tensors: Path, result: Path, seed: int, skip: bool, n: int) -> None:
    """In the peer's interpreter: sparsify's Trainer.fit loop body for one hookpoint with its TrainConfig's defaults,
    fed the saved batches; writes its held-out predictions and figures to `result` (.safetensors + .json)."""
    from safetensors.torch import load_file, save_file
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.config import TrainConfig
    from sparsify.sign_sgd import SignSGD

    t = load_file(tensors)
    x, y, order, test_x = t["x"], t["y"], t["order"], t["test_x"]
    sae_cfg = SparseCoderConfig(transcode=True, skip_connection=skip, num_latents=n)
    cfg = TrainConfig(sae=sae_cfg)
    if (cfg.optimizer, cfg.grad_acc_steps, cfg.micro_acc_steps, cfg.loss_fn, cfg.sae.k) != ("signum", 1, 1, "fvu", 32):
        raise SystemExit(f"sparsify's TrainConfig defaults changed ({cfg}); this benchmark drives signum / fvu / k 32")
    torch.manual_seed(seed)
    sae = SparseCoder(x.shape[1], cfg.sae, "cpu", dtype=torch.float32)
    lr = cfg.lr or 5e-3 / (sae.num_latents / (2**14)) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    batches = OrderedBatches(x, y, order)
    start = time.perf_counter()
    for step, (inputs, outputs) in enumerate(batches):
        if step == 0:
            sae.encoder.bias.data = -inputs.mean(0) @ sae.encoder.weight.data.T
            sae.b_dec.data = outputs.mean(0)
        if sae.cfg.normalize_decoder and not cfg.sae.transcode:
            sae.set_decoder_norm_to_unit_norm()
        dead_mask = since_fired > cfg.dead_feature_threshold if cfg.auxk_alpha > 0 else None
        total_variance = (outputs - outputs.mean(0)).pow(2).sum()
        out = sae(x=inputs, y=outputs, dead_mask=dead_mask, total_variance=total_variance)
        did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        if cfg.sae.normalize_decoder and not cfg.sae.transcode:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired += inputs.shape[0]
            since_fired[did_fire] = 0
    seconds = time.perf_counter() - start
    opt.eval()  # the schedule-free average: what its trainer saves
    with torch.no_grad():
        y_hat, fired = [], torch.zeros(sae.num_latents, dtype=torch.bool)
        for i in range(0, test_x.shape[0], BATCH):
            v = test_x[i : i + BATCH]
            y_hat.append(sae(v, torch.zeros_like(v)).sae_out)
            fired[sae.encode(v).top_indices.flatten()] = True
    save_file({"y_hat": torch.cat(y_hat).contiguous()}, str(result.with_suffix(".safetensors")))
    info = {
        "seconds": seconds,
        "batches": batches.checksum(),
        "silent": 1 - fired.double().mean().item(),
        "n_latents": sae.num_latents,
        "k": cfg.sae.k,
        "lr": lr,
        "optimizer": "signum (schedule-free, momentum 0.95)",
        "auxk_alpha": cfg.auxk_alpha,
    }
    result.with_suffix(".json").write_text(json.dumps(info))


def sparsify(tensors: Path, peer: Path, seed: int, skip: bool, n: int) -> dict:
    """sparsify_worker in the peer's interpreter, on the saved tensors."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result"
        cmd = [str(peer), __file__, "--peer-worker", str(tensors), str(result), str(seed), str(int(skip)), str(n)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of ours on the peer's side
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"sparsify's run failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
        info = json.loads(result.with_suffix(".json").read_text())
        info["y_hat"] = load_file(result.with_suffix(".safetensors"))["y_hat"]
    return info


def heldout_fvu(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Sum of squared errors over the total variance of the held-out targets about their mean (float64)."""
    y64 = y.double()
    return (y_hat.double() - y64).pow(2).sum().item() / (y64 - y64.mean(0)).pow(2).sum().item()


def save_tensors(path: Path, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, test_x: torch.Tensor) -> None:
    """The training pairs, the batches' rows and the held-out inputs, once, for the peer's process."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"x": x.contiguous(), "y": y.contiguous(), "order": order.contiguous(), "test_x": test_x.contiguous()}, str(tmp))
    tmp.replace(path)


def versions(peer: Path) -> dict:
    out = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    probe = "import importlib.metadata as m; print(m.version('eai-sparsify'), m.version('schedulefree'), m.version('torch'))"
    got = subprocess.run([str(peer), "-c", probe], capture_output=True, text=True)
    parts = got.stdout.split() if got.returncode == 0 else ["absent"] * 3
    out.update({"eai-sparsify": parts[0], "schedulefree": parts[1], "peer_torch": parts[2]})
    return out


def table(rows: list[dict]) -> str:
    """Per (steps, seed): each run's held-out FVU, and ours over sparsify's, without and with the skip term."""
    by = {(r["steps"], r["seed"], r["run"]): r for r in rows}
    lines = [
        "| steps x 4096 | seed | ours | sparsify | ours / sparsify | ours, skip | sparsify, skip | ours / sparsify, skip |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for steps, seed in sorted({(r["steps"], r["seed"]) for r in rows}):
        cells = []
        for ours_run, peer_run in (("ours", "sparsify"), ("ours-skip", "sparsify-skip")):
            a, b = by.get((steps, seed, ours_run)), by.get((steps, seed, peer_run))
            cells += [f"{a['heldout_fvu']:.4f}" if a else "", f"{b['heldout_fvu']:.4f}" if b else ""]
            cells.append(f"{a['heldout_fvu'] / b['heldout_fvu']:.3f}x" if a and b else "")
        lines.append(f"| {steps} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_rows(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--peer-worker":  # the peer's side: see sparsify()
        tensors, result, seed, skip, n = sys.argv[2:7]
        sparsify_worker(Path(tensors), Path(result), int(seed), skip == "1", int(n))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path("/tmp/saekit-bench-transcoder"), help="where the pairs are harvested")
    p.add_argument("--harvest-only", action="store_true", help="harvest the pairs and stop")
    p.add_argument("--runs", nargs="*", default=list(RUNS), choices=RUNS)
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--steps", type=int, default=STEPS, help="batches of 4096 per run (default: the demo's 392)")
    p.add_argument(
        "--peer-python",
        type=Path,
        default=PEER_PYTHON,
        help="the interpreter with eai-sparsify 1.3.3 (default: $SAEKIT_INTEROP_PYTHON, else .venv-interop)",
    )
    p.add_argument("--out", type=Path, help="append one JSON line per run (runs already there are skipped)")
    p.add_argument("--table", type=Path, metavar="JSONL", help="print the table of a --out file and stop")
    p.add_argument("--smoke", action="store_true", help="synthetic pairs, 4 steps, n 256: checks the script in seconds")
    args = p.parse_args()
    if args.table:
        print(table(load_rows(args.table)))
        return
    if args.harvest_only:
        harvest(args.cache)
        return
    n = 8 * 384
    if args.smoke:
        sx, sy = synthetic_pairs(3 * BATCH, 64, 0)
        (x, y), (test_x, test_y), args.steps, n = (sx[BATCH:], sy[BATCH:]), (sx[:BATCH], sy[:BATCH]), 4, 256
        tensors = Path(tempfile.mkdtemp()) / "smoke.safetensors"
    else:
        harvest(args.cache)
        (x, y), (test_x, test_y) = read_pairs(args.cache, "train", TRAIN_TOKENS), read_pairs(args.cache, "test", TEST_TOKENS)
        tensors = args.cache / f"bench-{args.steps}.safetensors"
        if x.shape[1] * 8 != n:
            raise SystemExit(f"expected MiniLM's width 384, got {x.shape[1]}")
    order = batch_rows(x.shape[0], args.steps)
    if not tensors.exists():
        save_tensors(tensors, x, y, order, test_x)
    info = versions(args.peer_python)
    print(json.dumps(info), flush=True)
    rows = load_rows(args.out)
    done = {(r["run"], r["seed"], r["steps"]) for r in rows}
    runners: dict[str, Callable[[int, bool], dict]] = {
        "ours": lambda seed, skip: ours(x, y, order, test_x, seed, skip, n),
        "sparsify": lambda seed, skip: sparsify(tensors, args.peer_python, seed, skip, n),
    }
    for seed in args.seeds:
        for name in args.runs:
            if (name, seed, args.steps) in done:
                continue
            got = runners[name.removesuffix("-skip")](seed, name.endswith("-skip"))
            row = {"run": name, "seed": seed, "steps": args.steps, "tokens": args.steps * BATCH}
            row["heldout_fvu"] = heldout_fvu(got.pop("y_hat"), test_y)
            row.update(got, **info)
            rows.append(row)
            print(
                f"{name:14s} seed {seed}: held-out FVU {row['heldout_fvu']:.4f}, silent {row['silent']:.1%}, "
                f"lr {row['lr']:.3g}, {row['seconds']:.0f} s, batches {row['batches']}",
                flush=True,
            )
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    sums = {r["batches"] for r in rows if r["steps"] == args.steps}
    if len(sums) > 1:
        raise SystemExit(f"the runs saw different batches: {sorted(sums)}")
    print(table([r for r in rows if r["steps"] == args.steps]))


if __name__ == "__main__":
    main()
