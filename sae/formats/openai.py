"""OpenAI sparse_autoencoder (Gao et al. 2024): a torch state dict, read with weights_only=True.

(x - pre_bias) encoder^T + latent_bias, TopK(k) then ReLU, decoder + pre_bias. Its loader turns on per-token LN
(centre, divide by unbiased std + 1e-5, multiply back by std) exactly when the activation is TopK; ReLU files
are plain standard dictionaries.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sae.formats.common import make_cfg, tensor_of, torch_load_weights
from sae.io import Format
from sae.model import SparseAutoencoder

PT_SUFFIXES = (".pt", ".pth")


def load_openai(
    file: Path, device: torch.device | str | None = None, dtype: str | None = None, hook_name: str = "", model_name: str = ""
) -> SparseAutoencoder:
    """An OpenAI sparse_autoencoder state dict (.pt), read with weights_only=True."""
    file = Path(file)
    state = torch_load_weights(file)
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}; expected an OpenAI sparse_autoencoder state dict")
    activation = state.get("activation", "ReLU")
    act_state = state.get("activation_state_dict") or {}
    enc = tensor_of(state, "encoder.weight", file)
    if enc.dim() != 2:
        raise ValueError(f"{file}: encoder.weight has shape {tuple(enc.shape)}; expected [n_latents, d]")
    n, d = enc.shape
    if activation == "TopK":
        if act_state.get("postact_fn", "ReLU") != "ReLU":
            raise ValueError(f"{file}: TopK with postact_fn={act_state.get('postact_fn')!r} is not supported; expected 'ReLU'")
        family, k, normalize = "topk", act_state.get("k"), "layer_norm_std"
        if isinstance(k, torch.Tensor):
            k = int(k)
    elif activation == "ReLU":
        family, k, normalize = "standard", None, "none"
    else:
        raise ValueError(f"{file}: activation {activation!r} is not supported; expected 'TopK' or 'ReLU'")
    cfg = make_cfg(
        file,
        d_in=d,
        d_sae=n,
        dtype=dtype or "float32",
        family=family,
        k=k,
        normalize=normalize,
        hook_name=hook_name,
        model_name=model_name,
    )
    tensors = {
        "W_enc": enc.T,
        "b_enc": tensor_of(state, "latent_bias", file),
        "W_dec": tensor_of(state, "decoder.weight", file).T,
        "b_dec": tensor_of(state, "pre_bias", file),
    }
    return SparseAutoencoder.from_tensors(cfg, tensors, file, device=device)


def detect(path: Path) -> bool:
    """A .pt or .pth file, or a folder holding exactly one and no sub-folders (tried last: other layouts use .pt)."""
    if path.is_file():
        return path.suffix in PT_SUFFIXES
    children = list(path.iterdir())
    return sum(p.suffix in PT_SUFFIXES for p in children) == 1 and not any(p.is_dir() for p in children)


def _load(path: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    file = path if path.is_file() else next(p for p in path.iterdir() if p.suffix in PT_SUFFIXES)
    return load_openai(file, device=device, dtype=dtype)


FORMAT = Format("openai", "a .pt state dict (OpenAI sparse_autoencoder)", detect=detect, load=_load)
