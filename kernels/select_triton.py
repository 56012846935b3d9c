"""Selection on Triton behind `kernels.select` and `kernels.aux_select`: one exact path per rule, one fallback.

row, abs: the top k read off sub-block maxima (submax_select_triton) where a row holds enough sub-blocks, its
overflowing rows redone by the bisection (fallback_triton); shorter rows by the bisection alone. batch: the
pruned selection over the batch (batch_select_triton). threshold, stat: one compaction of the entries above the
threshold. AuxK: the bisection over the dead columns, at a fixed width. Selection never sorts [B, n]; only each
row's kept entries are ordered.
"""

from __future__ import annotations

import torch

from kernels.batch_select_triton import select_batch
from kernels.blocks import batch_prune_fits, tile_select_fits
from kernels.code import SparseCode
from kernels.fallback_triton import bisect_rows, compact
from kernels.rules import RULES, aux_rule
from kernels.select_twin import stat_threshold
from kernels.submax_select_triton import topk_from_submax
from kernels.triton_common import kernel_input, ordered_code


def path(rule: str, n: int, k: int | None) -> str:
    """The name of the path `select` takes for a rule at a row width (the first-use check keys on it)."""
    if rule == "threshold":
        return "compaction"
    assert k is not None  # kernels.select checked it: every other rule takes k
    if rule in ("row", "abs"):
        return "sub-block maxima" if tile_select_fits(n, k) else "bisection"
    if rule == "batch":
        return "pruned" if batch_prune_fits(n, k) else "bisection"
    return "compaction"


def select_top(pre: torch.Tensor, k: int, rule: str, colmask: torch.Tensor | None = None) -> SparseCode:
    """Each row's top k by the rule's key ("row" or "abs"), ordered, values as the rule keeps them (gathered from
    pre, so gradients reach it); among the columns `colmask` (int8 [n]) keeps when given."""
    r = RULES[rule]
    if colmask is None and tile_select_fits(pre.shape[1], k):
        idx, _ = topk_from_submax(kernel_input(pre.detach()), k, r.key_mode)
        return SparseCode(r.value(pre.gather(1, idx)), idx)  # already ordered
    return ordered_code(pre, bisect_rows(kernel_input(pre.detach()), k, r.key_mode, colmask), None, r)


def select_row(pre: torch.Tensor, k: int, colmask: torch.Tensor | None = None) -> SparseCode:
    return select_top(pre, k, "row", colmask)


def select_abs(pre: torch.Tensor, k: int, colmask: torch.Tensor | None = None) -> SparseCode:
    return select_top(pre, k, "abs", colmask)


def aux_select(pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool) -> SparseCode:
    """AuxK's code: each row's min(k_aux, n) largest entries among the dead latents (by magnitude when signed),
    zero-valued padding past the dead count. Fixed width, so the dead count never reaches the host."""
    B, n = pre.shape
    width = min(k_aux, n)
    rule = aux_rule(signed)
    colmask = dead.to(torch.int8).contiguous()
    count = dead.sum().clamp(max=width).expand(B)
    idx = bisect_rows(kernel_input(pre.detach()), width, rule.key_mode, colmask)
    return ordered_code(pre, idx, count, rule)


def select_by_value(pre: torch.Tensor, thrv: torch.Tensor, strides: tuple[int, int], rule: str) -> SparseCode:
    """Keep pre > thrv (broadcast by strides): a count pass, then a write pass at the widest row's count."""
    p = kernel_input(pre.detach())
    thrv = thrv.to(torch.float32).contiguous()
    ngt, _ = compact(p, 0, None, None, None, None, 1, by_value=True, thrv=thrv, thr_strides=strides, store=False)
    width = max(int(ngt.max().item()), 1)
    (idx,) = compact(p, 0, None, None, None, None, width, by_value=True, thrv=thrv, thr_strides=strides)
    return ordered_code(pre, idx, ngt, RULES[rule])


def select_threshold(pre: torch.Tensor, threshold) -> SparseCode:
    thr = torch.as_tensor(threshold, dtype=torch.float32, device=pre.device)
    # the twin compares in pre's dtype: round the threshold the same way
    thr = thr.to(pre.dtype).float()
    if thr.dim() == 0:
        return select_by_value(pre, thr.reshape(1), (0, 0), "threshold")
    if thr.shape != (pre.shape[1],):
        raise ValueError(
            f"threshold of shape {tuple(thr.shape)} does not fit pre {tuple(pre.shape)}: expected a scalar or [{pre.shape[1]}]"
        )
    return select_by_value(pre, thr, (0, 1), "threshold")


def select_stat(pre: torch.Tensor, k: int) -> SparseCode:
    thr = stat_threshold(pre.detach(), k)
    return select_by_value(pre, thr, (1, 0), "stat")


def select(pre: torch.Tensor, rule: str, k: int | None, threshold=None, colmask: torch.Tensor | None = None) -> SparseCode:
    """The Triton selection for `rule` (arguments already checked by `kernels.select`)."""
    if rule == "threshold":
        return select_threshold(pre, threshold)
    assert k is not None  # every other rule takes k
    if rule == "row":
        return select_row(pre, k, colmask)
    if rule == "abs":
        return select_abs(pre, k, colmask)
    if rule == "batch":
        return select_batch(pre, k)
    if rule == "stat":
        return select_stat(pre, k)
    raise ValueError(f"unknown selection rule {rule!r}; expected one of {tuple(RULES)}")
