"""Plain-torch selection per row (row, abs, threshold, stat): the reference for the Triton kernels and the CPU path."""

from __future__ import annotations

import torch

from kernels.batch_select_twin import select_batch
from kernels.code import SparseCode, code_from_mask
from kernels.rules import RULES


def select_top(pre: torch.Tensor, k: int, rule: str) -> SparseCode:
    """Each row's top k by the rule's key, values as the rule keeps them, ordered by key descending."""
    r = RULES[rule]
    _, indices = r.score(pre).topk(k, dim=-1, sorted=True)
    return SparseCode(r.value(pre.gather(1, indices)), indices)


def select_row(pre: torch.Tensor, k: int) -> SparseCode:
    """Top-k of each row, then ReLU (Gao et al.): L0 <= k, indices sorted by value."""
    return select_top(pre, k, "row")


def select_abs(pre: torch.Tensor, k: int) -> SparseCode:
    """Top-k of each row by magnitude, signs kept (AbsTopK's hard thresholding H_k)."""
    return select_top(pre, k, "abs")


def select_threshold(pre: torch.Tensor, threshold: torch.Tensor | float) -> SparseCode:
    """Keep entries strictly above a global or per-latent threshold (JumpReLU, BatchTopK inference)."""
    thr = torch.as_tensor(threshold, dtype=pre.dtype, device=pre.device)
    return code_from_mask(pre, pre > thr)


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
    return code_from_mask(pre, pre.float() > thr[:, None])


def select_by_rule(pre: torch.Tensor, rule: str, k: int | None, threshold: torch.Tensor | float | None) -> SparseCode:
    """The plain-torch selection for `rule` (arguments already checked by `kernels.select`)."""
    if rule == "threshold":
        assert threshold is not None
        return select_threshold(pre, threshold)
    assert k is not None  # every other rule takes k
    return {"row": select_row, "abs": select_abs, "batch": select_batch, "stat": select_stat}[rule](pre, k)
