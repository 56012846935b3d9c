"""Decode on Triton: the gather-sum of the decoder rows a code touches, the values' gradient as one dot per
entry, and the decode fused with the squared error (one gather of W_dec serves forward and backward).

W_dec's gradient is written once per latent from the latent-sorted (token, latent) pairs (weight_grad_triton):
no dense [B, n] gradient, no fp32 [n, d] buffer, no atomics. The encoder's backward reuses the gather-sum over
W_enc's columns (its input gradient).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.blocks import L2_BUDGET, decode_chunk, decode_sse_blocks, dense_blocks
from kernels.code import SparseCode
from kernels.triton_common import INTERPRET, to_storage
from kernels.weight_grad_triton import sorted_pairs


def _blocks_dense(B: int, d: int) -> tuple[int, int]:
    if INTERPRET:  # few large programs: the interpreter's cost is per program
        return min(triton.next_power_of_2(B), 64), min(triton.next_power_of_2(d), 256)
    return dense_blocks(d)


@triton.jit
def _gather_sum_kernel(val_ptr, idx_ptr, w_ptr, out_ptr, B, width, d, s_wn, s_wd, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, :] = sum_j val[b, j] * W[idx[b, j], :] (W addressed by strides)."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    dc = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < B
    m = rmask[:, None] & (dc < d)[None, :]
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    for j in range(0, width):
        v = tl.load(val_ptr + rows * width + j, mask=rmask, other=0.0).to(tl.float32)
        i = tl.load(idx_ptr + rows * width + j, mask=rmask, other=0).to(tl.int64)
        w = tl.load(w_ptr + i[:, None] * s_wn + dc[None, :].to(tl.int64) * s_wd, mask=m, other=0.0)
        acc += v[:, None] * w.to(tl.float32)
    tl.store(out_ptr + rows[:, None] * d + dc[None, :], acc, mask=m)


@triton.jit
def _gather_dot_kernel(g_ptr, idx_ptr, w_ptr, out_ptr, B, width, d, s_wn, s_wd, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, j] = <g[b, :], W[idx[b, j], :]>: each program owns whole rows, so every output is written once."""
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    rmask = rows < B
    for j in range(0, width):
        i = tl.load(idx_ptr + rows * width + j, mask=rmask, other=0).to(tl.int64)
        part = tl.zeros([BLOCK_B], tl.float32)
        for start in range(0, d, BLOCK_D):
            dc = start + tl.arange(0, BLOCK_D)
            m = rmask[:, None] & (dc < d)[None, :]
            g = tl.load(g_ptr + rows[:, None] * d + dc[None, :], mask=m, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + i[:, None] * s_wn + dc[None, :].to(tl.int64) * s_wd, mask=m, other=0.0)
            part += tl.sum(g * w.to(tl.float32), axis=1)
        tl.store(out_ptr + rows * width + j, part, mask=rmask)


@triton.jit
def _decode_sse_kernel(
    val_ptr,
    idx_ptr,
    w_ptr,
    bias_ptr,
    tgt_ptr,
    xhat_ptr,
    dy_ptr,
    gval_ptr,
    sse_ptr,
    B,
    width,
    d,
    s_wn,
    s_wd,
    chunk,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Decode, squared error and the values' gradient with each gathered W element read once, over the columns
    [c * chunk, (c + 1) * chunk) of one d chunk c: per d block, x_hat = sum_j val[b, j] W[idx[b, j]] (+ bias)
    rounded to x_hat's dtype, e = x_hat - target, dY = 2e rounded to dY's dtype (what autograd would hand the
    decoder), the chunk's part of gval[b, j] = <dY[b], W[idx[b, j]]> into gval[c], and the program's sum of e^2
    into sse[pid] (fp32). Programs run chunk by chunk (pid = c * token blocks + token block), so the W columns of
    one chunk stay in L2 while every token gathers from them: W is read from DRAM about once."""
    pid = tl.program_id(0)
    ntb = tl.cdiv(B, BLOCK_B)
    c = pid // ntb
    rows = ((pid % ntb) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    rmask = rows < B
    ws = tl.arange(0, BLOCK_W)
    m2 = rmask[:, None] & (ws < width)[None, :]
    v = tl.load(val_ptr + rows[:, None] * width + ws[None, :], mask=m2, other=0.0).to(tl.float32)
    i = tl.load(idx_ptr + rows[:, None] * width + ws[None, :], mask=m2, other=0).to(tl.int64)
    gv = tl.zeros([BLOCK_B, BLOCK_W], tl.float32)
    sse = tl.zeros([BLOCK_B], tl.float32)
    d_end = tl.minimum((c + 1) * chunk, d)
    for d0 in range(c * chunk, d_end, BLOCK_D):
        dc = d0 + tl.arange(0, BLOCK_D)
        dm = dc < d_end
        m3 = m2[:, :, None] & dm[None, None, :]
        w = tl.load(w_ptr + i[:, :, None] * s_wn + dc[None, None, :].to(tl.int64) * s_wd, mask=m3, other=0.0).to(tl.float32)
        xh = tl.sum(v[:, :, None] * w, axis=1)
        if HAS_BIAS:
            xh += tl.load(bias_ptr + dc, mask=dm, other=0.0).to(tl.float32)[None, :]
        md = rmask[:, None] & dm[None, :]
        xh = to_storage(xh, xhat_ptr.dtype.element_ty)
        tl.store(xhat_ptr + rows[:, None] * d + dc[None, :], xh, mask=md)
        e = xh.to(tl.float32) - tl.load(tgt_ptr + rows[:, None] * d + dc[None, :], mask=md, other=0.0).to(tl.float32)
        e = tl.where(md, e, 0.0)
        dy = to_storage(2.0 * e, dy_ptr.dtype.element_ty)
        tl.store(dy_ptr + rows[:, None] * d + dc[None, :], dy, mask=md)
        gv += tl.sum(dy.to(tl.float32)[:, None, :] * w, axis=2)
        sse += tl.sum(e * e, axis=1)
    tl.store(gval_ptr + c.to(tl.int64) * B * width + rows[:, None] * width + ws[None, :], gv, mask=m2)
    tl.store(sse_ptr + pid, tl.sum(sse, axis=0))


def gather_sum(
    values: torch.Tensor, indices: torch.Tensor, W: torch.Tensor, s_wn: int, s_wd: int, d: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """[B, d] = sum_j values[:, j] * W[indices[:, j]] (fp32 accumulate, one rounding to out_dtype by torch:
    the interpreter's fp32->bf16 store truncates)."""
    B, width = values.shape
    out = torch.empty((B, d), dtype=torch.float32, device=values.device)
    BB, BD = _blocks_dense(B, d)
    _gather_sum_kernel[(triton.cdiv(B, BB), triton.cdiv(d, BD))](
        values, indices, W, out, B, width, d, s_wn, s_wd, BLOCK_B=BB, BLOCK_D=BD
    )
    return out.to(out_dtype)


def _sse_blocks(B: int, width: int, W: torch.Tensor) -> tuple[int, int]:
    if INTERPRET:
        return min(triton.next_power_of_2(B), 16), 64
    return decode_sse_blocks(width, W.shape[1], W.element_size())


def chunk_for(B: int, width: int, W: torch.Tensor) -> int:
    """Columns of W per d chunk of the fused decode of a [B, width] code (`decode_chunk`)."""
    n, d = W.shape
    return decode_chunk(n, d, W.element_size(), _sse_blocks(B, width, W)[1], B * width, L2_BUDGET)


def decode_sse_parts(
    values: torch.Tensor,
    indices: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_hat [B, d] in W's dtype, sse () fp32, dY [B, d] in W's dtype, values' gradient [B, w] fp32) for the
    loss sum (x_hat - target)^2, one gather of W's rows (kernel `_decode_sse_kernel`), d cut into chunks whose W
    columns fit in L2 (`chunk_for`, unless `chunk` is given); the chunks' parts of the values' gradient summed
    here."""
    B, width = indices.shape
    d = W.shape[1]
    BW = triton.next_power_of_2(width)
    BB, BD = _sse_blocks(B, width, W)
    chunk = chunk or chunk_for(B, width, W)
    chunks = triton.cdiv(d, chunk)
    grid = (chunks * triton.cdiv(B, BB),)
    x_hat = torch.empty((B, d), dtype=W.dtype, device=W.device)
    dy = torch.empty((B, d), dtype=W.dtype, device=W.device)
    gval = torch.empty((chunks, B, width), dtype=torch.float32, device=W.device)
    part = torch.empty(grid[0], dtype=torch.float32, device=W.device)
    _decode_sse_kernel[grid](
        values,
        indices,
        W,
        bias if bias is not None else W,
        target,
        x_hat,
        dy,
        gval,
        part,
        B,
        width,
        d,
        W.stride(0),
        W.stride(1),
        chunk,
        HAS_BIAS=bias is not None,
        BLOCK_B=BB,
        BLOCK_W=BW,
        BLOCK_D=BD,
    )
    return x_hat, part.sum(), dy, gval[0] if chunks == 1 else gval.sum(0)


def gather_dot(g: torch.Tensor, indices: torch.Tensor, W: torch.Tensor, s_wn: int, s_wd: int) -> torch.Tensor:
    """[B, w] fp32: <g[b], W[indices[b, j]]>, the gradient of a code's values."""
    B, width = indices.shape
    d = g.shape[1]
    out = torch.empty((B, width), dtype=torch.float32, device=g.device)
    BB, BD = _blocks_dense(B, d)
    _gather_dot_kernel[(triton.cdiv(B, BB),)](g, indices, W, out, B, width, d, s_wn, s_wd, BLOCK_B=BB, BLOCK_D=BD)
    return out


class DecodeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, W_dec):
        values = values.contiguous()
        indices = indices.contiguous()
        ctx.save_for_backward(values, indices, W_dec)
        return gather_sum(values, indices, W_dec, W_dec.stride(0), W_dec.stride(1), W_dec.shape[1], W_dec.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, W_dec = ctx.saved_tensors
        want_v, _, want_w = ctx.needs_input_grad
        g = grad_out.contiguous()
        gval = gW = None
        if want_v:  # <grad_out[b], W_dec[idx[b, j]]>, each written once
            gval = gather_dot(g, indices, W_dec, W_dec.stride(0), W_dec.stride(1)).to(values.dtype)
        if want_w:  # W_dec's rows that fired, each written once in W_dec's dtype (zeros elsewhere)
            gW = torch.empty_like(W_dec)
            sorted_pairs(indices, W_dec.shape[0]).grad(values, g, gW)
        return gval, None, gW


def decode(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """x_hat = code @ W_dec (+ b_dec) as a gather-sum; the backward writes each fired row of W_dec once."""
    out = DecodeFn.apply(code.values, code.indices.long(), W_dec)
    return out if b_dec is None else out + b_dec


class DecodeSSEFn(torch.autograd.Function):
    """(x_hat, sum (x_hat - target)^2) with one gather of W_dec's rows: the forward also computes what the loss's
    backward needs (dY = 2 (x_hat - target) and the values' gradient), so the backward gathers no W_dec row."""

    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec, target, chunk=None):
        ctx.set_materialize_grads(False)
        values, indices, target = values.contiguous(), indices.contiguous(), target.contiguous()
        x_hat, sse, dy, gval = decode_sse_parts(values, indices, W_dec, b_dec, target, chunk)
        ctx.save_for_backward(values, indices, W_dec, dy, gval)
        return x_hat, sse

    @staticmethod
    def backward(ctx, g_xhat, g_sse):
        values, indices, W_dec, dy, gval = ctx.saved_tensors
        want_v, _, want_w, want_b, want_t = ctx.needs_input_grad[:5]
        if g_sse is None and g_xhat is None:
            return None, None, None, None, None, None
        if g_xhat is None:  # the usual case: only the loss reaches back; dY scaled by its scalar gradient
            src, coef = dy, values.float() * g_sse
            g_vals = gval * g_sse if want_v else None
        else:  # x_hat feeds something else too: one combined output gradient, gathered again
            src = g_xhat.float() + (dy.float() * g_sse if g_sse is not None else 0.0)
            src, coef = src.to(W_dec.dtype).contiguous(), values.float()
            g_vals = gather_dot(src, indices, W_dec, W_dec.stride(0), W_dec.stride(1)) if want_v else None
        gW = None
        if want_w:
            gW = torch.empty_like(W_dec)
            sorted_pairs(indices, W_dec.shape[0]).grad(coef, src, gW)
        scale = g_sse if g_xhat is None else 1.0
        g_b = (src.float().sum(0) * scale).to(W_dec.dtype) if want_b else None
        g_t = None
        if want_t:
            g_t = -(dy.float() * g_sse) if g_sse is not None else torch.zeros_like(dy, dtype=torch.float32)
        return (g_vals.to(values.dtype) if g_vals is not None else None), None, gW, g_b, g_t, None


def decode_sse(
    code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None, target: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, sum of (x_hat - target)^2 in fp32) with one gather of W_dec's rows for forward and backward; d in
    chunks of `chunk` columns when given (the first-use check runs a slice as the whole batch would run)."""
    return DecodeSSEFn.apply(code.values, code.indices.long(), W_dec, b_dec, target, chunk)
