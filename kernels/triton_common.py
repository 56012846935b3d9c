"""@triton.jit helpers shared by the Triton kernel modules."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

POISON = False  # tests set this: every output buffer starts as garbage, so an unwritten element shows


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for a kernel's output, filled with garbage (NaN or -7777) when POISON is set."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan") if dtype.is_floating_point else -7777)
    return out


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
