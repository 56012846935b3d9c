"""Plain-torch sparse decode: gather-sum of the decoder rows that fired."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.code import SparseCode


def decode_twin(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """x_hat[b] = sum_j values[b, j] * W_dec[indices[b, j]] (+ b_dec): B*k*d work, never B*n*d."""
    values, indices = code
    if W_dec.device.type == "cpu" and W_dec.dtype in (torch.float32, torch.float64):
        out = F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")
    else:
        out = torch.einsum("bk,bkd->bd", values, W_dec[indices])
    return out if b_dec is None else out + b_dec
