"""The trainer's view of other ranks: one method per point where a multi-process run differs.

`Communicator` is the single process (every method the identity); `DataParallel` splits each global
batch into equal row shares, one per rank, averages gradients and ORs the fired-latent masks, so a
run equals the single-process run on the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from kernels import SparseCode
from sae.distributed.batch import split_batch
from sae.families import FAMILIES, TrainStep
from sae.model import ForwardOutput, SparseAutoencoder


class Communicator:
    """One process, no peers."""

    rank, world = 0, 1

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes checkpoints, logs, metrics and the saved dictionary."""
        return self.rank == 0

    def prepare(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        """Check the family fits the mode and give back the module this rank trains."""
        return sae

    def forward(
        self,
        sae: SparseAutoencoder,
        x: torch.Tensor,
        dead: torch.Tensor | None,
        step: TrainStep | None = None,
        target: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """The training forward of this rank's batch (a transcoder's with its target)."""
        return sae(x, target=target, dead=dead, step=step)

    def reduce_grads(self, sae: SparseAutoencoder) -> None:
        """Make every rank's gradients the gradients of the whole step."""

    def fired(self, code: SparseCode, n_latents: int) -> torch.Tensor:
        """[n_latents] bool: latents that fired anywhere in the global batch (no host sync)."""
        hits = torch.zeros(n_latents, dtype=torch.int32, device=code.values.device)
        hits.index_add_(0, code.indices.reshape(-1), code.values.ne(0).reshape(-1).to(torch.int32))
        return hits > 0

    def global_rows(self, rows: int) -> int:
        """Tokens in the global batch of which this rank saw `rows`."""
        return rows

    def gather_batches(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """The global batches of which this rank holds `batches` (for the data-dependent initialisation)."""
        return batches

    def reduce_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Logged statistics of the global batch."""
        return stats

    def gather_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A trainer state that holds the whole dictionary (collective: every rank calls it)."""
        return state

    def local_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This rank's part of a whole trainer state (inverse of gather_state)."""
        return state

    def whole_model(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        """The whole dictionary (collective), for saving and evaluation after training."""
        return sae


class DataParallel(Communicator):
    """`ddp`: rank r trains on rows [r*B/R, (r+1)*B/R) of each global batch; gradients averaged."""

    def __init__(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def prepare(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        if not sae.family.ddp_supported(sae.cfg.options):
            able = tuple(name for name, family in FAMILIES.items() if family.ddp_supported({}))
            raise ValueError(
                f"--distributed ddp trains families whose selection is per token and stateless: {able}; "
                f"family {sae.cfg.family!r} selects over the batch or keeps state, so its ranks would diverge "
                "(use --distributed shard for batchtopk and batch abstopk)"
            )
        self.n_latents = sae.cfg.latents
        with torch.no_grad():
            for t in [*sae.parameters(), *sae.buffers()]:
                dist.broadcast(t, 0)
        return sae

    def forward(
        self,
        sae: SparseAutoencoder,
        x: torch.Tensor,
        dead: torch.Tensor | None,
        step: TrainStep | None = None,
        target: torch.Tensor | None = None,
    ) -> ForwardOutput:
        with split_batch():
            return sae(x, target=target, dead=dead, step=step)

    def reduce_grads(self, sae: SparseAutoencoder) -> None:
        grads = [p.grad for p in sae.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def fired(self, code: SparseCode, n_latents: int) -> torch.Tensor:
        mask = torch.zeros(n_latents, dtype=torch.uint8, device=code.values.device)
        mask[code.indices[code.values != 0]] = 1
        dist.all_reduce(mask, op=dist.ReduceOp.MAX)
        return mask.bool()

    def global_rows(self, rows: int) -> int:
        return rows * self.world

    def gather_batches(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for x in batches:
            parts = [torch.empty_like(x) for _ in range(self.world)]
            dist.all_gather(parts, x.contiguous())
            out.append(torch.cat(parts))
        return out

    def reduce_stats(self, stats: dict[str, float]) -> dict[str, float]:
        keys = sorted(stats)
        values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist()))


class RankShare:
    """This rank's rows of every global batch of `data` (an iterable of [B, d], or of a transcoder's (x, y)
    pairs); keeps `iter_from` for resume."""

    def __init__(self, data: Iterable[torch.Tensor], rank: int, world: int, batch_size: int) -> None:
        if batch_size % world:
            raise ValueError(
                f"--distributed ddp splits each batch evenly: batch_size={batch_size} is not a multiple of the {world} ranks"
            )
        self.data, self.rank, self.world, self.share = data, rank, world, batch_size // world

    @property
    def d_in(self) -> int:
        return self.data.d_in  # type: ignore[attr-defined]

    def _slice(self, batches: Iterable) -> Iterator:
        rows = slice(self.rank * self.share, (self.rank + 1) * self.share)
        for batch in batches:
            yield tuple(part[rows] for part in batch) if isinstance(batch, (tuple, list)) else batch[rows]

    @property
    def d_out(self) -> int:
        return self.data.d_out  # type: ignore[attr-defined]

    def iter_from(self, step: int) -> Iterator:
        from sae.data import batches_from

        return self._slice(batches_from(self.data, step))

    def __iter__(self) -> Iterator:
        return self.iter_from(0)
