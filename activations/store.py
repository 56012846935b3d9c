"""The activation stream: hidden states in, shuffled `[batch_size, d_in]` float32 batches out.

`ActivationStream` harvests activations at one or several hook points, drops special-token
positions on request, mixes vectors across many contexts before they leave, prefetches on a
background thread, and optionally writes a disk cache (safetensors shards + a JSON manifest) that
`ActivationStream.from_cache` reads back memory-mapped.

Mixing rule ("interleave"): within a pool of vectors, each context's vectors get a random rank
r in 0..L-1 (L = its vector count) and a random phase p in [0, 1) shared by the context; vectors
leave in order of (r + p) / L. Same-context vectors are then about one context-count apart in the
output order, so a batch of B vectors holds min(B, ~contexts in the pool) distinct contexts, and
each vector's position in its context is uniformly random. The live stream applies it to a buffer
of at least `shuffle_contexts` contexts at a time; the cache reader applies it to the whole cache
once per epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from activations.models import ModelAdapter, load_model
from activations.text import content_fingerprint, describe_source, iter_texts, load_text, pack_contexts

__all__ = ["ActivationStream", "CacheError", "interleave_order"]

MANIFEST = "manifest.json"
FORMAT = "saekit-activations"
FORMAT_VERSION = 1
_CTX_KEY = "context"


class CacheError(ValueError):
    """A cache that cannot be used: another model or hook, or a corrupt / half-written shard."""


# --- mixing -------------------------------------------------------------------------------------
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


# --- small helpers ------------------------------------------------------------------------------
def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# shards whose checksum this process has seen match: path -> (size, mtime_ns, sha256). A shard is hashed
# once per process (or again after it changes on disk), not on every read of the cache.
_VERIFIED: dict[str, tuple[int, int, str]] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _shard_intact(path: Path, sha256: str) -> bool:
    """The shard's bytes hash to `sha256` (memoised per process on path, size and mtime)."""
    key, size, mtime = _stamp(path)
    if _VERIFIED.get(key) == (size, mtime, sha256):
        return True
    if _sha256_file(path) != sha256:
        return False
    _VERIFIED[key] = (size, mtime, sha256)
    return True


class _Stats:
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


def _stats_from_sums(sums: dict[str, Any], d: int) -> dict[str, Any]:
    s = _Stats(d)
    s.merge(sums)
    return s.result()


# --- prefetch -----------------------------------------------------------------------------------
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


# --- the cache on disk --------------------------------------------------------------------------
class _Shard:
    """One safetensors shard, memory-mapped with numpy (no copy until rows are gathered)."""

    def __init__(self, path: Path, entry: dict[str, Any], hooks: Sequence[str], verify: bool) -> None:
        self.path = path
        if not path.exists():
            raise CacheError(f"shard {str(path)!r} listed in the manifest is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CacheError(
                f"shard {str(path)!r} is {size} bytes but the manifest says {entry['bytes']}: "
                "it is corrupt or half-written; delete it and resume the harvest (same cache_dir)")
        if verify and not _shard_intact(path, entry["sha256"]):
            raise CacheError(
                f"shard {str(path)!r} does not match its checksum in the manifest: it is corrupt; "
                "delete it and resume the harvest (same cache_dir)")
        with open(path, "rb") as f:
            try:
                (hlen,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(hlen))
            except (struct.error, ValueError) as e:
                raise CacheError(f"shard {str(path)!r} has an unreadable header: it is corrupt") from e
        if not isinstance(header, dict):
            raise CacheError(f"shard {str(path)!r} has an unreadable header: it is corrupt")
        self.rows = entry["rows"]
        base = 8 + hlen
        self.arrays: dict[str, np.ndarray] = {}
        for key in [*hooks, _CTX_KEY]:
            meta = header.get(key)
            if meta is None or meta["shape"][0] != self.rows:
                raise CacheError(f"shard {str(path)!r} lacks {key!r} with {self.rows} rows: it is corrupt")
            dtype = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}[meta["dtype"]]
            begin, _ = meta["data_offsets"]
            if self.rows == 0:
                self.arrays[key] = np.zeros(meta["shape"], dtype=dtype)
            else:
                self.arrays[key] = np.memmap(path, dtype=dtype, mode="r", offset=base + begin,
                                             shape=tuple(meta["shape"]))


def _read_manifest(cache_dir: Path) -> dict[str, Any] | None:
    """The cache's manifest, checked field by field; None when there is none. Anything else is a CacheError."""
    path = cache_dir / MANIFEST
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CacheError(f"manifest {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        fmt = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise CacheError(f"{str(path)!r} is not an activation-cache manifest (format {fmt!r})")
    _check_manifest(m, path)
    return m


def _check_manifest(m: dict[str, Any], path: Path) -> None:
    """Refuse a manifest whose fields have the wrong type (hand-edited or damaged), naming the field."""
    def bad(what: str) -> CacheError:
        return CacheError(f"manifest {str(path)!r} is damaged: {what}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    hooks = m.get("hooks")
    if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise bad(f"hooks {hooks!r} is not a list of hook names")
    if not isinstance(m.get("model"), str):
        raise bad(f"model {m.get('model')!r} is not a name")
    d_in = m.get("d_in")
    if not isinstance(d_in, dict) or any(not is_int(d_in.get(h)) or d_in[h] == 0 for h in hooks):
        raise bad(f"d_in {d_in!r} does not give a width for each of {hooks}")
    if not is_int(m.get("tokens")) or not isinstance(m.get("complete", False), bool):
        raise bad(f"tokens {m.get('tokens')!r} / complete {m.get('complete')!r} are not a count and a flag")
    shards = m.get("shards")
    if not isinstance(shards, list):
        raise bad(f"shards {shards!r} is not a list")
    for e in shards:
        ok = (isinstance(e, dict) and isinstance(e.get("file"), str) and Path(e["file"]).name == e["file"]
              and e["file"] not in ("", ".", "..") and is_int(e.get("rows")) and is_int(e.get("bytes"))
              and isinstance(e.get("sha256"), str) and isinstance(e.get("sums"), dict))
        if not ok:
            raise bad(f"shard entry {e!r} lacks a plain file name, rows, bytes, sha256 or sums")
    stats = m.get("stats")
    if m.get("complete") and (not isinstance(stats, dict) or not all(isinstance(stats.get(h), dict) for h in hooks)):
        raise bad("a complete cache lacks its stats per hook")


# --- the stream ---------------------------------------------------------------------------------
class _BatchIterable:
    """Iteration in terms of `iter_with_contexts`, shared by the live stream and the cache reader."""

    def iter_with_contexts(self, batch_index: int = 0) -> Iterator[tuple[Any, torch.Tensor]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[Any]:
        """Batches from `batch_index` on; identical to plain iteration from that point."""
        for x, _ in self.iter_with_contexts(batch_index):
            yield x


class ActivationStream(_BatchIterable):
    """An iterable of shuffled float32 CPU activation batches `[batch_size, d_in]`.

    Args:
        model: a `ModelAdapter` or anything `load_model` takes ("minilm", a hub name, a folder).
        hook: a hook point name, or a list of them (multi-hook: batches are then
            `{hook: [batch_size, d]}` dicts whose rows are the same token positions).
        dataset, split, dataset_config, text_column: the text, as `load_text` takes it
            (None: the embedded corpus). Read in streaming mode for hub and local files.
        context_len: tokens per context (BOS included); at most the model's maximum.
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
        progress: show tqdm progress bars.

    `.d_in`, `.hooks`, `.stats` (`{"mean_sq_norm", "mean" [d_in], "tokens"}`; for multi-hook a
    dict per hook) are available; on a live stream `.stats` is complete after one full pass.
    `iter_from(n)` starts at batch n, yielding exactly what plain iteration yields from there.
    """

    def __init__(
        self,
        model: Any,
        hook: str | Sequence[str] = "blocks.3.hook_resid_pre",
        dataset: Any = None,
        split: str = "train",
        context_len: int = 128,
        batch_size: int = 4096,
        total_tokens: int = 1_000_000,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        exclude_special_tokens: bool = True,
        *,
        dataset_config: str | None = None,
        text_column: str = "text",
        model_batch_size: int = 16,
        shuffle_contexts: int | None = None,
        prefetch: int = 4,
        shard_tokens: int = 65_536,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        progress: bool = True,
        rank_share: tuple[int, int] = (0, 1),
    ) -> None:
        self.model: ModelAdapter = load_model(model, device=device, dtype=dtype)
        self.multi = not isinstance(hook, str)
        self.hooks = self.model.check_hooks(hook)
        for name, v in (("batch_size", batch_size), ("total_tokens", total_tokens),
                        ("model_batch_size", model_batch_size), ("shard_tokens", shard_tokens)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(context_len, int) or context_len < 2:
            raise ValueError(f"context_len must be an integer >= 2, got {context_len!r}")
        if context_len > self.model.max_context:
            raise ValueError(f"context_len {context_len} is longer than the maximum context "
                             f"{self.model.max_context} of model {self.model.name!r}")
        self.context_len, self.batch_size, self.total_tokens = context_len, batch_size, total_tokens
        self.seed, self.exclude_special_tokens = seed, exclude_special_tokens
        self.model_batch_size, self.prefetch, self.progress = model_batch_size, prefetch, progress
        if not (isinstance(rank_share, tuple) and len(rank_share) == 2 and 0 <= rank_share[0] < rank_share[1]):
            raise ValueError(f"rank_share must be (rank, world) with 0 <= rank < world, got {rank_share!r}")
        self.rank_share = rank_share
        per_ctx = max(context_len - 1, 1)
        self.shuffle_contexts = shuffle_contexts or max(256, -(-4 * batch_size // per_ctx))
        self.batches_per_shard = max(1, round(shard_tokens / (model_batch_size * per_ctx)))
        self.text_column, self.split, self.dataset_config = text_column, split, dataset_config
        streaming = isinstance(dataset, str | os.PathLike) and dataset != "embedded"
        self.dataset = load_text(dataset, split=split, config=dataset_config, text_column=text_column,
                                 streaming=streaming)
        if hasattr(self.dataset, "__len__") and len(self.dataset) == 0:
            raise ValueError(f"dataset {describe_source(dataset, split, dataset_config)!r} is empty")
        self.dataset_desc = describe_source(dataset, split, dataset_config)
        self.dataset_content = content_fingerprint(dataset)  # a cache of an edited local corpus is not reused
        self.d_ins = self.model.hook_dims(self.hooks)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._stats = {h: _Stats(self.d_ins[h]) for h in self.hooks}
        self._reader: _CacheReader | None = None
        if self.cache_dir is not None:
            self._check_cache_identity()

    # --- public -------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        """Width of the (first) hook's vectors."""
        return self.d_ins[self.hooks[0]]

    @property
    def stats(self) -> dict[str, Any]:
        """`{"mean_sq_norm", "mean", "tokens"}` (multi-hook: one such dict per hook).

        With a cache_dir this harvests first if needed; live, it is complete after one full pass.
        """
        if self.cache_dir is not None:
            return self._cache_reader().stats
        out = {h: s.result() for h, s in self._stats.items()}
        return out if self.multi else out[self.hooks[0]]

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
            m = _read_manifest(self.cache_dir)
            if m is not None and m.get("tokens", 0) > 0 and m.get("dataset_content") == self.dataset_content:
                return
        if next(self._contexts(), None) is None:
            raise self._too_short()

    def _too_short(self) -> ValueError:
        return ValueError(f"dataset {self.dataset_desc!r} yields no context of {self.context_len} tokens: "
                          "it is empty or too short")

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
    ) -> _CacheReader:
        """Read a finished cache back, memory-mapped: the same iteration API as a live stream.

        `hook` picks one (or several) of the cached hooks (default: all; a single cached hook
        yields tensors, several yield dicts). `epochs=None` repeats endlessly, each epoch in a
        fresh order drawn from (seed, epoch). `verify` checks every shard's SHA-256 against the
        manifest (sizes and headers are always checked); `expect_model` refuses a cache of
        another model.
        """
        return _CacheReader(Path(cache_dir), batch_size, seed, hook, epochs, verify, expect_model)

    # --- live harvest -------------------------------------------------------------------------
    def _contexts(self, start: int = 0) -> Iterator[torch.Tensor]:
        texts = iter_texts(self.dataset, self.text_column)
        it = pack_contexts(texts, self.model.tokenizer, self.context_len,
                           self.model.bos_token_id, self.model.sep_token_id)
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
            out = self.model.run(tokens, self.hooks)
            keep = ~torch.isin(tokens, special) if self.exclude_special_tokens else torch.ones_like(tokens, dtype=bool)
            ctx = (torch.arange(tokens.shape[0]) + b * self.model_batch_size)[:, None].expand_as(tokens)[keep]
            n = min(ctx.numel(), self.total_tokens - got)
            acts = {h: out[h][keep.to(out[h].device)][:n].to("cpu", torch.float32) for h in self.hooks}
            got += n
            if bar is not None:
                bar.update(n)
            yield b, acts, ctx[:n].clone()
            b += 1
        if not seen_any:
            raise self._too_short()
        if got < self.total_tokens:
            warnings.warn(f"dataset {self.dataset_desc!r} ran out after {got} of {self.total_tokens} tokens",
                          stacklevel=2)

    def _live_batches(self) -> Iterator[tuple[Any, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        stats = {h: _Stats(self.d_ins[h]) for h in self.hooks}
        pool_acts: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        pool_ctx: list[torch.Tensor] = []
        n_pool = 0
        pool_rows = max(self.shuffle_contexts * (self.context_len - 1), 2 * self.batch_size)
        with tqdm(total=self.total_tokens, desc="harvest", unit="tok", disable=not self.progress,
                  dynamic_ncols=True, leave=False) as bar:
            for _, acts, ctx in self._chunks(bar=bar):
                for h in self.hooks:
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
            yield self._pack({h: a[idx] for h, a in acts.items()}), ctx[idx]
        rest = order[n_full * self.batch_size :]
        for h in self.hooks:
            pool_acts[h][:] = [] if final else [acts[h][rest]]
        pool_ctx[:] = [] if final else [ctx[rest]]

    def _pack(self, acts: dict[str, torch.Tensor]) -> Any:
        return acts if self.multi else acts[self.hooks[0]]

    # --- cache --------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {
            "model": self.model.name, "hooks": list(self.hooks), "dataset": self.dataset_desc,
            "dataset_content": self.dataset_content,
            "text_column": self.text_column, "context_len": self.context_len,
            "exclude_special_tokens": self.exclude_special_tokens, "total_tokens": self.total_tokens,
            "model_batch_size": self.model_batch_size, "batches_per_shard": self.batches_per_shard,
            "dtype": "float32",
            **({"rank_share": list(self.rank_share)} if self.rank_share[1] > 1 else {}),
        }

    def _check_cache_identity(self) -> dict[str, Any] | None:
        m = _read_manifest(self.cache_dir)
        if m is None:
            return None
        want = self._identity()
        for key in ("model", "hooks"):
            if m.get(key) != want[key]:
                raise CacheError(
                    f"cache {str(self.cache_dir)!r} holds activations of {key} {m.get(key)!r}, not {want[key]!r}: "
                    "refusing to mix them; use another cache_dir")
        for key, value in want.items():
            if key != "dataset_content" and m.get(key) != value:
                raise CacheError(
                    f"cache {str(self.cache_dir)!r} was harvested with {key}={m.get(key)!r}, this stream asks "
                    f"for {key}={value!r}; use another cache_dir or the same settings")
        return m

    def _cache_reader(self) -> _CacheReader:
        if self._reader is None:
            self._write_cache()
            self._reader = _CacheReader(self.cache_dir, self.batch_size, self.seed,
                                        self.hooks if self.multi else self.hooks[0], 1, True, self.model.name)
        return self._reader

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        _atomic_write(self.cache_dir / MANIFEST, json.dumps(manifest, indent=1).encode())

    def _write_cache(self) -> None:
        """Harvest into cache_dir; an interrupted harvest resumes after its last whole shard."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        m = self._check_cache_identity()
        if m is not None and m.get("dataset_content") != self.dataset_content:
            warnings.warn(f"cache {str(self.cache_dir)!r}: the files of dataset {self.dataset_desc!r} changed since "
                          f"it was harvested (content {m.get('dataset_content')} -> {self.dataset_content}): "
                          "harvesting them again", stacklevel=2)
            for entry in m.get("shards", []):
                (self.cache_dir / entry["file"]).unlink(missing_ok=True)
            m = None
        if m is not None and m.get("complete"):
            return
        if m is None:
            m = {"format": FORMAT, "version": FORMAT_VERSION, **self._identity(), "d_in": self.d_ins,
                 "shards": [], "complete": False, "tokens": 0}
        for stray in self.cache_dir.glob("*.tmp*"):  # left by a harvest killed mid-write
            stray.unlink()
        # keep the prefix of listed shards that are intact; the rest is redone
        good = []
        for entry in m["shards"]:
            path = self.cache_dir / entry["file"]
            if path.exists() and path.stat().st_size == entry["bytes"] and _shard_intact(path, entry["sha256"]):
                good.append(entry)
            else:
                warnings.warn(f"shard {str(path)!r} is missing or damaged: harvesting it again", stacklevel=2)
                break
        m["shards"], m["tokens"] = good, sum(e["rows"] for e in good)
        start_batch = len(good) * self.batches_per_shard
        buf: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []

        def flush() -> None:
            ctx = torch.cat([c for _, c in buf]) if buf else torch.empty(0, dtype=torch.long)
            tensors = {h: torch.cat([a[h] for a, _ in buf]) if buf else torch.empty(0, self.d_ins[h])
                       for h in self.hooks}
            sums = {}
            for h, t in tensors.items():
                s = _Stats(self.d_ins[h])
                s.add(t)
                sums[h] = s.sums()
            data = st_save({**{h: t.contiguous() for h, t in tensors.items()}, _CTX_KEY: ctx.contiguous()})
            name = f"shard_{len(m['shards']):05d}.safetensors"
            _atomic_write(self.cache_dir / name, data)
            sha = hashlib.sha256(data).hexdigest()
            key, size, mtime = _stamp(self.cache_dir / name)
            _VERIFIED[key] = (size, mtime, sha)  # hashed from the very bytes just written
            m["shards"].append({"file": name, "rows": int(ctx.numel()), "bytes": len(data), "sha256": sha,
                                "sums": sums})
            m["tokens"] += int(ctx.numel())
            self._write_manifest(m)
            buf.clear()

        with tqdm(total=self.total_tokens, initial=m["tokens"], desc="harvest", unit="tok",
                  disable=not self.progress, dynamic_ncols=True) as bar:
            if m["tokens"] < self.total_tokens:
                self._write_manifest(m)
                chunks = _prefetched(lambda: self._chunks(start_batch, m["tokens"], bar), self.prefetch)
                for b, acts, ctx in chunks:
                    buf.append((acts, ctx))
                    if (b + 1) % self.batches_per_shard == 0:
                        flush()
                if buf:
                    flush()
        stats = {}
        for h in self.hooks:
            s = _Stats(self.d_ins[h])
            for e in m["shards"]:
                s.merge(e["sums"][h])
            r = s.result()
            stats[h] = {"mean_sq_norm": r["mean_sq_norm"], "mean": r["mean"].tolist(), "tokens": r["tokens"]}
        m["stats"], m["complete"] = stats, True
        self._write_manifest(m)


class _CacheReader(_BatchIterable):
    """Batches from a finished cache (see `ActivationStream.from_cache`)."""

    def __init__(self, cache_dir: Path, batch_size: int, seed: int, hook: Any, epochs: int | None,
                 verify: bool, expect_model: str | None) -> None:
        m = _read_manifest(cache_dir)
        if m is None:
            raise CacheError(f"no activation cache at {str(cache_dir)!r} (no {MANIFEST})")
        if not m.get("complete"):
            raise CacheError(f"cache {str(cache_dir)!r} is incomplete ({m.get('tokens', 0)} of "
                             f"{m.get('total_tokens')} tokens): resume the harvest with the same settings")
        if expect_model is not None and m["model"] != expect_model:
            raise CacheError(f"cache {str(cache_dir)!r} holds activations of model {m['model']!r}, "
                             f"not {expect_model!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.manifest, self.cache_dir = m, cache_dir
        if hook is None:
            hooks, self.multi = list(m["hooks"]), len(m["hooks"]) > 1
        else:
            hooks, self.multi = ([hook], False) if isinstance(hook, str) else (list(hook), True)
        for h in hooks:
            if h not in m["hooks"]:
                raise CacheError(f"cache {str(cache_dir)!r} holds hooks {m['hooks']}, not {h!r}")
        self.hooks, self.batch_size, self.seed, self.epochs = hooks, batch_size, seed, epochs
        self.d_ins = {h: m["d_in"][h] for h in hooks}
        self.shards = [_Shard(cache_dir / e["file"], e, m["hooks"], verify) for e in m["shards"]]
        self.rows = sum(s.rows for s in self.shards)
        if self.rows != m["tokens"]:
            raise CacheError(f"cache {str(cache_dir)!r}: shards hold {self.rows} rows, manifest says {m['tokens']}")
        self.per_epoch = self.rows // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"cache {str(cache_dir)!r} holds {self.rows} vectors, fewer than one batch of {batch_size}")
        self.offsets = np.cumsum([0] + [s.rows for s in self.shards])
        self.ctx = torch.from_numpy(np.concatenate([np.asarray(s.arrays[_CTX_KEY]) for s in self.shards]))

    @property
    def d_in(self) -> int:
        return self.d_ins[self.hooks[0]]

    @property
    def stats(self) -> dict[str, Any]:
        out = {}
        for h in self.hooks:
            s = self.manifest["stats"][h]
            out[h] = {"mean_sq_norm": s["mean_sq_norm"], "mean": torch.tensor(s["mean"], dtype=torch.float32),
                      "tokens": s["tokens"]}
        return out if self.multi else out[self.hooks[0]]

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless cache stream (epochs=None) has no length")
        return self.per_epoch * self.epochs

    def _order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return interleave_order(self.ctx, gen)

    def _gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = np.sort(idx.numpy())
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        cuts = np.searchsorted(which, np.arange(len(self.shards) + 1))
        out = {}
        for h in self.hooks:
            parts = []
            for s in range(len(self.shards)):
                a, b = cuts[s], cuts[s + 1]
                if a < b:
                    parts.append(self.shards[s].arrays[h][idx[a:b] - self.offsets[s]])
            out[h] = torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))
        parts = [self.shards[s].arrays[_CTX_KEY][idx[cuts[s]:cuts[s + 1]] - self.offsets[s]]
                 for s in range(len(self.shards)) if cuts[s] < cuts[s + 1]]
        out[_CTX_KEY] = torch.from_numpy(np.concatenate(parts).astype(np.int64))
        return out

    def iter_with_contexts(self, batch_index: int = 0) -> Iterator[tuple[Any, torch.Tensor]]:
        """Like `iter_from`, with each row's context index alongside."""
        epoch, start = divmod(batch_index, self.per_epoch)
        while self.epochs is None or epoch < self.epochs:
            order = self._order(epoch)
            for i in range(start, self.per_epoch):
                got = self._gather(order[i * self.batch_size : (i + 1) * self.batch_size])
                ctx = got.pop(_CTX_KEY)
                yield (got if self.multi else got[self.hooks[0]]), ctx
            epoch, start = epoch + 1, 0
