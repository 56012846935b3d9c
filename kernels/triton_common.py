"""What the Triton kernel modules share: @triton.jit helpers, output buffers, the interpreter switch."""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from kernels.code import SparseCode
from kernels.rules import Rule

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton's CPU interpreter (the tests): other blocks
POISON = False  # tests set this: every output buffer starts as garbage, so an unwritten element shows


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for a kernel's output, filled with garbage (NaN or -7777) when POISON is set."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan") if dtype.is_floating_point else -7777)
    return out


def kernel_input(pre: torch.Tensor) -> torch.Tensor:
    """pre as the selection kernels read it: contiguous float32, bfloat16 or float16."""
    if pre.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"Triton select takes float32, bfloat16 or float16 pre-activations, got {pre.dtype}")
    return pre.contiguous()


def ordered_code(pre: torch.Tensor, idx: torch.Tensor, count: torch.Tensor | None, rule: Rule) -> SparseCode:
    """The code of the columns `idx` [B, w] a kernel kept (each row's first `count` when given, the rest
    padding): values read from pre (differentiable through torch) as the rule keeps them, padding zeroed at
    index 0, each row ordered by the raw value (by magnitude for a magnitude key) descending, ties in place."""
    width = idx.shape[1]
    if count is not None:
        valid = torch.arange(width, device=idx.device)[None, :] < count[:, None].long()
        idx = torch.where(valid, idx, torch.zeros_like(idx))
    raw = pre.gather(1, idx)
    vals = rule.value(raw)
    if count is not None:
        vals = torch.where(valid, vals, torch.zeros_like(vals))
    with torch.no_grad():  # order by the raw value (as torch.topk does), by magnitude for "abs"
        score = raw.detach().float().abs() if rule.key == "magnitude" else raw.detach().float()
        if count is not None:
            score = torch.where(valid, score, torch.full_like(score, -math.inf))
        order = score.argsort(dim=1, descending=True, stable=True)
    return SparseCode(vals.gather(1, order), idx.gather(1, order))


def key_shift(dtype: torch.dtype) -> int:
    """The low bits of an fp32 order key that `dtype` cannot hold (order_key's SHIFT): 16 bf16, 13 fp16, 0 fp32."""
    return {torch.bfloat16: 16, torch.float16: 13}.get(dtype, 0)


@triton.jit
def order_key(x, MODE: tl.constexpr, SHIFT: tl.constexpr):
    """Order-preserving int32 image of fp32 x (MODE 0 plain, 1 |x|, 2 relu(x)); the low SHIFT bits, which the
    input dtype cannot hold, dropped (16 for bf16, 13 for fp16)."""
    if MODE == 1:
        x = tl.abs(x)
    if MODE == 2:
        x = tl.maximum(x, 0.0)
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return key >> SHIFT


@triton.jit
def to_storage(x, DTYPE: tl.constexpr):
    """fp32 x cast to DTYPE, rounding to nearest even for bf16 explicitly: the GPU's cast does so, Triton's CPU
    interpreter truncates, and the kernels' outputs must be the same on both (finite values)."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)
