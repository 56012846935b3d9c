"""Sparse top-k encode / select / decode shared by every SAE family.

Each op has a plain-torch twin (the reference and the CPU path); on CUDA a Triton
kernel runs behind the same signature. Dispatch happens here, never in the caller.
"""

from __future__ import annotations

import torch

from kernels.checks import check_code, check_k, check_pre, check_rule
from kernels.code import SparseCode
from kernels.decode_torch import decode_torch
from kernels.encode_torch import Encoding, aux_select
from kernels.select_torch import select_abs, select_batch, select_row, select_threshold

__all__ = ["SparseCode", "Encoding", "select", "decode", "encode", "aux_select"]


def select(
    pre: torch.Tensor,
    rule: str,
    k: int | None = None,
    threshold: torch.Tensor | float | None = None,
) -> SparseCode:
    """Select a sparse code from pre-activations [B, n] by `rule` ("row"|"abs"|"batch"|"threshold"|"stat")."""
    check_rule(rule)
    check_pre(pre)
    n = pre.shape[1]
    if rule == "row":
        return select_row(pre, check_k(k, n, rule))
    if rule == "abs":
        return select_abs(pre, check_k(k, n, rule))
    if rule == "batch":
        return select_batch(pre, check_k(k, n, rule))
    if rule == "threshold":
        if threshold is None:
            raise ValueError("rule 'threshold' needs threshold= (a float or a [n_latents] tensor)")
        return select_threshold(pre, threshold)
    raise NotImplementedError(f"rule {rule!r} has no implementation yet")


def decode(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """x_hat = code @ W_dec (+ b_dec) as a gather-sum over the rows that fired: [B, d]."""
    check_code(code.values, code.indices, W_dec)
    return decode_torch(code, W_dec, b_dec)


def encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    rule: str,
    k: int | None = None,
    threshold: torch.Tensor | float | None = None,
    dead: torch.Tensor | None = None,
    k_aux: int = 0,
) -> Encoding:
    """Pre-activations x @ W_enc + b_enc, selected by `rule`; plus the AuxK code over `dead` latents."""
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and W_enc {tuple(W_enc.shape)} do not fit: expected [B, d] @ [d, n]")
    pre = x @ W_enc
    if b_enc is not None:
        pre = pre + b_enc
    code = select(pre, rule, k=k, threshold=threshold)
    aux = aux_select(pre, dead, k_aux, signed=rule == "abs") if dead is not None else None
    return Encoding(code, aux)
