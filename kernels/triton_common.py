"""@triton.jit helpers shared by the Triton kernel modules."""

from __future__ import annotations

import triton
import triton.language as tl


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
