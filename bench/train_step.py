"""One full TopK training step (forward, backward, optimiser, bookkeeping) of ours, sparsify's and SAELens's,
timed in one process, interleaved round by round, on CPU; prints medians and ratios.

The peers come from PyPI in their own environment (sae-lens pins transformer-lens < 4), where our package
imports from the source tree:

    python -m venv .venv-interop && .venv-interop/bin/pip install -c constraints.txt sae-lens eai-sparsify
    PYTHONPATH=$PWD .venv-interop/bin/python bench/train_step.py            # or: make bench-train-step
    PYTHONPATH=$PWD .venv-interop/bin/python bench/train_step.py --shapes 384,3072,32,4096 --rounds 5

Each library runs its own step as its trainer does: ours is `Trainer.train_step` (Adam, lr schedule, parallel
gradient removed, decoder renormalised, dead-latent bookkeeping); sparsify's is its trainer's loop body
(decoder renormalised, forward with the dead mask, fvu + AuxK loss, parallel gradient removed, its default
optimiser: signum under schedule-free); SAELens's is `SAETrainer._train_step` (training_forward_pass, firing
bookkeeping, clip_grad_norm_ 1.0, Adam). No latent is dead (a healthy run's steady state), so AuxK's work is
the same for all: none.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

SHAPES = ((768, 24576, 32, 4096), (384, 3072, 32, 4096))


def ours(d: int, n: int, k: int, B: int, x: torch.Tensor) -> Callable[[], None]:
    from sae import SAEConfig, SparseAutoencoder, TrainConfig
    from sae.init import init_from_sample
    from sae.train import Trainer

    sae = SparseAutoencoder(SAEConfig(d_in=d, n_latents=n, k=k), seed=0)
    init_from_sample(sae, x[:2048])
    # a window longer than the benchmark: no latent counts as dead, so AuxK stays off here as in the peers
    trainer = Trainer(sae, TrainConfig(tokens=B * 10**6, batch_size=B, dead_window_tokens=10**12))
    return lambda: trainer.train_step(x)


def sparsify(d: int, n: int, k: int, B: int, x: torch.Tensor) -> Callable[[], None]:
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device="cpu", dtype=torch.float32)
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (n / 2**14) ** 0.5}]), momentum=0.95)
    opt.train()
    since_fired = torch.zeros(n, dtype=torch.long)
    auxk_alpha, dead_threshold = 1 / 32, 10_000_000

    def step() -> None:
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since_fired > dead_threshold)
        (out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        float(out.fvu.detach())
        did_fire = torch.zeros(n, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        since_fired.add_(B)
        since_fired[did_fire] = 0

    return step


def saelens(d: int, n: int, k: int, B: int, x: torch.Tensor) -> Callable[[], None]:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, dtype="float32", device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    since_fired = torch.zeros(n)
    state = {"step": 0}

    def step() -> None:
        sae.train()
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=since_fired > 10**9,
                n_training_steps=state["step"],
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        state["step"] += 1

    return step


LIBRARIES = {"ours": ours, "sparsify": sparsify, "saelens": saelens}


def time_shape(d: int, n: int, k: int, B: int, rounds: int, warmup: int, libs: list[str]) -> dict[str, float]:
    """Median seconds per step of each library, the libraries taking turns within every round."""
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(0))
    steps = {name: LIBRARIES[name](d, n, k, B, x) for name in libs}
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in libs}
    for r in range(rounds):
        order = libs if r % 2 == 0 else libs[::-1]  # alternate who goes first
        for name in order:
            t = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in SHAPES], help="d,n,k,B")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--libs", nargs="*", default=list(LIBRARIES), choices=list(LIBRARIES))
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.rounds} interleaved rounds")
    for shape in args.shapes:
        d, n, k, B = (int(v) for v in shape.split(","))
        med = time_shape(d, n, k, B, args.rounds, args.warmup, args.libs)
        cells = "  ".join(f"{name} {s * 1e3:7.0f} ms" for name, s in med.items())
        ratios = "  ".join(f"ours/{name} {med['ours'] / s:.2f}x" for name, s in med.items() if name != "ours")
        print(f"(d, n, k, B) = ({d}, {n}, {k}, {B}):  {cells}  |  {ratios}", flush=True)


if __name__ == "__main__":
    main()
