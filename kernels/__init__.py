"""Sparse top-k encode / select / decode shared by every SAE family.

Each op has a plain-torch twin (the reference and the CPU path); on CUDA a Triton
kernel runs behind the same signature. Dispatch happens here, never in the caller.
The Triton module is imported only when a CUDA tensor reaches an op (or a test asks for it),
so importing `kernels` never needs a GPU driver.
"""

from __future__ import annotations

import os

import torch

from kernels.checks import check_code, check_encode, check_k, check_pre, check_rule, check_target
from kernels.code import SparseCode
from kernels.decode_torch import decode_torch
from kernels.encode_torch import Encoding, encode_twin
from kernels.encode_torch import aux_select as aux_select_torch
from kernels.select_torch import select_by_rule

__all__ = ["SparseCode", "Encoding", "select", "decode", "decode_sse", "encode", "aux_select"]

# "auto": CUDA -> Triton, CPU -> torch twin.  "triton": Triton everywhere (tests, under TRITON_INTERPRET=1).
# "torch": the twins everywhere.  Overridable with SAE_KERNELS_BACKEND.
BACKEND = os.environ.get("SAE_KERNELS_BACKEND", "auto")


def _triton_for(t: torch.Tensor):
    """The Triton module when `t` should run on it, else None."""
    if BACKEND == "torch" or (BACKEND == "auto" and not t.is_cuda):
        return None
    if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None  # float64 and friends: the twin is the reference path
    from kernels import triton_impl

    return triton_impl


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
    if rule != "threshold":
        k = check_k(k, n, rule)
    elif threshold is None:
        raise ValueError("rule 'threshold' needs threshold= (a float or a [n_latents] tensor)")
    tri = _triton_for(pre)
    if tri is not None:
        return tri._select_detached(pre, rule, k, threshold)
    return select_by_rule(pre, rule, k, threshold)


def decode(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """x_hat = code @ W_dec (+ b_dec) as a gather-sum over the rows that fired: [B, d]."""
    check_code(code.values, code.indices, W_dec)
    tri = _triton_for(W_dec)
    if tri is not None:
        return tri.decode(code, W_dec, b_dec)
    return decode_torch(code, W_dec, b_dec)


def decode_sse(
    code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, sum of (x_hat - target)^2 in float32): decode and the squared error together. On Triton the
    decoder rows are gathered once for the forward and the backward (the loss's gradient at x_hat and the
    values' gradient are computed in the same pass); the twin is decode + the plain sum."""
    check_code(code.values, code.indices, W_dec)
    check_target(target, code.values.shape[0], W_dec)
    tri = _triton_for(W_dec)
    if tri is not None:
        return tri.decode_sse_fused(code, W_dec, b_dec, target)
    x_hat = decode_torch(code, W_dec, b_dec)
    return x_hat, (x_hat - target).float().pow(2).sum()


def encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    rule: str,
    k: int | None = None,
    threshold: torch.Tensor | float | None = None,
    dead: torch.Tensor | None = None,
    k_aux: int = 0,
    b_pre: torch.Tensor | None = None,
) -> Encoding:
    """Pre-activations (x - b_pre) @ W_enc + b_enc, selected by `rule`; plus the AuxK code over `dead` latents.

    The backward touches only the selected entries (main and AuxK codes), on Triton and on the torch
    twin alike: gradients reach x, W_enc and b_enc without a dense [B, n] gradient. b_pre (the decoder bias an
    SAE subtracts before encoding) gets its gradient as one matrix-vector product, -W_enc @ (b_enc's gradient),
    rather than through a [B, d] input gradient, unless x itself needs one.
    """
    check_rule(rule)
    check_encode(x, W_enc, b_enc, dead, b_pre)
    n = W_enc.shape[1]
    if rule != "threshold":
        k = check_k(k, n, rule)
    elif threshold is None:
        raise ValueError("rule 'threshold' needs threshold= (a float or a [n_latents] tensor)")
    tri = _triton_for(W_enc)
    if tri is not None:
        code, aux = tri.encode(x, W_enc, b_enc, rule, k, threshold, dead, k_aux, b_pre)
        return Encoding(code, aux)
    return encode_twin(x, W_enc, b_enc, rule, k, threshold, dead, k_aux, b_pre)


def aux_select(pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool = False) -> SparseCode | None:
    """Each row's k_aux largest pre-activations among `dead` latents (by magnitude when signed); None when
    k_aux < 1 or (torch twin) no latent is dead. Values are gathered from `pre`, so gradients reach it.
    On Triton the width is min(k_aux, n) whatever the dead count (zero-valued padding), so no host sync."""
    tri = _triton_for(pre)
    if tri is None:
        return aux_select_torch(pre, dead, k_aux, signed=signed)
    if k_aux < 1:
        return None
    return tri.aux_select(pre, dead, k_aux, signed)
