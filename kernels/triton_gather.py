"""Triton kernels over the rows a sparse code touches: decode's gather-sum, the values' gradient, and the weight
gradients written once per latent (no fp32 [n, d] buffer, no atomics).

Weight gradients: the B*w (token, latent) pairs of a code are sorted by latent once per step (torch.sort of
B*w integers). The pairs of the latents [l0, l0 + LB) are then one contiguous run, so one program per latent
block and d block accumulates  grad[l, :] = sum over its pairs of coef * src[token, :]  as a product of the
run's one-hot [LB, pairs] matrix with the gathered [pairs, BD] source rows (tensor cores in bf16), and writes
its tile once in the parameter's dtype, with the parameter's strides (so W_enc [d, n] needs no transpose).
The bias gradient (sum of coef per latent) falls out of the same one-hot matrix.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_common import to_storage
from kernels.triton_launches import L2_BUDGET, decode_chunk, decode_sse_blocks, dense_blocks, grad_blocks

INTERPRET = __import__("os").environ.get("TRITON_INTERPRET", "0") == "1"


def _blocks_dense(B: int, d: int) -> tuple[int, int]:
    if INTERPRET:  # few large programs: the interpreter's cost is per program
        return min(triton.next_power_of_2(B), 64), min(triton.next_power_of_2(d), 256)
    return dense_blocks(d)


@triton.jit
def _gather_sum_kernel(val_ptr, idx_ptr, w_ptr, out_ptr, B, width, d, s_wn, s_wd,
                       BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
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
def _gather_dot_kernel(g_ptr, idx_ptr, w_ptr, out_ptr, B, width, d, s_wn, s_wd,
                       BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
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
def _decode_sse_kernel(val_ptr, idx_ptr, w_ptr, bias_ptr, tgt_ptr, xhat_ptr, dy_ptr, gval_ptr, sse_ptr,
                       B, width, d, s_wn, s_wd, chunk,
                       HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr):
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
        w = tl.load(w_ptr + i[:, :, None] * s_wn + dc[None, None, :].to(tl.int64) * s_wd, mask=m3,
                    other=0.0).to(tl.float32)
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


@triton.jit
def _grad_rows_kernel(lat_ptr, tok_ptr, coef_ptr, off_ptr, src_ptr, out_ptr, gb_ptr, w_ptr, part_ptr, n, d, s_on,
                      s_od, HAS_BIAS: tl.constexpr, HAS_PRE: tl.constexpr, DOT_BF16: tl.constexpr,
                      BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
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


def gather_sum(values: torch.Tensor, indices: torch.Tensor, W: torch.Tensor, s_wn: int, s_wd: int, d: int,
               out_dtype: torch.dtype) -> torch.Tensor:
    """[B, d] = sum_j values[:, j] * W[indices[:, j]] (fp32 accumulate, one rounding to out_dtype by torch:
    the interpreter's fp32->bf16 store truncates)."""
    B, width = values.shape
    out = torch.empty((B, d), dtype=torch.float32, device=values.device)
    BB, BD = _blocks_dense(B, d)
    _gather_sum_kernel[(triton.cdiv(B, BB), triton.cdiv(d, BD))](
        values, indices, W, out, B, width, d, s_wn, s_wd, BLOCK_B=BB, BLOCK_D=BD)
    return out.to(out_dtype)


def decode_sse(values: torch.Tensor, indices: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None,
               target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_hat [B, d] in W's dtype, sse () fp32, dY [B, d] in W's dtype, values' gradient [B, w] fp32) for the
    loss sum (x_hat - target)^2, one gather of W's rows (kernel `_decode_sse_kernel`), d cut into chunks whose W
    columns fit in L2 (`decode_chunk`); the chunks' parts of the values' gradient summed here."""
    B, width = indices.shape
    n, d = W.shape
    BW = triton.next_power_of_2(width)
    BB, BD = decode_sse_blocks(width, d, W.element_size()) if not INTERPRET else (min(triton.next_power_of_2(B), 16), 64)
    chunk = decode_chunk(n, d, W.element_size(), BD, B * width, L2_BUDGET)
    chunks = triton.cdiv(d, chunk)
    grid = (chunks * triton.cdiv(B, BB),)
    x_hat = torch.empty((B, d), dtype=W.dtype, device=W.device)
    dy = torch.empty((B, d), dtype=W.dtype, device=W.device)
    gval = torch.empty((chunks, B, width), dtype=torch.float32, device=W.device)
    part = torch.empty(grid[0], dtype=torch.float32, device=W.device)
    _decode_sse_kernel[grid](values, indices, W, bias if bias is not None else W, target, x_hat, dy, gval, part, B,
                             width, d, W.stride(0), W.stride(1), chunk, HAS_BIAS=bias is not None, BLOCK_B=BB,
                             BLOCK_W=BW, BLOCK_D=BD)
    return x_hat, part.sum(), dy, gval[0] if chunks == 1 else gval.sum(0)


def gather_dot(g: torch.Tensor, indices: torch.Tensor, W: torch.Tensor, s_wn: int, s_wd: int) -> torch.Tensor:
    """[B, w] fp32: <g[b], W[indices[b, j]]>, the gradient of a code's values."""
    B, width = indices.shape
    d = g.shape[1]
    out = torch.empty((B, width), dtype=torch.float32, device=g.device)
    BB, BD = _blocks_dense(B, d)
    _gather_dot_kernel[(triton.cdiv(B, BB),)](g, indices, W, out, B, width, d, s_wn, s_wd,
                                              BLOCK_B=BB, BLOCK_D=BD)
    return out


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

    def grad(self, coef: torch.Tensor, src: torch.Tensor, out: torch.Tensor, bias_out: torch.Tensor | None = None,
             weight: torch.Tensor | None = None) -> torch.Tensor | None:
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
        part = torch.empty((triton.cdiv(self.n, BL), d), dtype=torch.float32, device=src.device) \
            if weight is not None else None
        dot_bf16 = src.dtype == torch.bfloat16 and not INTERPRET  # the interpreter's bf16 dot is wrong
        _grad_rows_kernel[(triton.cdiv(self.n, BL), triton.cdiv(d, BD))](
            self.lat, self.tok, c, self.off, src, out, bias_out if bias_out is not None else c,
            weight if weight is not None else src, part if part is not None else c, self.n, d, s_on, s_od,
            HAS_BIAS=bias_out is not None, HAS_PRE=weight is not None, DOT_BF16=dot_bf16, BLOCK_L=BL, BLOCK_P=BP,
            BLOCK_D=BD)
        return part.sum(0) if part is not None else None


# The last code's sorted pairs: the decoder's backward and the encoder's (same code when AuxK is off) share one
# sort. The entry holds the indices tensor itself, so its memory cannot be reused while the entry stands; the
# version counter catches an in-place change.
_LAST_PAIRS: list = []


def sorted_pairs(indices: torch.Tensor, n: int) -> SortedPairs:
    """SortedPairs of `indices`, reused when the same tensor (same storage, shape and version) asks again."""
    key = (indices.data_ptr(), tuple(indices.shape), indices.stride(), indices.dtype, indices.device,
           indices._version, n)
    if _LAST_PAIRS and _LAST_PAIRS[0][0] == key:
        return _LAST_PAIRS[0][2]
    sp = SortedPairs(indices, n)
    _LAST_PAIRS[:] = [(key, indices, sp)]
    return sp
