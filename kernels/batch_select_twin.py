"""Plain-torch selection over the batch (BatchTopK): the reference for the Triton kernels and the CPU path."""

from __future__ import annotations

import torch

from kernels.code import SparseCode, code_from_mask
from kernels.rules import RULES


def select_batch(pre: torch.Tensor, k: int) -> SparseCode:
    """Top k*B of the ReLU'd batch as a whole: rows hold varying counts, padded with zeros."""
    B, n = pre.shape
    rule = RULES["batch"]
    flat = rule.score(pre).flatten()
    keep = flat.topk(min(k * B, flat.numel()), sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, keep, True).view(B, n)
    return code_from_mask(rule.value(pre), mask)
