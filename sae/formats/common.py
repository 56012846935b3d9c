"""What every format loader shares: configs built with the file named in errors, safe .pt reading, hook names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sae.config import SAEConfig
from sae.io import check_dtype, check_size


def make_cfg(source: str | Path, *, d_in: Any, d_sae: Any, dtype: str | torch.dtype | None, **kw: Any) -> SAEConfig:
    """SAEConfig for a loaded file: sizes checked before anything is allocated, errors naming the file."""
    check_size(d_in, d_sae, source)
    try:
        return SAEConfig(d_in=d_in, n_latents=d_sae, dtype=check_dtype(dtype or "float32"), **kw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from e


def torch_load_weights(path: Path) -> Any:
    """torch.load with weights_only=True: a pickle that needs anything but tensors and plain containers is refused."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(
            f"{path} cannot be loaded as plain weights (torch.load with weights_only=True refused it: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Files that need arbitrary pickled code "
            "are never loaded: they could run anything on this machine"
        ) from e


def tensor_of(state: dict[str, Any], name: str, source: str | Path) -> torch.Tensor:
    """state[name] as a tensor, or an error naming the file and the keys it holds."""
    t = state.get(name)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{source} lacks tensor {name!r}; it holds {sorted(state)}")
    return t


def layer_hook(name: str) -> str:
    """A TransformerLens hook name for sparsify/Gemma-Scope folder names such as `layers.10` or `layer_10`
    (the output of block N: its resid_post); other names are returned unchanged."""
    m = re.fullmatch(r"layers?[._](\d+)", name)
    return f"blocks.{m.group(1)}.hook_resid_post" if m else name


def clamp_threshold(threshold: torch.Tensor) -> torch.Tensor:
    """Peers' JumpReLU is ReLU(a) * 1[a > theta]; ours is a * 1[a > theta]: equal once theta >= 0."""
    return threshold.float().clamp_min(0.0)
