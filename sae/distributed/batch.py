"""Batch-wide sums when a batch is split across data-parallel ranks.

The reconstruction and AuxK losses divide by the batch's total variance sum|x - mean(x)|^2. Under
`ddp` each rank holds 1/world of the batch, so each takes 1/world of the *global* variance (two small
all-reduces): the ranks' losses then average to exactly the single-process loss, and so do their gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist

_SPLIT: ContextVar[bool] = ContextVar("batch_split_across_ranks", default=False)


@contextmanager
def split_batch() -> Iterator[None]:
    """Within this block, `batch_variance` treats the batch as this rank's share of a global batch."""
    token = _SPLIT.set(True)
    try:
        yield
    finally:
        _SPLIT.reset(token)


def batch_variance(x: torch.Tensor) -> torch.Tensor:
    """sum|x - mean(x)|^2 over the rows of x [B, d] (float32); inside `split_batch`, this rank's equal share
    (1/world) of that sum over the global batch."""
    if not _SPLIT.get():
        return (x - x.mean(0, keepdim=True)).float().pow(2).sum()
    world = dist.get_world_size()
    x = x.detach().double()
    totals = torch.cat([x.sum(0), x.new_tensor([x.shape[0]])])
    dist.all_reduce(totals)
    mean = totals[:-1] / totals[-1]
    var = (x - mean).pow(2).sum()
    dist.all_reduce(var)
    return (var / world).float()
