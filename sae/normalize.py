"""Input normalisation variants, explicit and saved in cfg.json (ALGORITHMS.md, shared machinery)."""

from __future__ import annotations

import torch

Stats = tuple[torch.Tensor, torch.Tensor] | None


def normalize(x: torch.Tensor, mode: str, scale: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Map raw activations to the space the dictionary trains in; return what undoing it needs."""
    if mode == "dataset_scalar":
        return x * scale, None
    if mode == "none":
        return x, None
    if mode == "constant_norm_rescale":
        norm = x.norm(dim=-1, keepdim=True) / x.shape[-1] ** 0.5
        return x / norm, (torch.zeros_like(norm), norm)
    mu = x.mean(-1, keepdim=True)
    centred = x - mu
    if mode == "layer_norm":
        sd = centred.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    elif mode == "layer_norm_std":  # OpenAI sparse_autoencoder's LN, SAELens's layer_norm: undone with std alone
        std = centred.std(-1, keepdim=True)
        return centred / (std + 1e-5), (mu, std)
    elif mode == "unit_norm":
        sd = centred.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    else:
        raise ValueError(f"unknown normalize mode {mode!r}")
    return centred / sd, (mu, sd)


def denormalize(x_n: torch.Tensor, mode: str, scale: torch.Tensor, stats: Stats) -> torch.Tensor:
    """Inverse of `normalize` for a reconstruction."""
    if mode == "dataset_scalar":
        return x_n / scale
    if mode == "none" or stats is None:
        return x_n
    mu, sd = stats
    return x_n * sd + mu
