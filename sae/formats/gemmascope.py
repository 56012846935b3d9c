"""Gemma Scope (Lieberum et al. 2024): params.npz per (layer, width, L0) folder; Gemma Scope 2 (Gemma 3) folders.

JumpReLU on x W_enc + b_enc (no b_dec subtraction), raw residual-stream activations; arrays read with
allow_pickle=False.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from sae.formats.common import clamp_threshold, layer_hook, make_cfg, tensor_of
from sae.io import Format, read_json, read_safetensors
from sae.model import SparseAutoencoder

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
    cfg = make_cfg(
        file,
        d_in=d,
        d_sae=n,
        dtype=dtype or "float32",
        family="jumprelu",
        k=None,
        normalize="none",
        options={"apply_b_dec_to_input": False},
        hook_name=hook_name,
        model_name=model_name,
    )
    tensors = {name: tensor_of(arrays, name, file) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    tensors["threshold"] = clamp_threshold(tensors["threshold"])
    return SparseAutoencoder.from_tensors(cfg, tensors, file, device=device)


GEMMA_SCOPE_2_FILE = "params.safetensors"
GEMMA_SCOPE_2_CFG = "config.json"
GEMMA_SCOPE_2_HOOKS = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out"}


def load_gemma_scope_2(folder: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    """A Gemma Scope 2 folder (Gemma 3): config.json {"architecture": "jump_relu", ...} + params.safetensors with
    w_enc [d, n], w_dec [n, d], b_enc, b_dec, threshold: the same JumpReLU as Gemma Scope, read in SAELens 6.54's
    `gemma_3` loader's terms. Transcoders (an affine skip connection, `transcoder`/`clt` folders) are refused."""
    folder = Path(folder)
    raw = read_json(folder / GEMMA_SCOPE_2_CFG)
    if raw.get("architecture") != "jump_relu":
        raise ValueError(f"{folder / GEMMA_SCOPE_2_CFG}: architecture {raw.get('architecture')!r}; expected 'jump_relu'")
    path = str(folder)
    if "transcoder" in path or "clt" in path or raw.get("affine_connection"):
        raise ValueError(f"{folder}: Gemma Scope 2 transcoders are not supported yet (only SAEs)")
    state = read_safetensors(folder / GEMMA_SCOPE_2_FILE)
    if "affine_skip_connection" in state:
        raise ValueError(f"{folder / GEMMA_SCOPE_2_FILE} holds an affine skip connection: transcoders are not supported yet")
    W_enc = tensor_of(state, "w_enc", folder / GEMMA_SCOPE_2_FILE)
    if W_enc.dim() != 2:
        raise ValueError(f"{folder / GEMMA_SCOPE_2_FILE}: w_enc has shape {tuple(W_enc.shape)}; expected [d_in, d_sae]")
    m = re.search(r"layer_(\d+)", path)
    site = next((hook for key, hook in GEMMA_SCOPE_2_HOOKS.items() if key in path), None)
    hook_name = f"blocks.{m.group(1)}.{site}" if m and site else str(raw.get("hf_hook_point_in", ""))
    model = str(raw.get("model_name", ""))
    cfg = make_cfg(
        folder / GEMMA_SCOPE_2_CFG,
        d_in=W_enc.shape[0],
        d_sae=W_enc.shape[1],
        dtype=dtype or "float32",
        family="jumprelu",
        k=None,
        normalize="none",
        options={"apply_b_dec_to_input": False},
        hook_name=hook_name,
        model_name=model,
    )
    tensors = {
        ours: tensor_of(state, theirs, folder / GEMMA_SCOPE_2_FILE)
        for ours, theirs in (
            ("W_enc", "w_enc"),
            ("W_dec", "w_dec"),
            ("b_enc", "b_enc"),
            ("b_dec", "b_dec"),
            ("threshold", "threshold"),
        )
    }
    tensors["threshold"] = clamp_threshold(tensors["threshold"])
    return SparseAutoencoder.from_tensors(cfg, tensors, folder / GEMMA_SCOPE_2_FILE, device=device)


def detect(path: Path) -> bool:
    """A params.npz (or any .npz file), or a folder holding params.npz."""
    return path.suffix == ".npz" if path.is_file() else (path / GEMMA_SCOPE_FILE).exists()


def detect_2(path: Path) -> bool:
    """A folder holding params.safetensors and config.json."""
    return path.is_dir() and (path / GEMMA_SCOPE_2_FILE).exists() and (path / GEMMA_SCOPE_2_CFG).exists()


FORMAT = Format("gemma-scope", GEMMA_SCOPE_FILE, detect=detect, load=load_gemma_scope)
FORMAT_2 = Format("gemma-scope-2", f"{GEMMA_SCOPE_2_CFG} + {GEMMA_SCOPE_2_FILE}", detect=detect_2, load=load_gemma_scope_2)
