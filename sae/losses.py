"""The loss maths every family shares: the batch's total variance and the fraction of variance unexplained.

Both divide by the batch's total variance sum|x - mean(x)|^2. A run whose batch is split across ranks
(`sae.distributed.batch.split_batch`) swaps in, for the length of its forward, a variance that sums over all
of them (`variance_from`), so the ranks' losses average to exactly the single-process loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_VARIANCE: ContextVar[Callable[[torch.Tensor], torch.Tensor] | None] = ContextVar("batch_variance", default=None)


def batch_variance(x: torch.Tensor) -> torch.Tensor:
    """sum|x - mean(x)|^2 over the rows of x [B, d] (float32); inside `variance_from(fn)`, fn(x)."""
    override = _VARIANCE.get()
    if override is not None:
        return override(x)
    return (x - x.mean(0, keepdim=True)).float().pow(2).sum()


@contextmanager
def variance_from(fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within this block `batch_variance` is `fn` (the share of a variance summed over several ranks)."""
    token = _VARIANCE.set(fn)
    try:
        yield
    finally:
        _VARIANCE.reset(token)


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained over the batch: sum|x - x_hat|^2 / sum|x - mean(x)|^2."""
    err = (x - x_hat).float().pow(2).sum()
    return err / batch_variance(x).clamp_min(1e-12)
