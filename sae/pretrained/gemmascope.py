"""Gemma Scope (Lieberum et al. 2024): params.npz per (layer, width, L0) folder.

JumpReLU on x W_enc + b_enc (no b_dec subtraction), raw residual-stream activations; arrays read with
allow_pickle=False.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sae.io import build_sae
from sae.model import SparseAutoencoder
from sae.pretrained.common import clamp_threshold, layer_hook, make_cfg, tensor_of

GEMMA_SCOPE_FILE = "params.npz"


def load_gemma_scope(
    path: Path, device: torch.device | str | None = None, dtype: str | None = None, hook_name: str = "", model_name: str = ""
) -> SparseAutoencoder:
    """A Gemma Scope params.npz (a file or the folder holding it)."""
    path = Path(path)
    file = path / GEMMA_SCOPE_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {name: torch.from_numpy(np.array(npz[name])) for name in npz.files}
    except (ValueError, OSError) as e:
        raise ValueError(f"{file} is not a readable numpy .npz archive: {e}") from e
    W_enc = tensor_of(arrays, "W_enc", file)
    if W_enc.dim() != 2:
        raise ValueError(f"{file}: W_enc has shape {tuple(W_enc.shape)}; expected [d_in, d_sae]")
    d, n = W_enc.shape
    if not hook_name:  # layer_20/width_16k/average_l0_71/params.npz
        layer = next((p for p in file.parts if p.startswith("layer_")), "")
        hook_name = layer_hook(layer) if layer else ""
    cfg = make_cfg(file, d_in=d, d_sae=n, dtype=dtype or "float32", family="jumprelu", k=None, normalize="none",
                   options={"apply_b_dec_to_input": False}, hook_name=hook_name, model_name=model_name)
    tensors = {name: tensor_of(arrays, name, file) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    tensors["threshold"] = clamp_threshold(tensors["threshold"])
    return build_sae(cfg, tensors, file, device=device)
