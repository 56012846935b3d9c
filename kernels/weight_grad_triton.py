"""Weight gradients from a code on Triton, written once per latent: no fp32 [n, d] buffer, no atomics.

The B*w (token, latent) pairs of a code are sorted by latent once per step (torch.sort of B*w integers). The
pairs of the latents [l0, l0 + LB) are then one contiguous run, so one program per latent block and d block
accumulates  grad[l, :] = sum over its pairs of coef * src[token, :]  as a product of the run's one-hot
[LB, pairs] matrix with the gathered [pairs, BD] source rows (tensor cores in bf16), and writes its tile once in
the parameter's dtype, with the parameter's strides (so W_enc [d, n] needs no transpose). The bias gradient (sum
of coef per latent) falls out of the same one-hot matrix. Serves decode's backward (W_dec) and encode's (W_enc,
b_enc, b_pre).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.blocks import grad_blocks
from kernels.triton_common import INTERPRET


@triton.jit
def _grad_rows_kernel(
    lat_ptr,
    tok_ptr,
    coef_ptr,
    off_ptr,
    src_ptr,
    out_ptr,
    gb_ptr,
    w_ptr,
    part_ptr,
    n,
    d,
    s_on,
    s_od,
    HAS_BIAS: tl.constexpr,
    HAS_PRE: tl.constexpr,
    DOT_BF16: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[l, dblock] = sum over the pairs p of latent l of coef[p] * src[tok[p], dblock], for the latents of
    this program's block; pairs sorted by latent, off[i] = first pair of latent i * BLOCK_L. Written once.
    HAS_BIAS: gb[l] = the sum of latent l's coefficients. HAS_PRE (with HAS_BIAS): part[block, dblock] =
    sum over the block's latents of w[l, dblock] * gb[l] (w laid out as out), whose sum over the blocks is
    w^T gb: b_pre's gradient (up to sign) without another read of the weight in a separate launch."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    l0 = pid_l * BLOCK_L
    ls = tl.arange(0, BLOCK_L)
    dc = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dc < d
    start = tl.load(off_ptr + pid_l)
    end = tl.load(off_ptr + pid_l + 1)
    acc = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    bias = tl.zeros([BLOCK_L], tl.float32)
    for p0 in range(start, end, BLOCK_P):
        pp = p0 + tl.arange(0, BLOCK_P)
        pm = pp < end
        lat = tl.load(lat_ptr + pp, mask=pm, other=-1) - l0
        tok = tl.load(tok_ptr + pp, mask=pm, other=0).to(tl.int64)
        c = tl.load(coef_ptr + pp, mask=pm, other=0.0)
        onehot = tl.where(lat[None, :] == ls[:, None], c[None, :], 0.0)  # [BLOCK_L, BLOCK_P]
        rows = tl.load(src_ptr + tok[:, None] * d + dc[None, :], mask=pm[:, None] & dmask[None, :], other=0.0)
        if DOT_BF16:
            acc = tl.dot(onehot.to(tl.bfloat16), rows.to(tl.bfloat16), acc)
        else:
            acc = tl.dot(onehot, rows.to(tl.float32), acc, input_precision="ieee")
        if HAS_BIAS:
            bias += tl.sum(onehot, axis=1)
    lm = (l0 + ls) < n
    outp = out_ptr + (l0 + ls)[:, None].to(tl.int64) * s_on + dc[None, :].to(tl.int64) * s_od
    tl.store(outp, acc.to(out_ptr.dtype.element_ty), mask=lm[:, None] & dmask[None, :])
    if HAS_BIAS:
        if pid_d == 0:
            tl.store(gb_ptr + l0 + ls, bias.to(gb_ptr.dtype.element_ty), mask=lm)
    if HAS_PRE:
        wp = w_ptr + (l0 + ls)[:, None].to(tl.int64) * s_on + dc[None, :].to(tl.int64) * s_od
        w = tl.load(wp, mask=lm[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        tl.store(part_ptr + pid_l.to(tl.int64) * d + dc, tl.sum(w * bias[:, None], axis=0), mask=dmask)


class SortedPairs:
    """A code's (token, latent) pairs sorted by latent, with the first pair of every latent block."""

    def __init__(self, indices: torch.Tensor, n: int):
        B, width = indices.shape
        self.n, self.width = n, width
        self.block_l = grad_blocks(1)[0]
        lat, order = torch.sort(indices.reshape(-1).to(torch.int32), stable=True)
        self.lat = lat.contiguous()
        self.order = order
        self.tok = (order // width).to(torch.int32)
        edges = torch.arange(0, triton.cdiv(n, self.block_l) + 1, device=indices.device, dtype=torch.int32)
        self.off = torch.searchsorted(self.lat, edges * self.block_l).to(torch.int32)

    def grad(
        self,
        coef: torch.Tensor,
        src: torch.Tensor,
        out: torch.Tensor,
        bias_out: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """out[l, :] (by out's strides, [n, d] or a [d, n] tensor's transpose) = sum over latent l's pairs of
        coef * src[token]; bias_out[l] = sum of its coef. coef: [B, w] in the code's order. With `weight` (laid
        out as out) and bias_out, also returns weight^T bias_out ([d] fp32) from the same launch."""
        d = src.shape[1]
        c = coef.reshape(-1).float()[self.order].contiguous()
        BL, BP, BD = grad_blocks(d)
        if INTERPRET:
            BD = min(triton.next_power_of_2(d), 256)
        s_on, s_od = out.stride()
        if weight is not None and (bias_out is None or weight.stride() != out.stride()):
            raise ValueError("the weight's product needs bias_out and the weight laid out as out")
        part = torch.empty((triton.cdiv(self.n, BL), d), dtype=torch.float32, device=src.device) if weight is not None else None
        dot_bf16 = src.dtype == torch.bfloat16 and not INTERPRET  # the interpreter's bf16 dot is wrong
        _grad_rows_kernel[(triton.cdiv(self.n, BL), triton.cdiv(d, BD))](
            self.lat,
            self.tok,
            c,
            self.off,
            src,
            out,
            bias_out if bias_out is not None else c,
            weight if weight is not None else src,
            part if part is not None else c,
            self.n,
            d,
            s_on,
            s_od,
            HAS_BIAS=bias_out is not None,
            HAS_PRE=weight is not None,
            DOT_BF16=dot_bf16,
            BLOCK_L=BL,
            BLOCK_P=BP,
            BLOCK_D=BD,
        )
        return part.sum(0) if part is not None else None


# The last code's sorted pairs: the decoder's backward and the encoder's (same code when AuxK is off) share one
# sort. The entry holds the indices tensor itself, so its memory cannot be reused while the entry stands; the
# version counter catches an in-place change.
_LAST_PAIRS: list = []


def sorted_pairs(indices: torch.Tensor, n: int) -> SortedPairs:
    """SortedPairs of `indices`, reused when the same tensor (same storage, shape and version) asks again."""
    key = (indices.data_ptr(), tuple(indices.shape), indices.stride(), indices.dtype, indices.device, indices._version, n)
    if _LAST_PAIRS and _LAST_PAIRS[0][0] == key:
        return _LAST_PAIRS[0][2]
    sp = SortedPairs(indices, n)
    _LAST_PAIRS[:] = [(key, indices, sp)]
    return sp
