"""The on-disk activation cache: safetensors shards plus a JSON manifest, written once, read back memory-mapped.

`write_cache` fills a folder from a harvest (resuming after the last whole shard of an interrupted
one); `CacheReader` reads a finished cache with the iteration API of the live stream, mixing the
whole cache once per epoch. A cache of another model, hook or dataset, or a damaged shard, is a
`CacheError` naming it.

Each shard holds one `[rows, d]` tensor per harvested hook (a transcoder pair's input and target, a CLT's
layers: the same rows are the same token positions) and the rows' context ids. Vectors are stored as float32,
or as bfloat16 / float16 on request (half the disk); they are always read back as float32. The manifest
records the hooks, their widths, the stored dtype and, for pairs, which hook predicts which.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from activations.layout import BatchLayout
from activations.mixing import BatchIterable, RunningStats, interleave_order

__all__ = [
    "CACHE_DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "CacheError",
    "CacheReader",
    "cache_dtype_name",
    "check_identity",
    "read_manifest",
    "write_cache",
]

MANIFEST = "manifest.json"
FORMAT = "saekit-activations"
FORMAT_VERSION = 1  # pairs and the stored dtype are fields a version-1 manifest may hold; older caches lack them
_CTX_KEY = "context"
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.int16, "I64": np.int64, "I32": np.int32}

# a harvest: (first batch, tokens already harvested, progress bar) -> (batch index, {hook: [n, d]}, context ids [n])
Harvest = Callable[[int, int, Any], Iterator[tuple[int, dict[str, torch.Tensor], torch.Tensor]]]


class CacheError(ValueError):
    """A cache that cannot be used: another model or hook, or a corrupt / half-written shard."""


def cache_dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16' or 'float16': the dtypes a cache stores vectors in."""
    for name, d in CACHE_DTYPES.items():
        if dtype == d:
            return name
    raise ValueError(f"cache_dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")


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


class _Shard:
    """One safetensors shard, memory-mapped with numpy (no copy until rows are gathered)."""

    def __init__(
        self,
        path: Path,
        entry: dict[str, Any],
        widths: dict[str, int],
        verify: bool,
        pairs: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.path = path
        if not path.exists():
            raise CacheError(f"shard {str(path)!r} listed in the manifest is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CacheError(
                f"shard {str(path)!r} is {size} bytes but the manifest says {entry['bytes']}: "
                "it is corrupt or half-written; delete it and resume the harvest (same cache_dir)"
            )
        if verify and not _shard_intact(path, entry["sha256"]):
            raise CacheError(
                f"shard {str(path)!r} does not match its checksum in the manifest: it is corrupt; "
                "delete it and resume the harvest (same cache_dir)"
            )
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
        self.bf16: set[str] = set()  # keys stored as bfloat16 (numpy has none: read as int16 bits)
        for src, dst in pairs:
            a, b = (header.get(k, {}).get("shape", [None])[0] for k in (src, dst))
            if a != b:
                raise CacheError(
                    f"pair cache shard {str(path)!r}: input {src!r} holds {a} rows but target {dst!r} holds {b}: "
                    "the two halves of a pair must be the same token positions; harvest it again"
                )
        for key in [*widths, _CTX_KEY]:
            meta = header.get(key)
            if meta is None or meta["shape"][0] != self.rows:
                raise CacheError(f"shard {str(path)!r} lacks {key!r} with {self.rows} rows: it is corrupt")
            want = [self.rows, widths[key]] if key in widths else [self.rows]
            if meta["shape"] != want or meta["dtype"] not in _NP_DTYPES:
                raise CacheError(
                    f"shard {str(path)!r} holds {key!r} as {meta['dtype']} {meta['shape']}, the manifest says {want}: "
                    "it is corrupt"
                )
            dtype = _NP_DTYPES[meta["dtype"]]
            if meta["dtype"] == "BF16":
                self.bf16.add(key)
            begin, _ = meta["data_offsets"]
            if self.rows == 0:
                self.arrays[key] = np.zeros(meta["shape"], dtype=dtype)
            else:
                self.arrays[key] = np.memmap(path, dtype=dtype, mode="r", offset=base + begin, shape=tuple(meta["shape"]))


def read_manifest(cache_dir: Path) -> dict[str, Any] | None:
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
    if m.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise CacheError(
            f"manifest {str(path)!r} is of cache format version {m.get('version')!r}; this saekit reads version "
            f"{FORMAT_VERSION}: harvest it again, or read it with the saekit that wrote it"
        )
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
        ok = (
            isinstance(e, dict)
            and isinstance(e.get("file"), str)
            and Path(e["file"]).name == e["file"]
            and e["file"] not in ("", ".", "..")
            and is_int(e.get("rows"))
            and is_int(e.get("bytes"))
            and isinstance(e.get("sha256"), str)
            and isinstance(e.get("sums"), dict)
        )
        if not ok:
            raise bad(f"shard entry {e!r} lacks a plain file name, rows, bytes, sha256 or sums")
    stats = m.get("stats")
    if m.get("complete") and (not isinstance(stats, dict) or not all(isinstance(stats.get(h), dict) for h in hooks)):
        raise bad("a complete cache lacks its stats per hook")
    if m.get("dtype", "float32") not in CACHE_DTYPES:
        raise bad(f"dtype {m.get('dtype')!r} is not one of {sorted(CACHE_DTYPES)}")
    pairs = m.get("pairs", [])
    ok = isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(h, str) and h in hooks for h in p) for p in pairs
    )
    if not ok or not isinstance(m.get("stack", False), bool):
        raise bad(f"pairs {pairs!r} / stack {m.get('stack')!r} are not [input, target] pairs of its hooks and a flag")


def check_identity(cache_dir: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """The cache's manifest when its settings are `want` (a content change is left to `write_cache`); None
    when there is no cache yet. A cache of another model, hook or setting is a CacheError naming it."""
    m = read_manifest(cache_dir)
    if m is None:
        return None
    for key in ("model", "hooks"):
        if m.get(key) != want[key]:
            raise CacheError(
                f"cache {str(cache_dir)!r} holds activations of {key} {m.get(key)!r}, not {want[key]!r}: "
                "refusing to mix them; use another cache_dir"
            )
    for key, value in want.items():
        if key != "dataset_content" and m.get(key) != value:
            raise CacheError(
                f"cache {str(cache_dir)!r} was harvested with {key}={m.get(key)!r}, this stream asks "
                f"for {key}={value!r}; use another cache_dir or the same settings"
            )
    return m


def _write_manifest(cache_dir: Path, manifest: dict[str, Any]) -> None:
    _atomic_write(cache_dir / MANIFEST, json.dumps(manifest, indent=1).encode())


def write_cache(
    cache_dir: Path,
    identity: dict[str, Any],
    d_ins: dict[str, int],
    harvest: Harvest,
    progress: bool = True,
    record: dict[str, Any] | None = None,
) -> None:
    """Fill `cache_dir` with what `harvest` yields, one shard per `identity["batches_per_shard"]` forward passes.

    `identity` is what the manifest records of the stream (model, hooks, dataset, total_tokens, dtype, ...) and
    must match an existing cache; `record`: more the manifest of a new cache records (a stream's pairs). A
    finished cache is left as it is; an interrupted one resumes after its last intact shard; one whose local
    files changed since is harvested again."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    hooks, total = identity["hooks"], identity["total_tokens"]
    store = CACHE_DTYPES[identity.get("dtype", "float32")]
    m = check_identity(cache_dir, identity)
    if m is not None and m.get("dataset_content") != identity["dataset_content"]:
        warnings.warn(
            f"cache {str(cache_dir)!r}: the files of dataset {identity['dataset']!r} changed since "
            f"it was harvested (content {m.get('dataset_content')} -> {identity['dataset_content']}): "
            "harvesting them again",
            stacklevel=3,
        )
        for entry in m.get("shards", []):
            (cache_dir / entry["file"]).unlink(missing_ok=True)
        m = None
    if m is not None and m.get("complete"):
        return
    if m is None:
        m = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            **identity,
            **(record or {}),
            "d_in": d_ins,
            "shards": [],
            "complete": False,
            "tokens": 0,
        }
    for stray in cache_dir.glob("*.tmp*"):  # left by a harvest killed mid-write
        stray.unlink()
    # keep the prefix of listed shards that are intact; the rest is redone
    good = []
    for entry in m["shards"]:
        path = cache_dir / entry["file"]
        if path.exists() and path.stat().st_size == entry["bytes"] and _shard_intact(path, entry["sha256"]):
            good.append(entry)
        else:
            warnings.warn(f"shard {str(path)!r} is missing or damaged: harvesting it again", stacklevel=3)
            break
    m["shards"], m["tokens"] = good, sum(e["rows"] for e in good)
    start_batch = len(good) * identity["batches_per_shard"]
    buf: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []

    def flush() -> None:
        ctx = torch.cat([c for _, c in buf]) if buf else torch.empty(0, dtype=torch.long)
        tensors = {h: torch.cat([a[h] for a, _ in buf]) if buf else torch.empty(0, d_ins[h]) for h in hooks}
        if store == torch.float16:
            for h, t in tensors.items():
                big = float(t.abs().max()) if t.numel() else 0.0
                if big > torch.finfo(torch.float16).max:
                    raise CacheError(
                        f"hook {h!r} has activations up to |x| = {big:.4g}, beyond float16's range "
                        f"({torch.finfo(torch.float16).max:.0f}): use cache_dtype=torch.bfloat16 or float32"
                    )
        tensors = {h: t.to(store) for h, t in tensors.items()}
        sums = {}
        for h, t in tensors.items():  # the statistics of the stored vectors, as they are read back
            s = RunningStats(d_ins[h])
            s.add(t)
            sums[h] = s.sums()
        data = st_save({**{h: t.contiguous() for h, t in tensors.items()}, _CTX_KEY: ctx.contiguous()})
        name = f"shard_{len(m['shards']):05d}.safetensors"
        _atomic_write(cache_dir / name, data)
        sha = hashlib.sha256(data).hexdigest()
        key, size, mtime = _stamp(cache_dir / name)
        _VERIFIED[key] = (size, mtime, sha)  # hashed from the very bytes just written
        m["shards"].append({"file": name, "rows": int(ctx.numel()), "bytes": len(data), "sha256": sha, "sums": sums})
        m["tokens"] += int(ctx.numel())
        _write_manifest(cache_dir, m)
        buf.clear()

    with tqdm(total=total, initial=m["tokens"], desc="harvest", unit="tok", disable=not progress, dynamic_ncols=True) as bar:
        if m["tokens"] < total:
            _write_manifest(cache_dir, m)
            for b, acts, ctx in harvest(start_batch, m["tokens"], bar):
                buf.append((acts, ctx))
                if (b + 1) % identity["batches_per_shard"] == 0:
                    flush()
            if buf:
                flush()
    stats = {}
    for h in hooks:
        s = RunningStats(d_ins[h])
        for e in m["shards"]:
            s.merge(e["sums"][h])
        r = s.result()
        stats[h] = {"mean_sq_norm": r["mean_sq_norm"], "mean": r["mean"].tolist(), "tokens": r["tokens"]}
    m["stats"], m["complete"] = stats, True
    _write_manifest(cache_dir, m)


class CacheReader(BatchIterable):
    """Batches from a finished cache, memory-mapped (see `ActivationStream.from_cache`).

    `layout`: which hooks (and pairs) to read and how to pack them; None: what the cache was harvested for."""

    def __init__(
        self,
        cache_dir: Path,
        batch_size: int,
        seed: int,
        layout: BatchLayout | None,
        epochs: int | None,
        verify: bool,
        expect_model: str | None,
    ) -> None:
        m = read_manifest(cache_dir)
        if m is None:
            raise CacheError(f"no activation cache at {str(cache_dir)!r} (no {MANIFEST})")
        if not m.get("complete"):
            raise CacheError(
                f"cache {str(cache_dir)!r} is incomplete ({m.get('tokens', 0)} of "
                f"{m.get('total_tokens')} tokens): resume the harvest with the same settings"
            )
        if expect_model is not None and m["model"] != expect_model:
            raise CacheError(f"cache {str(cache_dir)!r} holds activations of model {m['model']!r}, not {expect_model!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.manifest, self.cache_dir = m, cache_dir
        self.layout = layout if layout is not None else BatchLayout.from_manifest(m)
        for h in self.layout.harvested:
            if h not in m["hooks"]:
                raise CacheError(f"cache {str(cache_dir)!r} holds hooks {m['hooks']}, not {h!r}")
        self.hooks, self.targets, self.multi = list(self.layout.inputs), list(self.layout.targets), self.layout.multi
        self.batch_size, self.seed, self.epochs = batch_size, seed, epochs
        self.d_ins = {h: m["d_in"][h] for h in self.layout.harvested}
        try:
            self.layout.check_widths(self.d_ins)
        except ValueError as e:
            raise CacheError(f"cache {str(cache_dir)!r}: {e}") from None
        pairs = list(zip(self.layout.inputs, self.layout.targets))
        widths = {h: m["d_in"][h] for h in m["hooks"]}
        self.shards = [_Shard(cache_dir / e["file"], e, widths, verify, pairs) for e in m["shards"]]
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
        """Width of the (first) input hook's vectors."""
        return self.d_ins[self.hooks[0]]

    @property
    def d_out(self) -> int:
        """Width of the (first) target hook's vectors (the input's when there are no targets)."""
        return self.d_ins[self.targets[0]] if self.targets else self.d_in

    @property
    def stats(self) -> Any:
        """`{"mean_sq_norm", "mean", "tokens"}` in the shape of the batches (per hook, per pair half, per layer)."""
        out = {}
        for h in self.layout.harvested:
            s = self.manifest["stats"][h]
            out[h] = {
                "mean_sq_norm": s["mean_sq_norm"],
                "mean": torch.tensor(s["mean"], dtype=torch.float32),
                "tokens": s["tokens"],
            }
        return self.layout.pack(out)

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless cache stream (epochs=None) has no length")
        return self.per_epoch * self.epochs

    def _order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return interleave_order(self.ctx, gen)

    def _gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = np.sort(idx.numpy())
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        cuts = np.searchsorted(which, np.arange(len(self.shards) + 1))
        out = {}
        for h in self.layout.harvested:
            parts = []
            for s in range(len(self.shards)):
                a, b = cuts[s], cuts[s + 1]
                if a < b:
                    shard = self.shards[s]
                    part = torch.from_numpy(np.ascontiguousarray(shard.arrays[h][rows[a:b] - self.offsets[s]]))
                    parts.append(part.view(torch.bfloat16).float() if h in shard.bf16 else part.float())
            out[h] = torch.cat(parts)
        parts = [
            self.shards[s].arrays[_CTX_KEY][rows[cuts[s] : cuts[s + 1]] - self.offsets[s]]
            for s in range(len(self.shards))
            if cuts[s] < cuts[s + 1]
        ]
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
                yield self.layout.pack(got), ctx
            epoch, start = epoch + 1, 0
