"""Batch sources the trainer reads: anything iterable of [B, d] tensors; `iter_from` makes resume exact."""

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
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.acts.shape[0], generator=gen)

    def iter_from(self, step: int) -> Iterator[torch.Tensor]:
        """Batches from global batch index `step` onwards, endlessly."""
        epoch, start = divmod(step, self.per_epoch)
        while True:
            perm = self._perm(epoch)
            for i in range(start, self.per_epoch):
                yield self.acts[perm[i * self.batch_size : (i + 1) * self.batch_size]]
            epoch, start = epoch + 1, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)


def batches_from(data: Iterable[torch.Tensor], step: int) -> Iterator[torch.Tensor]:
    """An iterator over `data` starting at batch `step`: `iter_from` when offered, else skip."""
    if hasattr(data, "iter_from"):
        return iter(data.iter_from(step))
    it = iter(data)
    for _ in itertools.islice(it, step):
        pass
    return it
