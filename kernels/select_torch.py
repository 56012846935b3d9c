"""Plain-torch selection rules: the reference for the Triton kernels and the CPU path."""

from __future__ import annotations

import torch

from kernels.code import SparseCode


def select_row(pre: torch.Tensor, k: int) -> SparseCode:
    """Top-k of each row, then ReLU (Gao et al.): L0 <= k, indices sorted by value."""
    values, indices = pre.topk(k, dim=-1, sorted=True)
    return SparseCode(values.relu(), indices)


def select_abs(pre: torch.Tensor, k: int) -> SparseCode:
    """Top-k of each row by magnitude, signs kept (AbsTopK's hard thresholding H_k)."""
    _, indices = pre.abs().topk(k, dim=-1, sorted=True)
    return SparseCode(pre.gather(1, indices), indices)


def select_batch(pre: torch.Tensor, k: int) -> SparseCode:
    """Top k*B of the ReLU'd batch as a whole: rows hold varying counts, padded with zeros."""
    B, n = pre.shape
    flat = pre.relu().flatten()
    keep = flat.topk(min(k * B, flat.numel()), sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, keep, True).view(B, n)
    return _mask_to_code(pre.relu(), mask)


def select_threshold(pre: torch.Tensor, threshold: torch.Tensor | float) -> SparseCode:
    """Keep entries strictly above a global or per-latent threshold (JumpReLU, BatchTopK inference)."""
    thr = torch.as_tensor(threshold, dtype=pre.dtype, device=pre.device)
    return _mask_to_code(pre, pre > thr)


def _mask_to_code(values: torch.Tensor, mask: torch.Tensor) -> SparseCode:
    """Pack the masked entries of each row into a fixed-width code (width = largest row count)."""
    counts = mask.sum(dim=-1)
    width = max(int(counts.max().item()), 1)
    # kept entries first (largest kept value first), padding after
    score = torch.where(mask, values, torch.full_like(values, float("-inf")))
    top, indices = score.topk(width, dim=-1, sorted=True)
    keep = torch.isfinite(top)
    vals = torch.where(keep, values.gather(1, indices), torch.zeros_like(top))
    return SparseCode(vals, indices)


def stat_threshold(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row threshold mean + std * Phi^-1(1 - k/n) (Spark Transformer's statistical top-k), floored at 0: [B]."""
    n = pre.shape[1]
    p = pre.float()
    mean = p.mean(dim=1)
    std = p.std(dim=1, correction=0)
    q = min(max(1.0 - k / n, 1e-12), 1.0 - 1e-12)
    z = torch.special.ndtri(torch.tensor(q, dtype=torch.float64)).item()
    return (mean + z * std).clamp_min(0.0)


def select_stat(pre: torch.Tensor, k: int) -> SparseCode:
    """Approximate top-k without a sort: keep entries above the row's statistical threshold (about k per row
    on Gaussian rows; more on heavy-tailed ones). Values kept as they are (all positive)."""
    thr = stat_threshold(pre.detach(), k)
    return _mask_to_code(pre, pre.float() > thr[:, None])


def select_by_rule(pre: torch.Tensor, rule: str, k: int | None, threshold: torch.Tensor | float | None) -> SparseCode:
    """The plain-torch selection for `rule` (arguments already checked by `kernels.select`)."""
    if rule == "threshold":
        return select_threshold(pre, threshold)
    return {"row": select_row, "abs": select_abs, "batch": select_batch, "stat": select_stat}[rule](pre, k)
