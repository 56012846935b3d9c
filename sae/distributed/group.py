"""Process-group set-up from torchrun's environment, with collective timeouts, and the error a lost rank raises."""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist


class PeerLost(RuntimeError):
    """Another rank died or stalled past the collective timeout; this rank stops too."""


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the running group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def process_group(device: str, timeout_s: float) -> Iterator[tuple[int, int]]:
    """Join torchrun's group (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment), or a one-rank group
    when started without torchrun; NCCL for CUDA devices, gloo otherwise. Yields (rank, world)."""
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    timeout = timedelta(seconds=timeout_s)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    faulthandler.enable()  # a rank that aborts inside C++ prints every thread's Python stack first
    try:
        with lost_peers(timeout_s):
            yield dist.get_rank(), dist.get_world_size()
            # Every rank finishes its last collective before any tears the group down: a rank that destroys
            # its gloo pairs while a peer is still receiving can abort that peer (SIGABRT, "terminate called
            # without an active exception"), which CI saw once in --distributed layers.
            dist.barrier()
    finally:
        dist.destroy_process_group()


@contextmanager
def lost_peers(timeout_s: float) -> Iterator[None]:
    """Turn a failed collective (a peer's connection closed, or the timeout passed) into PeerLost."""
    try:
        yield
    except PeerLost:
        raise
    except RuntimeError as e:
        text = str(e)
        dist_error = getattr(dist, "DistError", ())
        if not (
            isinstance(e, dist_error)
            or "gloo" in text.lower()
            or "nccl" in text.lower()
            or "timed out" in text.lower()
            or "connection" in text.lower()
        ):
            raise
        rank = dist.get_rank() if dist.is_initialized() else 0
        raise PeerLost(
            f"rank {rank} lost contact with another rank (it died, or stalled past the {timeout_s:g} s "
            f"collective timeout --dist-timeout-s): {text.splitlines()[0] if text else type(e).__name__}. "
            "The last checkpoint is intact; run again with --resume to continue from it."
        ) from e
