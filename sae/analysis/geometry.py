"""Superposition and geometry measures of a dictionary.

- Effective number of features (Bereska et al., superposition as lossy compression): p_i = mean over
  tokens of |z_i|, normalised to sum 1 (+1e-10, renormalised); F_eff = exp(-sum p_i ln p_i); the
  superposition ratio psi = F_eff / d_in.
- AFA quasi-orthogonality (Lee et al. 2025), for any dictionary: `sae.families.topafa.afa_diagnostic`
  (epsilon_LBO, the over-activated fraction) on a sample of activations.
- Decoder cosine structure: the most similar latent pairs and the histogram of pairwise cosines of
  the (normalised) decoder rows.

A transcoder's features live in its target's space: psi = F_eff / d_out, the decoder structure of its W_dec, and
no AFA (its selection is not tied to reconstructing its own input, which AFA's bound is about). A CLT gets the
effective number of features only (psi over the L * d_out dimensions it writes to): its decoders are per layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sae.families.topafa import afa_diagnostic
from sae.model import SparseAutoencoder

__all__ = ["decoder_similarity", "effective_features", "geometry"]


def effective_features(mean_abs_activation: torch.Tensor, d_in: int) -> dict[str, float]:
    """F_eff = exp(entropy of the activation mass) and psi = F_eff / d_in, from each latent's mean |z| [n]."""
    p = mean_abs_activation.double().clamp_min(0)
    if p.sum() <= 0:
        raise ValueError("no latent fired: the activation mass is empty, so there is no entropy to measure")
    p = p / p.sum() + 1e-10
    p = p / p.sum()
    f_eff = math.exp(-(p * p.log()).sum().item())
    return {"effective_features": f_eff, "superposition_ratio": f_eff / d_in}


@torch.no_grad()
def decoder_similarity(sae: SparseAutoencoder, top: int = 10, bins: int = 50) -> dict[str, object]:
    """Most similar decoder-row pairs (i < j, by |cos|) and the histogram of all pairwise cosines in [-1, 1]."""
    W = sae.W_dec.detach().double()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = W.shape[0]
    block = max(1, 4_000_000 // n)  # rows per [block, n] cosine slab (about 32 MB)
    counts = torch.zeros(bins, dtype=torch.float64)
    best_val = torch.empty(0, dtype=torch.float64)
    best_idx = torch.empty(0, 2, dtype=torch.long)
    for i in range(0, n, block):
        c = W[i : i + block] @ W.T  # [b, n]
        rows = torch.arange(i, min(i + block, n))
        upper = rows[:, None] < torch.arange(n)[None, :]  # each unordered pair once, no diagonal
        vals = c[upper]
        counts += torch.histc(vals.float(), bins=bins, min=-1.0, max=1.0).double()
        k = min(top, vals.numel())
        if k:
            v, flat = vals.abs().topk(k)
            pairs = upper.nonzero()[flat]
            best_val = torch.cat([best_val, vals[flat]])
            best_idx = torch.cat([best_idx, torch.stack([pairs[:, 0] + i, pairs[:, 1]], 1)])
    order = best_val.abs().argsort(descending=True)[:top]
    return {
        "top_pairs": [[int(a), int(b), float(v)] for (a, b), v in zip(best_idx[order].tolist(), best_val[order])],
        "cos_hist_edges": torch.linspace(-1, 1, bins + 1).tolist(),
        "cos_hist_counts": counts.long().tolist(),
    }


def geometry(sae: SparseAutoencoder, x: torch.Tensor, mean_abs_activation: torch.Tensor) -> dict[str, Any]:
    """All measures: effective features, AFA (on activations x [N, d]) and the decoder cosine structure (a
    transcoder's and a CLT's: the module docstring)."""
    cfg = sae.cfg
    if cfg.is_clt:
        return effective_features(mean_abs_activation, cfg.out_width * cfg.layers)
    sim = decoder_similarity(sae)
    if cfg.is_transcoder:
        return {
            **effective_features(mean_abs_activation, cfg.out_width),
            "decoder_top_pairs": sim["top_pairs"],
            "decoder_cos_hist": {"edges": sim["cos_hist_edges"], "counts": sim["cos_hist_counts"]},
        }
    afa = afa_diagnostic(sae, x)
    return {
        **effective_features(mean_abs_activation, sae.cfg.d_in),
        "afa_eps_lbo": afa["eps_lbo"],
        "afa_over_activated_fraction": afa["over_activated_fraction"],
        "decoder_max_abs_cos": afa["max_abs_cos"],
        "decoder_mean_abs_cos": afa["mean_abs_cos"],
        "decoder_top_pairs": sim["top_pairs"],
        "decoder_cos_hist": {"edges": sim["cos_hist_edges"], "counts": sim["cos_hist_counts"]},
    }
