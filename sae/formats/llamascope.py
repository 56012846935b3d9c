"""Llama Scope (He et al. 2024): hyperparams.json + checkpoints/final.safetensors (nn.Linear naming).

JumpReLU with one scalar threshold, x W_enc + b_enc (no b_dec subtraction), inputs scaled by
sqrt(d) / `dataset_average_activation_norm.in`; an output norm that differs is folded into the decoder.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sae.formats.common import clamp_threshold, make_cfg, tensor_of
from sae.io import Format, read_json, read_safetensors
from sae.model import SparseAutoencoder

LLAMA_SCOPE_CFG = "hyperparams.json"
LLAMA_SCOPE_WEIGHTS = "checkpoints/final.safetensors"


def load_llama_scope(
    folder: Path, device: torch.device | str | None = None, dtype: str | None = None, model_name: str = ""
) -> SparseAutoencoder:
    """A Llama Scope folder: hyperparams.json + checkpoints/final.safetensors (nn.Linear naming)."""
    folder = Path(folder)
    cfg_path = folder / LLAMA_SCOPE_CFG
    hp = read_json(cfg_path)
    d, n = hp.get("d_model"), hp.get("d_sae")
    norms = hp.get("dataset_average_activation_norm") or {}
    norm_in, norm_out = norms.get("in"), norms.get("out", norms.get("in"))
    threshold = hp.get("jump_relu_threshold")
    for name, v in (
        ("dataset_average_activation_norm.in", norm_in),
        ("dataset_average_activation_norm.out", norm_out),
        ("jump_relu_threshold", threshold),
    ):
        positive = name == "jump_relu_threshold" or (isinstance(v, (int, float)) and v > 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not positive:
            raise ValueError(f"{cfg_path}: {name}={v!r}; expected a finite positive number")
    cfg = make_cfg(
        cfg_path,
        d_in=d,
        d_sae=n,
        dtype=dtype or "float32",
        family="jumprelu",
        k=None,
        normalize="dataset_scalar",
        options={"apply_b_dec_to_input": False},
        hook_name=str(hp.get("hook_point_in", "")),
        model_name=model_name or str(hp.get("model_name", "")),
    )
    assert norm_in is not None and norm_out is not None and threshold is not None  # the loop above refused them
    state = read_safetensors(folder / LLAMA_SCOPE_WEIGHTS)
    s_in, s_out = math.sqrt(cfg.d_in) / norm_in, math.sqrt(cfg.d_in) / norm_out
    # the model divides its normalised reconstruction by s_in; Llama Scope divides by s_out: fold the ratio
    ratio = s_in / s_out
    tensors = {
        "W_enc": tensor_of(state, "encoder.weight", folder / LLAMA_SCOPE_WEIGHTS).T,
        "b_enc": tensor_of(state, "encoder.bias", folder / LLAMA_SCOPE_WEIGHTS),
        "W_dec": tensor_of(state, "decoder.weight", folder / LLAMA_SCOPE_WEIGHTS).T.double() * ratio,
        "b_dec": tensor_of(state, "decoder.bias", folder / LLAMA_SCOPE_WEIGHTS).double() * ratio,
        "threshold": clamp_threshold(torch.full((cfg.latents,), float(threshold))),
    }
    return SparseAutoencoder.from_tensors(cfg, tensors, folder / LLAMA_SCOPE_WEIGHTS, device=device, input_scale=s_in)


def detect(path: Path) -> bool:
    """A folder holding hyperparams.json and checkpoints/final.safetensors."""
    return path.is_dir() and (path / LLAMA_SCOPE_CFG).exists() and (path / LLAMA_SCOPE_WEIGHTS).exists()


FORMAT = Format("llama-scope", f"{LLAMA_SCOPE_CFG} + {LLAMA_SCOPE_WEIGHTS}", detect=detect, load=load_llama_scope)
