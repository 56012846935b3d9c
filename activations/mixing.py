"""Mixing shared by the live stream and the cache reader: the interleave order, running statistics, iteration.

Mixing rule ("interleave"): within a pool of vectors, each context's vectors get a random rank
r in 0..L-1 (L = its vector count) and a random phase p in [0, 1) shared by the context; vectors
leave in order of (r + p) / L. Same-context vectors are then about one context-count apart in the
output order, so a batch of B vectors holds min(B, ~contexts in the pool) distinct contexts, and
each vector's position in its context is uniformly random. The live stream applies it to a buffer
of at least `shuffle_contexts` contexts at a time; the cache reader applies it to the whole cache
once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["BatchIterable", "RunningStats", "interleave_order"]


def interleave_order(ctx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A permutation of rows (see the module docstring) that spreads each context's rows evenly.

    `ctx` holds one context id per row; rows of one context need not be adjacent.
    """
    n = ctx.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    uniq, inv, counts = torch.unique(ctx, return_inverse=True, return_counts=True)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    within = torch.argsort(inv.to(torch.float64) + u)  # grouped by context, random inside
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.float64)
    rank[within] = (torch.arange(n) - starts[inv[within]]).to(torch.float64)
    phase = torch.rand(uniq.numel(), generator=gen, dtype=torch.float64)
    key = (rank + phase[inv]) / counts[inv].to(torch.float64)
    return torch.argsort(key, stable=True)


class RunningStats:
    """Running sums for mean squared norm, per-dimension mean and token count (float64)."""

    def __init__(self, d: int) -> None:
        self.sum = torch.zeros(d, dtype=torch.float64)
        self.sum_sq = 0.0
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x64 = x.to(torch.float64)
        self.sum += x64.sum(0)
        self.sum_sq += float(x64.pow(2).sum())
        self.tokens += x.shape[0]

    def merge(self, other: dict[str, Any]) -> None:
        self.sum += torch.tensor(other["sum"], dtype=torch.float64)
        self.sum_sq += other["sum_sq"]
        self.tokens += other["tokens"]

    def sums(self) -> dict[str, Any]:
        return {"sum": self.sum.tolist(), "sum_sq": self.sum_sq, "tokens": self.tokens}

    def result(self) -> dict[str, Any]:
        n = max(self.tokens, 1)
        return {"mean_sq_norm": self.sum_sq / n, "mean": (self.sum / n).to(torch.float32), "tokens": self.tokens}


class BatchIterable:
    """Iteration in terms of `iter_with_contexts`, shared by the live stream and the cache reader."""

    def iter_with_contexts(self, batch_index: int = 0) -> Iterator[tuple[Any, torch.Tensor]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[Any]:
        """Batches from `batch_index` on; identical to plain iteration from that point."""
        for x, _ in self.iter_with_contexts(batch_index):
            yield x
