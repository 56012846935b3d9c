#!/usr/bin/env python
"""Distributed benchmark: shard mode against the plain path, and the bytes each rank sends per step.

CPU (gloo):   python bench/distributed.py                      (1 and 2 ranks, spawned here)
GPU (NCCL):   python bench/distributed.py --device cuda --ranks 1   (shard mode with 1 rank vs the plain path)

For one dictionary size (d, n, k, B) it times the full training step (forward, backward, Adam, decoder
renormalisation) of the plain single-process path and of `--distributed shard` at 1 and 2 ranks over the
same total work (the same n latents and the same batch), medians of --steps steps after warm-up, all in
this run. It counts the bytes each rank hands to collectives per step (all_gather input + all_reduce
tensors) and compares them with the formula: candidates B*k values and indices, the [B, d] partial sums
forward and the [B, d] input gradient backward, b_dec's gradient. Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="384,8192,32,1024", help="d,n,k,B")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ranks", default="1,2", help="shard-mode rank counts to time")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return p.parse_args()


class ByteCounter:
    """Wraps the two collectives shard mode uses and adds up the bytes this rank puts into them."""

    def __init__(self) -> None:
        self.bytes = 0
        self._gather, self._reduce = dist.all_gather, dist.all_reduce

        def all_gather(parts, t, *a, **kw):
            self.bytes += t.numel() * t.element_size()
            return self._gather(parts, t, *a, **kw)

        def all_reduce(t, *a, **kw):
            self.bytes += t.numel() * t.element_size()
            return self._reduce(t, *a, **kw)

        dist.all_gather, dist.all_reduce = all_gather, all_reduce


def formula(d: int, k: int, B: int, value_bytes: int = 4) -> int:
    """Bytes per rank per step of shard mode, row top-k, no dead latents."""
    candidates = B * k * (value_bytes + 8)  # values + int64 global indices
    return candidates + 2 * B * d * value_bytes + d * value_bytes  # partial sums, input gradient, b_dec grad


def step_times(sae, comm, x, steps: int, warmup: int, sync) -> list[float]:
    from sae.config import TrainConfig
    from sae.train import Trainer

    # a dead window longer than the run: no AuxK, as the byte formula assumes (random inputs would kill latents)
    tcfg = TrainConfig(
        tokens=x.shape[0] * (steps + warmup), batch_size=x.shape[0], device=str(x.device), dead_window_tokens=10**12
    )
    trainer = Trainer(sae, tcfg, comm=comm)
    times = []
    for i in range(steps + warmup):
        sync()
        t0 = time.perf_counter()
        trainer.train_step(x)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def worker(rank: int, world: int, port: int, args: argparse.Namespace, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dev = torch.device(f"cuda:{rank}" if cuda else "cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the same cores for every rank count
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    from sae.config import SAEConfig
    from sae.distributed.comm import Communicator
    from sae.distributed.shard import LatentShard
    from sae.model import SparseAutoencoder

    d, n, k, B = (int(v) for v in args.size.split(","))
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(0)).to(dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = SAEConfig(d_in=d, n_latents=n, k=k)
    row = {"ranks": world}
    if world == 1:  # the plain path, same process
        row["plain_s"] = statistics.median(
            step_times(SparseAutoencoder(cfg, device=dev, seed=0), Communicator(), x, args.steps, args.warmup, sync)
        )
    counter = ByteCounter()
    times = step_times(SparseAutoencoder(cfg, device=dev, seed=0), LatentShard(), x, args.steps, args.warmup, sync)
    row.update(
        shard_s=statistics.median(times),
        bytes_per_step=counter.bytes / (args.steps + args.warmup),
        formula_bytes=formula(d, k, B),
    )
    if rank == 0:
        queue.put(row)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    args = parse()
    ctx = mp.get_context("spawn")
    rows = []
    for world in (int(r) for r in args.ranks.split(",")):
        queue, port = ctx.SimpleQueue(), free_port()
        procs = [ctx.Process(target=worker, args=(r, world, port, args, queue)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise SystemExit(f"a rank failed at world size {world}")
        rows.append(queue.get())
    plain = rows[0].get("plain_s")
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device}   size d,n,k,B = {args.size}   median of {args.steps} steps")
    print(f"{'ranks':>5} {'plain ms':>9} {'shard ms':>9} {'shard/plain':>11} {'bytes/step':>11} {'formula':>9}")
    for r in rows:
        ratio = r["shard_s"] / plain if plain else float("nan")
        print(
            f"{r['ranks']:>5} {plain * 1e3:>9.2f} {r['shard_s'] * 1e3:>9.2f} {ratio:>11.2f} "
            f"{r['bytes_per_step']:>11.0f} {r['formula_bytes']:>9d}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"distributed-{args.device}.json").write_text(
        json.dumps({"device": device, "size": args.size, "plain_s": plain, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
