"""Latent-sharded selection on 2 gloo ranks (torch.multiprocessing): the same code and gradients as one process."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import kernels
from kernels.batch_select_twin import select_batch
from kernels.select_twin import select_abs, select_row
from sae.distributed.shard import select_sharded

RULES = {"row": select_row, "abs": select_abs, "batch": select_batch, "abs-batch": lambda pre, k: _abs_batch(pre, k)}


def _abs_batch(pre, k):
    chosen = select_batch(pre.abs(), k)  # as AbsTopK's batch variant: top k*B by magnitude, signs kept
    return kernels.SparseCode(torch.where(chosen.values != 0, pre.gather(1, chosen.indices), 0.0), chosen.indices)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dense(code, n):
    return code.to_dense(n)


def _worker(rank: int, world: int, port: int, errors) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        B, n, k = 16, 64, 5
        pre_full = torch.randn(B, n, generator=g, dtype=torch.float64)
        weight = torch.randn(B, n, generator=g, dtype=torch.float64)  # a loss that weighs every entry
        n_r, lo = n // world, rank * (n // world)
        for rule, select in RULES.items():
            ref_pre = pre_full.clone().requires_grad_(True)
            ref = select(ref_pre, k)
            ref_dense = _dense(
                kernels.SparseCode(
                    torch.where(
                        ref.values != 0,
                        (ref_pre.gather(1, ref.indices) if rule.startswith("abs") else ref_pre.gather(1, ref.indices).relu()),
                        0.0,
                    ),
                    ref.indices,
                ),
                n,
            )
            (ref_dense * weight).sum().backward()

            pre = pre_full[:, lo : lo + n_r].clone().requires_grad_(True)
            local, whole = select_sharded(pre, rule, k, lo, n)
            got = torch.zeros(B, n, dtype=pre.dtype)
            got[:, lo : lo + n_r] = _dense(local, n_r)
            (got * weight).sum().backward()
            parts = [torch.empty_like(got) for _ in range(world)]
            dist.all_gather(parts, got.detach())
            assert torch.equal(sum(parts), ref_dense.detach()), rule
            assert torch.equal(_dense(whole, n), ref_dense.detach()), rule
            assert torch.equal(pre.grad, ref_pre.grad[:, lo : lo + n_r]), rule
    except AssertionError as e:
        errors.put(f"rank {rank}: rule {e} differs from the single-process selection")
    finally:
        dist.destroy_process_group()


def test_sharded_selection_equals_single_process():
    """Codes, the whole code every rank sees, and the gradients to each rank's pre-activations, for every rule."""
    world, port = 2, _free_port()
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker, args=(r, world, port, errors)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert errors.empty(), errors.get()
