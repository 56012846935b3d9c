"""Sparse top-k encode / select / decode shared by every SAE family.

Each op has a plain-torch twin (the reference and the CPU path); on CUDA a Triton kernel runs behind the same
signature. Dispatch happens here, never in the caller. The Triton modules are imported only when a CUDA tensor
reaches an op (or a test asks for them), so importing `kernels` never needs a GPU driver. The first use of each
Triton path and shape in a process is checked against the twin (kernels/first_use.py); a path that fails it
runs on the twin from then on, with one warning.
"""

from __future__ import annotations

import os

import torch

from kernels import first_use, twin_compare
from kernels.checks import check_code, check_encode, check_k, check_pre, check_rule, check_target
from kernels.code import SparseCode, code_from_mask
from kernels.decode_twin import decode_twin
from kernels.encode_twin import Encoding, encode_twin, pre_activations, with_gradient
from kernels.encode_twin import aux_select as aux_select_twin
from kernels.rules import RULES, Rule
from kernels.select_twin import select_by_rule

__all__ = [
    "SparseCode",
    "Encoding",
    "Rule",
    "RULES",
    "BACKEND",
    "select",
    "decode",
    "decode_sse",
    "encode",
    "aux_select",
    "code_from_mask",
    "pre_activations",
    "with_gradient",
]

# "auto": CUDA -> Triton, CPU -> torch twin.  "triton": Triton everywhere (tests, under TRITON_INTERPRET=1).
# "torch": the twins everywhere.  Overridable with SAE_KERNELS_BACKEND.
BACKEND = os.environ.get("SAE_KERNELS_BACKEND", "auto")
BACKENDS = ("auto", "torch", "triton")


def _use_triton(t: torch.Tensor) -> bool:
    """Whether `t` should run on the Triton kernels."""
    if BACKEND not in BACKENDS:
        raise ValueError(f"kernels.BACKEND (SAE_KERNELS_BACKEND) is {BACKEND!r}: expected one of {BACKENDS}")
    if BACKEND == "torch" or (BACKEND == "auto" and not first_use.on_cuda(t)):
        return False
    return t.dtype in (torch.float32, torch.bfloat16, torch.float16)  # float64 and friends: the twin's


def _wants_grad(*tensors: torch.Tensor | None) -> tuple[bool, ...]:
    return tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in tensors)


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
    if _use_triton(pre):
        from kernels import select_triton

        path = select_triton.path(rule, n, k)
        key = ("select", rule, path, n, k, pre.dtype, torch.is_tensor(threshold) and threshold.dim() > 0)

        def check() -> str | None:
            return twin_compare.select_difference(lambda p: select_triton.select(p, rule, k, threshold), pre, rule, k, threshold)

        if first_use.trusted(key, f"select {rule!r} ({path}, n={n}, k={k}, {pre.dtype})", pre, check):
            return select_triton.select(pre, rule, k, threshold)
    return select_by_rule(pre, rule, k, threshold)


def decode(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """x_hat = code @ W_dec (+ b_dec) as a gather-sum over the rows that fired: [B, d]."""
    check_code(code.values, code.indices, W_dec)
    if _use_triton(W_dec):
        from kernels import decode_triton

        n, d = W_dec.shape
        w = code.values.shape[1]
        key = ("decode", n, d, w, W_dec.dtype, b_dec is not None, _wants_grad(code.values, W_dec, b_dec))

        def check() -> str | None:
            return twin_compare.decode_difference(decode_triton.decode, code, W_dec, b_dec)

        if first_use.trusted(key, f"decode (n={n}, d={d}, width {w}, {W_dec.dtype})", W_dec, check):
            return decode_triton.decode(code, W_dec, b_dec)
    return decode_twin(code, W_dec, b_dec)


def decode_sse(
    code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, sum of (x_hat - target)^2 in float32): decode and the squared error together. On Triton the
    decoder rows are gathered once for the forward and the backward (the loss's gradient at x_hat and the
    values' gradient are computed in the same pass); the twin is decode + the plain sum."""
    check_code(code.values, code.indices, W_dec)
    check_target(target, code.values.shape[0], W_dec)
    if _use_triton(W_dec):
        from kernels import decode_triton

        n, d = W_dec.shape
        B, w = code.values.shape
        chunk = decode_triton.chunk_for(B, w, W_dec)
        key = ("decode_sse", n, d, w, W_dec.dtype, b_dec is not None, chunk < d, _wants_grad(code.values, W_dec, b_dec, target))

        def check() -> str | None:
            return twin_compare.decode_sse_difference(
                lambda c, W, b, t: decode_triton.decode_sse(c, W, b, t, chunk=chunk), code, W_dec, b_dec, target
            )

        name = f"decode + squared error (n={n}, d={d}, width {w}, {-(-d // chunk)} d chunks, {W_dec.dtype})"
        if first_use.trusted(key, name, W_dec, check):
            return decode_triton.decode_sse(code, W_dec, b_dec, target)
    x_hat = decode_twin(code, W_dec, b_dec)
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
    d, n = W_enc.shape
    if rule != "threshold":
        k = check_k(k, n, rule)
    elif threshold is None:
        raise ValueError("rule 'threshold' needs threshold= (a float or a [n_latents] tensor)")
    if _use_triton(W_enc):
        from kernels import encode_triton

        fused = encode_triton.fused_applies(x, rule, k, n)
        aux_width = min(k_aux, n) if dead is not None and k_aux >= 1 else 0
        key = (
            "encode",
            rule,
            d,
            n,
            k,
            aux_width,
            W_enc.dtype,
            fused,
            b_enc is not None,
            b_pre is not None,
            W_enc.stride(0) == 1,
            _wants_grad(x, W_enc, b_enc, b_pre),
        )

        def check() -> str | None:
            def difference(run) -> str | None:
                return twin_compare.encode_difference(run, x, W_enc, b_enc, rule, k, threshold, dead, k_aux, b_pre)

            return encode_triton.difference_on_every_route(difference, rule, k, threshold, dead, k_aux, fused)

        name = f"encode {rule!r} ({'fused matmul, ' if fused else ''}d={d}, n={n}, k={k}, AuxK width {aux_width}, {W_enc.dtype})"
        if first_use.trusted(key, name, W_enc, check):
            code, aux = encode_triton.encode(x, W_enc, b_enc, rule, k, threshold, dead, k_aux, b_pre)
            return Encoding(code, aux)
    return encode_twin(x, W_enc, b_enc, rule, k, threshold, dead, k_aux, b_pre)


def aux_select(pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool = False) -> SparseCode | None:
    """AuxK's code: each row's min(k_aux, n) largest pre-activations among the `dead` latents (by magnitude
    when signed), ordered, zero-valued padding (at index 0) past the dead count; the same fixed width on both
    paths, so the dead count never reaches the host. None when k_aux < 1. Values are gathered from `pre`, so
    gradients reach it."""
    if k_aux < 1:
        return None
    if _use_triton(pre):
        from kernels import select_triton

        n = pre.shape[1]
        key = ("aux_select", signed, n, min(k_aux, n), pre.dtype)

        def check() -> str | None:
            return twin_compare.aux_difference(
                lambda p: select_triton.aux_select(p, dead, k_aux, signed), pre, dead, k_aux, signed
            )

        if first_use.trusted(key, f"AuxK select (n={n}, width {min(k_aux, n)}, {pre.dtype})", pre, check):
            return select_triton.aux_select(pre, dead, k_aux, signed)
    return aux_select_twin(pre, dead, k_aux, signed=signed)
