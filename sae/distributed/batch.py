"""Batch-wide sums when a batch is split across data-parallel ranks.

The reconstruction and AuxK losses divide by the batch's total variance sum|x - mean(x)|^2 (`sae.losses`).
Under `ddp` each rank holds 1/world of the batch, so each takes 1/world of the *global* variance (two small
all-reduces): the ranks' losses then average to exactly the single-process loss, and so do their gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from sae.losses import variance_from


def rank_share_of_variance(x: torch.Tensor) -> torch.Tensor:
    """This rank's equal share (1/world) of sum|x - mean(x)|^2 over the global batch of which x [B, d] is a part."""
    world = dist.get_world_size()
    x = x.detach().double()
    totals = torch.cat([x.sum(0), x.new_tensor([x.shape[0]])])
    dist.all_reduce(totals)
    mean = totals[:-1] / totals[-1]
    var = (x - mean).pow(2).sum()
    dist.all_reduce(var)
    return (var / world).float()


@contextmanager
def split_batch() -> Iterator[None]:
    """Within this block, `sae.losses.batch_variance` treats the batch as this rank's share of a global batch."""
    with variance_from(rank_share_of_variance):
        yield
