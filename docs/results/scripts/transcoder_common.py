"""What the transcoder studies share: the embedded model's MLP pairs, harvested once, and the held-out FVU.

The pairs are each MLP module's true input and output (`blocks.N.mlp.hook_in` -> `blocks.N.mlp.hook_out`; on
MiniLM these equal transformer-lens's `hook_mlp_in` / `hook_mlp_out`), of layers 0-5, from one forward pass per
context, into one cache per split under `runs/transcoder_cache` (the training split's first TRAIN_TOKENS
tokens, the test split's first TEST_TOKENS). The demo's scale: 401,408 training tokens seen four times over
(392 steps of 4096), 16,384 held-out tokens. A study may run on a smaller budget (`--steps`); each line of
its results records the steps it ran.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import torch

from activations import ActivationStream, CacheError, load_model

TRAIN_TOKENS, TEST_TOKENS = 98 * 4096, 16_384
SMOKE_TRAIN_TOKENS, SMOKE_TEST_TOKENS = 8192, 4096
LAYERS = tuple(range(6))
CACHE = Path("runs/transcoder_cache")


def mlp_in(layer: int | str) -> str:
    return f"blocks.{layer}.mlp.hook_in"


def mlp_out(layer: int | str) -> str:
    return f"blocks.{layer}.mlp.hook_out"


def harvest(
    split: str,
    tokens: int,
    cache: Path = CACHE,
    layers: tuple[int, ...] = LAYERS,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """The cache folder of every given layer's (mlp in, mlp out) pairs on `split`, harvested when absent or
    interrupted (a rerun resumes)."""
    name = "" if dtype == torch.float32 else f"-{str(dtype).removeprefix('torch.')}"
    folder = cache / f"L{min(layers)}-{max(layers)}-{split}-{tokens}{name}"
    try:
        ActivationStream.from_cache(folder, batch_size=4096, verify=False)
        return folder
    except (CacheError, FileNotFoundError):
        pass
    ActivationStream(
        load_model("minilm"),
        hook=[mlp_in(n) for n in layers],
        target=[mlp_out(n) for n in layers],
        split=split,
        total_tokens=tokens,
        batch_size=4096,
        seed=0,
        cache_dir=folder,
        cache_dtype=dtype,
        progress=False,
    ).harvest()
    return folder


def read_pairs(folder: Path, layers: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """All of one layer's pairs (x [N, d], y [N, d]), or a CLT's stack over `layers` ([N, L, d]), in the
    cache's order, float32 in memory."""
    if isinstance(layers, int):
        reader = ActivationStream.from_cache(folder, batch_size=1024, hook=mlp_in(layers), target=mlp_out(layers), verify=False)
    else:
        reader = ActivationStream.from_cache(
            folder,
            batch_size=1024,
            hook=[mlp_in(n) for n in layers],
            target=[mlp_out(n) for n in layers],
            stack=True,
            verify=False,
        )
    xs, ys = zip(*reader)
    return torch.cat(xs), torch.cat(ys)


def as_cached(pairs: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs as a cache of `dtype` gives them back: each value rounded to `dtype` (the cache's write is
    `t.to(dtype)`), read back as float32."""
    return pairs[0].to(dtype).float(), pairs[1].to(dtype).float()


@torch.no_grad()
def heldout_fvu(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    """Sum of squared errors over the total variance of y about its mean, over all the held-out rows (float64).

    A CLT's [N, L, d]: the FVU of all its layers' outputs together (each layer's variance about its own mean)."""
    err = 0.0
    for i in range(0, x.shape[0], chunk):
        err += (predict(x[i : i + chunk]).double() - y[i : i + chunk].double()).pow(2).sum().item()
    y64 = y.double()
    return err / (y64 - y64.mean(0)).pow(2).sum().item()


@torch.no_grad()
def per_layer_fvu(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, chunk: int = 4096
) -> list[float]:
    """A CLT's held-out FVU of each layer's output [L]."""
    err = torch.zeros(y.shape[1], dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        err += (predict(x[i : i + chunk]).double() - y[i : i + chunk].double()).pow(2).sum((0, 2))
    y64 = y.double()
    return (err / (y64 - y64.mean(0)).pow(2).sum((0, 2))).tolist()


@torch.no_grad()
def l0(sae, x: torch.Tensor, chunk: int = 4096) -> float:
    """Mean active latents per token (a CLT: over all its layers' features)."""
    total = 0
    for i in range(0, x.shape[0], chunk):
        total += int((sae.encode(x[i : i + chunk]).values != 0).sum())
    return total / x.shape[0]


@torch.no_grad()
def silent_fraction(sae, x: torch.Tensor, chunk: int = 4096) -> float:
    """Fraction of the dictionary's features that never fire on the held-out rows."""
    fired = torch.zeros(sae.cfg.n_features, dtype=torch.bool)
    for i in range(0, x.shape[0], chunk):
        code = sae.encode(x[i : i + chunk])
        fired[code.indices[code.values != 0]] = True
    return 1.0 - fired.double().mean().item()


def quiet() -> contextlib.AbstractContextManager:
    """Training's progress bar off (tqdm writes to stderr)."""
    return contextlib.redirect_stderr(io.StringIO())


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def synthetic_pairs(rows: int, d: int, seed: int, layers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random two-layer MLP's inputs and outputs (layers > 0: a stack [rows, layers, d] of such MLPs), for the
    scripts' --smoke runs."""
    g = torch.Generator().manual_seed(seed)
    stack = max(layers, 1)
    w1 = torch.randn(stack, d, 4 * d, generator=g) / d**0.5
    w2 = torch.randn(stack, 4 * d, d, generator=g) / (4 * d) ** 0.5
    x = torch.randn(rows, stack, d, generator=g) + 0.5
    y = torch.einsum("lrh,lhd->rld", torch.relu(torch.einsum("rld,ldh->lrh", x, w1)), w2)
    return (x, y) if layers else (x[:, 0], y[:, 0])
