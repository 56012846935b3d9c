#!/usr/bin/env python
"""The trainer on CUDA, Triton kernels against the torch twins: same data, same seed, same steps.

    python bench/gpu_train.py --out $OUT            (on the GPU machine; bench/gpu.sh runs it)

For each family it trains one dictionary twice with `sae.train.Trainer`, once with kernels.BACKEND = "triton"
(the CUDA default) and once with "torch", on synthetic activations (sparse combinations of a random
ground-truth dictionary plus noise, drawn on the device), and reports: the first step's loss of each (same
initialisation, so these must agree to rounding), the held-out FVU after the run, the median step time, and the
peak memory of a step, and any Triton path whose first-use check failed (it then ran on the twin: kernels/first_use.py).
Writes <out>/gpu_train.json and prints a table. Needs torch, triton, tqdm, safetensors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu":
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit module is imported

import kernels  # noqa: E402
from sae import SAEConfig, SparseAutoencoder, TrainConfig  # noqa: E402
from sae.init import init_from_sample  # noqa: E402
from sae.train import Trainer  # noqa: E402


def synthetic(d: int, n_true: int, active: int, rows: int, gen: torch.Generator, atoms: torch.Tensor) -> torch.Tensor:
    """rows activations: `active` atoms per row with exponential magnitudes, plus 5% isotropic noise."""
    idx = torch.randint(0, n_true, (rows, active), generator=gen, device=DEV)
    mag = torch.empty(rows, active, device=DEV).exponential_(generator=gen)
    x = (mag[:, :, None] * atoms[idx]).sum(1)
    return x + 0.05 * x.norm(dim=1, keepdim=True) / d**0.5 * torch.randn(rows, d, generator=gen, device=DEV)


class _Timer:
    """A CUDA event, or a host clock on the CPU smoke run."""

    def __init__(self) -> None:
        self.ev = torch.cuda.Event(enable_timing=True) if DEV == "cuda" else None
        self.t = 0.0

    def record(self) -> None:
        if self.ev is not None:
            self.ev.record()
        else:
            import time

            self.t = time.perf_counter()

    def synchronize(self) -> None:
        if self.ev is not None:
            self.ev.synchronize()

    def elapsed_time(self, end: _Timer) -> float:
        return self.ev.elapsed_time(end.ev) if self.ev is not None else (end.t - self.t) * 1e3


def _reset_peak() -> int:
    if DEV != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak_since(base: int) -> float | None:
    if DEV != "cuda":
        return None
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run(family: str, backend: str, args, atoms: torch.Tensor) -> dict:
    kernels.BACKEND = backend
    d, n, k, B = args.d, args.n, args.k, args.batch
    gen = torch.Generator(device=DEV).manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_latents=n, family=family, k=k), device=DEV, seed=0)
    init_from_sample(sae, synthetic(d, atoms.shape[0], args.active, 8192, gen, atoms))
    trainer = Trainer(sae, TrainConfig(tokens=B * args.steps, batch_size=B, device=DEV))
    held = synthetic(d, atoms.shape[0], args.active, 8192, torch.Generator(device=DEV).manual_seed(2), atoms)
    times, first = [], None
    start, end = _Timer(), _Timer()
    for step in range(args.steps):
        x = synthetic(d, atoms.shape[0], args.active, B, gen, atoms)
        if step == args.steps // 2:
            base = _reset_peak()
        start.record()
        stats = trainer.train_step(x)
        end.record()
        if step == 0:
            first = float(stats["loss"]) if "loss" in stats else None
        if step == args.steps // 2:
            peak = _peak_since(base)
        if step >= min(10, args.steps // 2):
            end.synchronize()
            times.append(start.elapsed_time(end))
    sae.eval()
    with torch.no_grad():
        fvu = float(sae(held).fvu)
    return {
        "first_loss": first,
        "fvu_held_out": fvu,
        "step_ms_median": statistics.median(times),
        "step_peak_mib": peak,
        "steps": args.steps,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--families", default="topk,batchtopk,abstopk")
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--n", type=int, default=24576)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--active", type=int, default=24, help="ground-truth atoms per synthetic activation")
    args = p.parse_args()
    if DEV == "cpu":
        print("no CUDA device: a CPU smoke run (Triton in its interpreter, wall-clock times)", file=sys.stderr)
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device=DEV).manual_seed(0)
    atoms = torch.randn(4 * args.n, args.d, generator=g, device=DEV)
    atoms /= atoms.norm(dim=1, keepdim=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], False
    for fam in [f for f in args.families.split(",") if f]:
        row = {"family": fam, "d": args.d, "n": args.n, "k": args.k, "B": args.batch}
        for backend in ("triton", "torch"):
            try:
                row[backend] = run(fam, backend, args, atoms)
            except Exception as exc:  # noqa: BLE001  keep the other runs
                failed = True
                row[backend] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                print(f"[{fam} {backend}] FAILED {type(exc).__name__}: {exc}", flush=True)
            print(f"[{fam} {backend}] {row[backend]}", flush=True)
        rows.append(row)
        fallbacks = {str(key): diff for key, diff in kernels.first_use.fallbacks().items()}
        (out / "gpu_train.json").write_text(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
                    "torch": torch.__version__,
                    "rows": rows,
                    "first_use_fallbacks": fallbacks,
                },
                indent=1,
            )
        )
    print(
        "\n| family | first loss triton / torch | held-out FVU triton / torch | step ms triton / torch | "
        "peak MiB triton / torch |\n|---|---|---|---|---|"
    )
    for r in rows:
        t, c = r["triton"], r["torch"]
        if "error" in t or "error" in c:
            print(f"| {r['family']} | failed: {t.get('error', '')} {c.get('error', '')} | | | |")
            continue
        print(
            f"| {r['family']} | {t['first_loss']:.5g} / {c['first_loss']:.5g} | {t['fvu_held_out']:.4f} / "
            f"{c['fvu_held_out']:.4f} | {t['step_ms_median']:.3f} / {c['step_ms_median']:.3f} | "
            f"{t['step_peak_mib'] or 0:.0f} / {c['step_peak_mib'] or 0:.0f} |"
        )
    for key, diff in kernels.first_use.fallbacks().items():
        print(f"FIRST-USE CHECK FAILED (this path ran on the torch twin): {key}: {diff}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
