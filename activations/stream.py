"""The live activation stream: hidden states in, shuffled `[batch_size, d_in]` float32 batches out.

`ActivationStream` harvests activations at one or several hook points of the text of a `TextSource`
(or transcoder pairs: an input hook and the target it predicts, of the same token positions, from one
forward pass), drops special-token positions on request, mixes vectors across many contexts before they
leave (`activations.mixing`), prefetches on a background thread, and optionally writes the disk cache
(`activations.cache`) that `ActivationStream.from_cache` reads back memory-mapped.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from activations.cache import CacheReader, cache_dtype_name, check_identity, read_manifest, write_cache
from activations.hooks import DEFAULT_HOOK, HookPoints
from activations.layout import BatchLayout
from activations.mixing import BatchIterable, RunningStats, interleave_order
from activations.models import ModelAdapter, load_model
from activations.source import TextSource, as_source

__all__ = ["ActivationStream"]


class ActivationStream(BatchIterable):
    """An iterable of shuffled float32 CPU activation batches `[batch_size, d_in]` (or transcoder pairs).

    Args:
        model: a `ModelAdapter` or anything `load_model` takes ("minilm", a hub name, a folder).
        hook: a hook point name, or a list of them, or `HookPoints` (several hooks: batches are then
            `{hook: [batch_size, d]}` dicts whose rows are the same token positions; `HookPoints` with
            targets gives pairs as `target` does, and a `clt=True` one stacks them).
        target: for transcoders, the hook each `hook` predicts: a name for a name (batches are then
            `(x [batch_size, d_in], y [batch_size, d_out])` tuples of the same token positions), a list
            paired 1:1 with a list of hooks (`{hook: (x, y)}` dicts). A target must fire after its input.
        stack: with lists of hooks and targets, one CLT's consecutive layers: batches are
            `(x [batch_size, L, d_in], y [batch_size, L, d_out])`.
        source: the text, a `TextSource` (or a dataset, as `load_text` takes it; None: the embedded corpus).
            Read in streaming mode for hub and local files.
        split, context_len: when given, replace the source's (context_len counts BOS; at most the
            model's maximum).
        batch_size: vectors per batch. The last partial batch is dropped.
        total_tokens: vectors to harvest (after dropping special positions). Fewer if the
            dataset runs out (a warning says so).
        seed: seeds the mixing order; the same seed gives the same batches.
        cache_dir: when given, the harvest is written there first (shards + manifest; resumed
            if a previous harvest was interrupted, reused if complete) and batches are read
            back from it, exactly as `from_cache(cache_dir, batch_size, seed)` would.
        exclude_special_tokens: drop BOS/CLS/SEP/EOS/PAD positions.
        model_batch_size: contexts per forward pass.
        shuffle_contexts: size of the live mixing pool, in contexts (default: enough for 4
            batches, at least 256). When the pool is full, about half of it leaves as batches
            and the rest mixes with the next contexts; at the end the whole pool leaves.
        prefetch: batches prepared ahead on a background thread (0: none).
        rank_share: (rank, world): read only contexts i with i % world == rank, a disjoint deterministic
            share of the text for one rank of a data-parallel run.
        shard_tokens: vectors per cache shard (rounded to whole forward passes).
        cache_dtype: how the cache stores vectors: torch.float32, or torch.bfloat16 / torch.float16 for
            half the disk (batches are float32 either way).
        progress: show tqdm progress bars.

    `.d_in`, `.d_out` (the target's width; the input's without targets), `.hooks`, `.targets`, `.stats`
    (`{"mean_sq_norm", "mean" [d_in], "tokens"}` in the shape of the batches: a dict per hook, an (x, y)
    tuple of them per pair, per layer for a CLT: `mean` [L, d], `mean_sq_norm` [L]) are available; on a
    live stream `.stats` is complete after one full pass. `iter_from(n)` starts at batch n, yielding exactly
    what plain iteration yields from there.
    """

    def __init__(
        self,
        model: Any,
        hook: str | Sequence[str] | HookPoints = DEFAULT_HOOK,
        source: TextSource | Any = None,
        *,
        target: str | Sequence[str] | None = None,
        stack: bool = False,
        split: str | None = None,
        context_len: int | None = None,
        batch_size: int = 4096,
        total_tokens: int = 1_000_000,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        exclude_special_tokens: bool = True,
        model_batch_size: int = 16,
        shuffle_contexts: int | None = None,
        prefetch: int = 4,
        shard_tokens: int = 65_536,
        cache_dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        progress: bool = True,
        rank_share: tuple[int, int] = (0, 1),
    ) -> None:
        self.model: ModelAdapter = load_model(model, device=device, dtype=dtype)
        self.layout = _layout(hook, target, stack)
        self.multi = self.layout.multi
        self.hooks = self.model.check_hooks(list(self.layout.inputs))
        self.targets = list(self.layout.targets)
        self.harvested = self.model.check_hooks(self.layout.harvested)
        for name, v in (
            ("batch_size", batch_size),
            ("total_tokens", total_tokens),
            ("model_batch_size", model_batch_size),
            ("shard_tokens", shard_tokens),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.source = as_source(source, split=split, context_len=context_len)
        context_len = self.source.context_len
        if context_len > self.model.max_context:
            raise ValueError(
                f"context_len {context_len} is longer than the maximum context "
                f"{self.model.max_context} of model {self.model.name!r}"
            )
        self.context_len, self.batch_size, self.total_tokens = context_len, batch_size, total_tokens
        self.seed, self.exclude_special_tokens = seed, exclude_special_tokens
        self.model_batch_size, self.prefetch, self.progress = model_batch_size, prefetch, progress
        if not (isinstance(rank_share, tuple) and len(rank_share) == 2 and 0 <= rank_share[0] < rank_share[1]):
            raise ValueError(f"rank_share must be (rank, world) with 0 <= rank < world, got {rank_share!r}")
        self.rank_share = rank_share
        self.cache_dtype = cache_dtype_name(cache_dtype)
        if self.cache_dtype != "float32" and cache_dir is None:
            raise ValueError(f"cache_dtype={cache_dtype} sets how the disk cache stores vectors: give a cache_dir too")
        per_ctx = max(context_len - 1, 1)
        self.shuffle_contexts = shuffle_contexts or max(256, -(-4 * batch_size // per_ctx))
        self.batches_per_shard = max(1, round(shard_tokens / (model_batch_size * per_ctx)))
        self.dataset = self.source.open()
        self.dataset_desc = self.source.describe()
        if hasattr(self.dataset, "__len__") and len(self.dataset) == 0:
            raise ValueError(f"dataset {self.dataset_desc!r} is empty")
        self.dataset_content = self.source.fingerprint()  # a cache of an edited local corpus is not reused
        widths = self.model.probe(self.harvested)  # in the order the hooks fire
        self.d_ins = {h: widths[h] for h in self.harvested}
        self.layout.check_widths(self.d_ins)
        self.layout.check_order(list(widths), self.model.name)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._stats = {h: RunningStats(self.d_ins[h]) for h in self.harvested}
        self._reader: CacheReader | None = None
        if self.cache_dir is not None:
            check_identity(self.cache_dir, self._identity())

    # --- public -------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        """Width of the (first) hook's vectors."""
        return self.d_ins[self.hooks[0]]

    @property
    def d_out(self) -> int:
        """Width of the (first) target's vectors (the input's when there are no targets)."""
        return self.d_ins[self.targets[0]] if self.targets else self.d_in

    @property
    def stats(self) -> Any:
        """`{"mean_sq_norm", "mean", "tokens"}` in the shape of the batches (one per hook, per pair half, per layer).

        With a cache_dir this harvests first if needed; live, it is complete after one full pass.
        """
        if self.cache_dir is not None:
            return self._cache_reader().stats
        return self.layout.pack({h: s.result() for h, s in self._stats.items()})

    def __len__(self) -> int:
        if self._reader is not None:
            return len(self._reader)
        return self.total_tokens // self.batch_size

    def iter_with_contexts(self, batch_index: int = 0) -> Iterator[tuple[Any, torch.Tensor]]:
        """Like `iter_from`, with each row's context index (`[batch_size]` int64) alongside."""
        if self.cache_dir is not None:
            yield from self._cache_reader().iter_with_contexts(batch_index)
            return
        it = _prefetched(self._live_batches, self.prefetch)
        for i, item in enumerate(it):
            if i >= batch_index:
                yield item

    def check_not_empty(self) -> None:
        """Raise a ValueError now if the dataset yields no whole context (a cache with tokens counts as data).

        Cheap: tokenizes only until the first context is full. Use it before long work that needs this stream."""
        if self.cache_dir is not None:
            m = read_manifest(self.cache_dir)
            if m is not None and m.get("tokens", 0) > 0 and m.get("dataset_content") == self.dataset_content:
                return
        if next(self._contexts(), None) is None:
            raise self._too_short()

    def _too_short(self) -> ValueError:
        return ValueError(
            f"dataset {self.dataset_desc!r} yields no context of {self.context_len} tokens: it is empty or too short"
        )

    def harvest(self) -> Path:
        """Fill `cache_dir` (resuming an interrupted harvest); return the folder."""
        if self.cache_dir is None:
            raise ValueError("harvest() needs a cache_dir")
        self._write_cache()
        return self.cache_dir

    @classmethod
    def from_cache(
        cls,
        cache_dir: str | os.PathLike,
        batch_size: int = 4096,
        seed: int = 0,
        hook: str | Sequence[str] | None = None,
        epochs: int | None = 1,
        verify: bool = True,
        expect_model: str | None = None,
        target: str | Sequence[str] | None = None,
        stack: bool = False,
    ) -> CacheReader:
        """Read a finished cache back, memory-mapped: the same iteration API as a live stream.

        `hook` picks one (or several) of the cached hooks, and `target` / `stack` pair them as the
        stream does (default: what the cache was harvested for: all its hooks, or its pairs; a single
        cached hook yields tensors, several yield dicts). `epochs=None` repeats endlessly, each epoch
        in a fresh order drawn from (seed, epoch). `verify` checks every shard's SHA-256 against the
        manifest (sizes and headers are always checked); `expect_model` refuses a cache of another model.
        """
        if hook is None and (target is not None or stack):
            raise ValueError("target= and stack= pair the hooks given in hook=: give hook= too")
        layout = None if hook is None else BatchLayout.from_args(hook, target, stack)
        return CacheReader(Path(cache_dir), batch_size, seed, layout, epochs, verify, expect_model)

    # --- live harvest -------------------------------------------------------------------------
    def _contexts(self, start: int = 0) -> Iterator[torch.Tensor]:
        it = self.source.contexts(self.model, self.dataset)
        rank, world = self.rank_share
        mine = (c for i, c in enumerate(it) if i % world == rank)
        for i, c in enumerate(mine):
            if i >= start:
                yield c

    def _chunks(self, start_batch: int = 0, tokens_done: int = 0, bar: Any = None):
        """Per forward pass: (batch index, first context index, {hook: [n, d]}, context ids [n])."""
        special = torch.tensor(sorted(self.model.special_token_ids), dtype=torch.long)
        start_ctx = start_batch * self.model_batch_size
        contexts = self._contexts(start_ctx)
        b, got, pending = start_batch, tokens_done, []
        seen_any = start_ctx > 0
        while got < self.total_tokens:
            pending = [c for _, c in zip(range(self.model_batch_size), contexts)]
            if not pending:
                break
            seen_any = True
            tokens = torch.stack(pending)
            out = self.model.run(tokens, self.harvested)
            keep = ~torch.isin(tokens, special) if self.exclude_special_tokens else torch.ones_like(tokens, dtype=torch.bool)
            ctx = (torch.arange(tokens.shape[0]) + b * self.model_batch_size)[:, None].expand_as(tokens)[keep]
            n = min(ctx.numel(), self.total_tokens - got)
            acts = {h: out[h][keep.to(out[h].device)][:n].to("cpu", torch.float32) for h in self.harvested}
            got += n
            if bar is not None:
                bar.update(n)
            yield b, acts, ctx[:n].clone()
            b += 1
        if not seen_any:
            raise self._too_short()
        if got < self.total_tokens:
            warnings.warn(f"dataset {self.dataset_desc!r} ran out after {got} of {self.total_tokens} tokens", stacklevel=2)

    def _live_batches(self) -> Iterator[tuple[Any, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        stats = {h: RunningStats(self.d_ins[h]) for h in self.harvested}
        pool_acts: dict[str, list[torch.Tensor]] = {h: [] for h in self.harvested}
        pool_ctx: list[torch.Tensor] = []
        n_pool = 0
        pool_rows = max(self.shuffle_contexts * (self.context_len - 1), 2 * self.batch_size)
        with tqdm(
            total=self.total_tokens, desc="harvest", unit="tok", disable=not self.progress, dynamic_ncols=True, leave=False
        ) as bar:
            for _, acts, ctx in self._chunks(bar=bar):
                for h in self.harvested:
                    stats[h].add(acts[h])
                    pool_acts[h].append(acts[h])
                pool_ctx.append(ctx)
                n_pool += ctx.numel()
                if n_pool >= pool_rows:
                    yield from self._emit(pool_acts, pool_ctx, gen, final=False)
                    n_pool = sum(c.numel() for c in pool_ctx)
            yield from self._emit(pool_acts, pool_ctx, gen, final=True)
        self._stats = stats

    def _emit(self, pool_acts, pool_ctx, gen, final: bool):
        ctx = torch.cat(pool_ctx) if pool_ctx else torch.empty(0, dtype=torch.long)
        acts = {h: torch.cat(v) if v else torch.empty(0) for h, v in pool_acts.items()}
        order = interleave_order(ctx, gen)
        n_full = ctx.numel() // self.batch_size
        if not final:  # emit about half the pool; the rest mixes with the next contexts
            n_full = max(1, n_full // 2)
        for i in range(n_full):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.layout.pack({h: a[idx] for h, a in acts.items()}), ctx[idx]
        rest = order[n_full * self.batch_size :]
        for h in self.harvested:
            pool_acts[h][:] = [] if final else [acts[h][rest]]
        pool_ctx[:] = [] if final else [ctx[rest]]

    # --- cache --------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "hooks": list(self.harvested),
            "dataset": self.dataset_desc,
            "dataset_content": self.dataset_content,
            "text_column": self.source.text_column,
            "context_len": self.context_len,
            "exclude_special_tokens": self.exclude_special_tokens,
            "total_tokens": self.total_tokens,
            "model_batch_size": self.model_batch_size,
            "batches_per_shard": self.batches_per_shard,
            "dtype": self.cache_dtype,
            **({"rank_share": list(self.rank_share)} if self.rank_share[1] > 1 else {}),
        }

    def _cache_reader(self) -> CacheReader:
        assert self.cache_dir is not None  # called only for a stream with a cache
        if self._reader is None:
            self._write_cache()
            self._reader = CacheReader(self.cache_dir, self.batch_size, self.seed, self.layout, 1, True, self.model.name)
        return self._reader

    def _write_cache(self) -> None:
        """Harvest into cache_dir; an interrupted harvest resumes after its last whole shard."""
        assert self.cache_dir is not None  # called only for a stream with a cache

        def harvest(start_batch: int, tokens_done: int, bar: Any):
            return _prefetched(lambda: self._chunks(start_batch, tokens_done, bar), self.prefetch)

        write_cache(self.cache_dir, self._identity(), self.d_ins, harvest, self.progress, self.layout.record())


def _layout(hook: str | Sequence[str] | HookPoints, target: str | Sequence[str] | None, stack: bool) -> BatchLayout:
    """The batch layout of a stream's arguments (`HookPoints` carry their own targets)."""
    if isinstance(hook, HookPoints):
        if target is not None:
            raise ValueError("hook is HookPoints: give its targets there (targets= or target_template=), not target=")
        return BatchLayout(hook.names, hook.target_names, multi=len(hook) > 1, stack=stack or hook.clt)
    return BatchLayout.from_args(hook, target, stack)


_END = object()
_JOIN_TIMEOUT_S = 120.0  # at most one model forward of the prefetch thread


def _prefetched(make: Any, depth: int) -> Iterator[Any]:
    """Run the generator `make()` on a daemon thread, `depth` items ahead of the consumer."""
    if depth <= 0:
        yield from make()
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in make():
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=work, name="activation-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # Wait for the worker to finish the item it is making: it may be running the model, and a caller that
        # goes on to use the model (say, after an interrupted harvest) must not race it for the model's hooks.
        stop.set()
        thread.join(timeout=_JOIN_TIMEOUT_S)
