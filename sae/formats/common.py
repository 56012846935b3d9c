"""What every format loader shares: configs built with the file named in errors, safe .pt reading, hook names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sae.config import SAEConfig
from sae.io import check_dtype, check_size


def make_cfg(source: str | Path, *, d_in: Any, d_sae: Any, dtype: str | torch.dtype | None, **kw: Any) -> SAEConfig:
    """SAEConfig for a loaded file: sizes checked before anything is allocated, errors naming the file."""
    check_size(d_in, d_sae, source)
    try:
        return SAEConfig(d_in=d_in, n_latents=d_sae, dtype=check_dtype(dtype or "float32"), **kw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from e


def raw_cfg(
    source: str | Path, *, d_in: Any, d_sae: Any, dtype: str | torch.dtype | None, family: str = "jumprelu", **kw: Any
) -> SAEConfig:
    """`make_cfg` for the threshold and ReLU layouts whose weights act on raw activations (Gemma Scope, circuit-tracer):
    no normalisation, no k, and no b_dec subtracted from the input."""
    return make_cfg(
        source,
        d_in=d_in,
        d_sae=d_sae,
        dtype=dtype,
        family=family,
        k=None,
        normalize="none",
        options={"apply_b_dec_to_input": False},
        **kw,
    )


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


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in a safetensors file, from its header alone (nothing is read); {} for a file that
    is missing or not safetensors (detection asks of files that may be anything)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError):
        return {}


def layer_of(name: str, pattern: str = r"layer_(\d+)") -> int | None:
    """The layer number a file or folder name carries (`layer_12_width_16k` -> 12), or None."""
    m = re.search(pattern, name)
    return int(m.group(1)) if m else None


def block_hook(layer: int | str, site: str) -> str:
    """`blocks.{layer}.{site}`, the TransformerLens-style name of a hook inside block `layer` (a CLT: layer '{}')."""
    return f"blocks.{layer}.{site}"


def site_of(hook: str, layer: int | str) -> str | None:
    """The part of `blocks.{layer}.{site}` after the layer, or None when `hook` is not of that form."""
    prefix = f"blocks.{layer}."
    return hook[len(prefix) :] if hook.startswith(prefix) and len(hook) > len(prefix) else None
