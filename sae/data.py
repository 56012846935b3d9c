"""Batch sources the trainer reads: anything iterable of [B, d] tensors (an SAE) or of (x, y) pairs (a transcoder);
`iter_from` makes resume exact."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch


class TensorBatches:
    """Shuffled [batch_size, d] batches over an in-memory activation tensor, epoch after epoch.

    Each epoch is a fresh permutation drawn from (seed, epoch), so `iter_from(step)` lands on
    exactly the batch an uninterrupted pass would have reached.
    """

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        if acts.dim() != 2:
            raise ValueError(f"activations must be [tokens, d], got shape {tuple(acts.shape)}")
        if acts.shape[0] < batch_size:
            raise ValueError(f"only {acts.shape[0]} activations for a batch of {batch_size}")
        self.acts, self.batch_size, self.seed = acts, batch_size, seed
        self.per_epoch = acts.shape[0] // batch_size

    @property
    def d_in(self) -> int:
        return self.acts.shape[1]

    def _perm(self, epoch: int) -> torch.Tensor:
        return _permutation(self.acts.shape[0], self.seed, epoch)

    def iter_from(self, step: int) -> Iterator[torch.Tensor]:
        """Batches from global batch index `step` onwards, endlessly."""
        for rows in _shuffled_rows(self.acts.shape[0], self.batch_size, self.seed, step):
            yield self.acts[rows]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)


class PairBatches:
    """Shuffled (x [batch_size, d_in], y [batch_size, d_out]) batches of the same rows of two in-memory tensors,
    epoch after epoch, for a transcoder (a CLT: x [N, L, d_in], y [N, L, d_out]); `iter_from(step)` lands on
    exactly the batch an uninterrupted pass would have reached, as TensorBatches does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096, seed: int = 0) -> None:
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise ValueError(f"PairBatches takes two tensors, got {type(x).__name__} and {type(y).__name__}")
        if x.dim() not in (2, 3) or y.dim() != x.dim():
            raise ValueError(
                f"pairs must be x [tokens, d_in] and y [tokens, d_out] (a CLT: [tokens, layers, d]), got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"the halves of the pairs disagree in length: x has {x.shape[0]} rows, y has {y.shape[0]}")
        if x.dim() == 3 and x.shape[1] != y.shape[1]:
            raise ValueError(f"the halves of the pairs disagree in layers: x has {x.shape[1]}, y has {y.shape[1]}")
        if x.shape[0] < batch_size:
            raise ValueError(f"only {x.shape[0]} pairs for a batch of {batch_size}")
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.per_epoch = x.shape[0] // batch_size

    @property
    def d_in(self) -> int:
        return self.x.shape[-1]

    @property
    def d_out(self) -> int:
        return self.y.shape[-1]

    @property
    def layers(self) -> int:
        """Layers of a CLT's pairs (1 for plain pairs)."""
        return self.x.shape[1] if self.x.dim() == 3 else 1

    def iter_from(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Pairs from global batch index `step` onwards, endlessly."""
        for rows in _shuffled_rows(self.x.shape[0], self.batch_size, self.seed, step):
            yield self.x[rows], self.y[rows]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)


def _shuffled_rows(rows: int, batch_size: int, seed: int, step: int) -> Iterator[torch.Tensor]:
    """Row indices of each batch from global batch `step` on: each epoch a fresh permutation from (seed, epoch)."""
    per_epoch = rows // batch_size
    epoch, start = divmod(step, per_epoch)
    while True:
        perm = _permutation(rows, seed, epoch)
        for i in range(start, per_epoch):
            yield perm[i * batch_size : (i + 1) * batch_size]
        epoch, start = epoch + 1, 0


def _permutation(rows: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(rows, generator=gen)


def batches_from(data: Iterable, step: int) -> Iterator:
    """An iterator over `data` starting at batch `step`: `iter_from` when offered, else skip."""
    if hasattr(data, "iter_from"):
        return iter(data.iter_from(step))
    it = iter(data)
    for _ in itertools.islice(it, step):
        pass
    return it
