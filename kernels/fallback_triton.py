"""The one fallback of every top-k selection on Triton: the exact k-th key by 16-way bisection, then compaction.

Each value is mapped to an order-preserving integer key (the fp32 bit pattern with the negative half flipped,
shifted right by the bits the input dtype cannot hold: 16 for bf16, 13 for fp16). Per row, one pass finds the
keys' range, then every pass streams the row once and counts the keys at or above 15 pivots, narrowing the range
16-fold (4 passes for bf16, up to 8 for fp32), all on the device; a compaction pass writes the indices above the
threshold plus the first ties, in column order. Over the batch (BatchTopK) the same bisection runs globally with a
fixed pass count, then the row compaction with each row's share of the ties.

It serves whatever the exact paths cannot: rows whose sub-block lists overflow, rows too short to prune, AuxK's
dead columns (a column mask), and BatchTopK's batches the pruned path declines. The compaction kernel also
keeps the entries above a given value, the threshold rules' (threshold, stat) own path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.blocks import NPIV, p2, select_blocks
from kernels.triton_common import INTERPRET, empty, key_shift, order_key


@triton.jit
def _load_keys(
    pre_ptr, colmask_ptr, rows, rmask, cols, n, stride_b, MODE: tl.constexpr, SHIFT: tl.constexpr, HAS_COLMASK: tl.constexpr
):
    # HAS_COLMASK: a per-column int8 mask (AuxK's dead latents)
    cmask = cols < n
    if HAS_COLMASK:
        cmask = cmask & (tl.load(colmask_ptr + cols, mask=cols < n, other=0) != 0)
    m = rmask[:, None] & cmask[None, :]
    # 64-bit row offsets: B * n passes 2^31 at B = 16384, n = 131072
    x = tl.load(pre_ptr + rows[:, None].to(tl.int64) * stride_b + cols[None, :], mask=m, other=0.0).to(tl.float32)
    key = order_key(x, MODE, SHIFT)
    return tl.where(m, key, -2147483648), m


@triton.jit
def _row_kth_kernel(
    pre_ptr,
    colmask_ptr,
    active_ptr,
    thr_ptr,
    cgt_ptr,
    B,
    n,
    stride_b,
    k,
    MODE: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_COLMASK: tl.constexpr,
    HAS_ACTIVE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NPIV: tl.constexpr,
):
    """Per row: the k-th largest key (thr) and how many keys exceed it (cgt < k). HAS_ACTIVE: only the rows
    flagged in active[] (the others are left alone; a program without one returns at once)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    if HAS_ACTIVE:
        rmask = rmask & (tl.load(active_ptr + rows, mask=rmask, other=0) != 0)
        if tl.max(rmask.to(tl.int32)) == 0:
            return
    lo = tl.full([BLOCK_B], 2147483647, tl.int64)
    hi = tl.full([BLOCK_B], -2147483648, tl.int64)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        key, m = _load_keys(pre_ptr, colmask_ptr, rows, rmask, cols, n, stride_b, MODE, SHIFT, HAS_COLMASK)
        lo = tl.minimum(lo, tl.min(tl.where(m, key, 2147483647), axis=1).to(tl.int64))
        hi = tl.maximum(hi, tl.max(key, axis=1).to(tl.int64))
    hi = hi + 1
    lo = tl.where(rmask, lo, 0)
    hi = tl.where(rmask, hi, 1)
    cnt_hi = tl.zeros([BLOCK_B], tl.int32)
    jj = tl.arange(0, NPIV)
    while tl.max(hi - lo) > 1:
        step = (hi - lo + NPIV - 1) // NPIV
        piv = lo[:, None] + jj[None, :].to(tl.int64) * step[:, None]  # [BLOCK_B, NPIV]
        counts = tl.zeros([BLOCK_B, NPIV], tl.int32)
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            key, m = _load_keys(pre_ptr, colmask_ptr, rows, rmask, cols, n, stride_b, MODE, SHIFT, HAS_COLMASK)
            ge = key.to(tl.int64)[:, :, None] >= piv[:, None, :]
            counts += tl.sum(ge.to(tl.int32), axis=1)
        # counts fall with j and counts[0] >= k: the last pivot still holding k keys bounds the k-th from below
        ok = (counts >= k) & (piv < hi[:, None])
        jstar = tl.sum(ok.to(tl.int32), axis=1) - 1
        jstar = tl.maximum(jstar, 0)
        new_lo = lo + jstar.to(tl.int64) * step
        new_hi = tl.minimum(hi, new_lo + step)
        nxt = tl.sum(tl.where(jj[None, :] == (jstar[:, None] + 1), counts, 0), axis=1)
        cnt_hi = tl.where(new_hi < hi, nxt, cnt_hi)
        lo = new_lo
        hi = new_hi
    tl.store(thr_ptr + rows, lo.to(tl.int32), mask=rmask)
    tl.store(cgt_ptr + rows, cnt_hi, mask=rmask)


@triton.jit
def _compact_kernel(
    pre_ptr,
    colmask_ptr,
    active_ptr,
    thr_ptr,
    cgt_ptr,
    budget_ptr,
    thrv_ptr,
    thr_sb,
    thr_sn,
    idx_ptr,
    ngt_ptr,
    neq_ptr,
    B,
    n,
    stride_b,
    width,
    MODE: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_COLMASK: tl.constexpr,
    HAS_ACTIVE: tl.constexpr,
    BY_VALUE: tl.constexpr,
    STORE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Write each row's kept column indices into idx[b, :count] (order of columns; ties at the key threshold
    up to a per-row budget). BY_VALUE: keep x > thrv[b * thr_sb + col * thr_sn] instead (threshold, stat).
    STORE=False only counts (ngt: kept above threshold, neq: ties), for variable-width rules.
    HAS_ACTIVE: only the rows flagged in active[]."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    if HAS_ACTIVE:
        rmask = rmask & (tl.load(active_ptr + rows, mask=rmask, other=0) != 0)
        if tl.max(rmask.to(tl.int32)) == 0:
            return
    if not BY_VALUE:
        thr = tl.load(thr_ptr + rows, mask=rmask, other=0)
        if STORE:
            cgt = tl.load(cgt_ptr + rows, mask=rmask, other=0)
            budget = tl.load(budget_ptr + rows, mask=rmask, other=0)
    n_gt = tl.zeros([BLOCK_B], tl.int32)
    n_eq = tl.zeros([BLOCK_B], tl.int32)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        if BY_VALUE:
            cmask = cols < n
            if HAS_COLMASK:
                cmask = cmask & (tl.load(colmask_ptr + cols, mask=cols < n, other=0) != 0)
            m = rmask[:, None] & cmask[None, :]
            x = tl.load(pre_ptr + rows[:, None].to(tl.int64) * stride_b + cols[None, :], mask=m, other=0.0)
            x = x.to(tl.float32)
            t = tl.load(thrv_ptr + rows[:, None] * thr_sb + cols[None, :] * thr_sn, mask=m, other=0.0)
            gt = m & (x > t.to(tl.float32))
            eq = gt & (cols[None, :] < 0)
        else:
            key, m = _load_keys(pre_ptr, colmask_ptr, rows, rmask, cols, n, stride_b, MODE, SHIFT, HAS_COLMASK)
            gt = m & (key > thr[:, None])
            eq = m & (key == thr[:, None])
        gti = gt.to(tl.int32)
        eqi = eq.to(tl.int32)
        if STORE:
            pos_gt = n_gt[:, None] + tl.cumsum(gti, axis=1) - 1
            if BY_VALUE:
                slot = pos_gt
                keep = gt
            else:
                r_eq = n_eq[:, None] + tl.cumsum(eqi, axis=1) - 1
                take_eq = eq & (r_eq < budget[:, None])
                slot = tl.where(gt, pos_gt, cgt[:, None] + r_eq)
                keep = gt | take_eq
            keep = keep & (slot < width)
            colv = (cols[None, :] + rows[:, None] * 0).to(tl.int64)
            tl.store(idx_ptr + rows[:, None].to(tl.int64) * width + slot, colv, mask=keep)
        n_gt += tl.sum(gti, axis=1)
        n_eq += tl.sum(eqi, axis=1)
    if not STORE:
        tl.store(ngt_ptr + rows, n_gt, mask=rmask)
        tl.store(neq_ptr + rows, n_eq, mask=rmask)


@triton.jit
def _count_ge_kernel(
    pre_ptr,
    piv_ptr,
    counts_ptr,
    B,
    n,
    stride_b,
    SHIFT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NPIV: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    jj = tl.arange(0, NPIV)
    piv = tl.load(piv_ptr + jj)
    counts = tl.zeros([BLOCK_B, NPIV], tl.int32)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        key, m = _load_keys(pre_ptr, pre_ptr, rows, rmask, cols, n, stride_b, 2, SHIFT, False)
        ge = key.to(tl.int64)[:, :, None] >= piv[None, None, :]
        counts += tl.sum(ge.to(tl.int32), axis=1)
    # int64 totals (B * n can pass 2^31); relaxed: the counts are read only after the launch completes
    tl.atomic_add(counts_ptr + jj, tl.sum(counts, axis=0).to(tl.int64), sem="relaxed")


def _blocks(B: int, n: int) -> tuple[int, int, int]:
    if INTERPRET:  # few large programs: the interpreter's cost is per program
        return min(p2(B), 64), min(p2(n), 256), 4
    return select_blocks(n)


def row_kth(
    pre: torch.Tensor, k: int, mode: int, colmask: torch.Tensor | None = None, active: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(thr, cgt) [B] int32: each row's k-th largest key by MODE and the count of keys above it."""
    B, n = pre.shape
    BB, BN, nw = _blocks(B, n)
    thr = empty((B,), torch.int32, pre.device)
    cgt = empty((B,), torch.int32, pre.device)
    _row_kth_kernel[(triton.cdiv(B, BB),)](
        pre,
        colmask if colmask is not None else thr,
        active if active is not None else thr,
        thr,
        cgt,
        B,
        n,
        pre.stride(0),
        k,
        MODE=mode,
        SHIFT=key_shift(pre.dtype),
        HAS_COLMASK=colmask is not None,
        HAS_ACTIVE=active is not None,
        BLOCK_B=BB,
        BLOCK_N=BN,
        NPIV=NPIV,
        num_warps=nw,
    )
    return thr, cgt


def compact(
    pre, mode, colmask, thr, cgt, budget, width, by_value=False, thrv=None, thr_strides=(0, 0), store=True, active=None, out=None
):
    """The compaction pass: (idx [B, width],) of each row's kept columns, or (ngt, neq) [B] counts with
    store=False (see _compact_kernel)."""
    B, n = pre.shape
    BB, BN, nw = _blocks(B, n)
    dev = pre.device
    dummy = torch.zeros(1, dtype=torch.int32, device=dev)
    idx = (out if out is not None else empty((B, max(width, 1)), torch.int64, dev)) if store else dummy
    ngt = dummy if store else empty((B,), torch.int32, dev)
    neq = dummy if store else empty((B,), torch.int32, dev)
    _compact_kernel[(triton.cdiv(B, BB),)](
        pre,
        colmask if colmask is not None else dummy,
        active if active is not None else dummy,
        thr if thr is not None else dummy,
        cgt if cgt is not None else dummy,
        budget if budget is not None else dummy,
        thrv if thrv is not None else pre,
        thr_strides[0],
        thr_strides[1],
        idx,
        ngt,
        neq,
        B,
        n,
        pre.stride(0),
        max(width, 1),
        MODE=mode,
        SHIFT=key_shift(pre.dtype),
        HAS_COLMASK=colmask is not None,
        HAS_ACTIVE=active is not None,
        BY_VALUE=by_value,
        STORE=store,
        BLOCK_B=BB,
        BLOCK_N=BN,
        num_warps=nw,
    )
    return (idx,) if store else (ngt, neq)


def bisect_rows(
    pre: torch.Tensor,
    k: int,
    mode: int,
    colmask: torch.Tensor | None = None,
    active: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each row's top k column indices by key MODE ([B, k], column order; ties to the lowest columns), among the
    columns `colmask` keeps when given (rows with fewer leave the rest of their slots unwritten); into `out` and
    only for the rows flagged in `active` when given. No host sync."""
    thr, cgt = row_kth(pre, k, mode, colmask, active)
    budget = k - cgt
    (idx,) = compact(pre, mode, colmask, thr, cgt, budget, k, active=active, out=out)
    return idx


def bisect_batch(p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [B, width], count [B]) of the top k*B entries of relu(p) over the batch, each row's kept columns in
    column order; ties at the threshold in row, then column order. A global 16-way bisection on the device (a
    fixed number of count launches: enough to narrow the key range to one key), then the row compaction with
    the global threshold and each row's share of the ties. One host read: the code's width."""
    B, n = p.shape
    total = min(k * B, B * n)
    shift = key_shift(p.dtype)
    BB, BN, nw = _blocks(B, n)
    dev = p.device
    # keys of relu'd values lie in [0, key(max)]: 31 - shift bits, narrowed 4 bits per pass
    mx = p.max().float().clamp_min(0).reshape(1)
    lo = torch.zeros((), dtype=torch.int64, device=dev)
    hi = (mx.view(torch.int32) >> shift).to(torch.int64)[0] + 1
    jj = torch.arange(NPIV, device=dev)
    counts = torch.zeros(NPIV, dtype=torch.int64, device=dev)
    for _ in range(-(-(31 - shift) // 4)):
        step = ((hi - lo + NPIV - 1) // NPIV).clamp_min(1)
        piv = lo + jj * step
        counts.zero_()
        _count_ge_kernel[(triton.cdiv(B, BB),)](
            p, piv, counts, B, n, p.stride(0), SHIFT=shift, BLOCK_B=BB, BLOCK_N=BN, NPIV=NPIV, num_warps=nw
        )
        # counts fall with j: the last pivot still holding `total` keys bounds the threshold from below
        j = (((counts >= total) & (piv < hi)).sum() - 1).clamp_min(0)
        lo, hi = lo + j * step, torch.minimum(hi, lo + (j + 1) * step)
    thr = lo.to(torch.int32).expand(B).contiguous()
    ngt, neq = compact(p, 2, None, thr, None, None, 1, store=False)
    # threshold key 0 (fewer than k*B positives): every positive, no zero-valued ties
    before = torch.cumsum(neq, 0) - neq
    budget = (total - ngt.sum() - before).clamp(min=0).minimum(neq)
    budget = torch.where(lo == 0, torch.zeros_like(budget), budget).to(torch.int32)
    count = ngt + budget
    width = max(int(count.max()), 1)  # the output's shape: the one host read
    (idx,) = compact(p, 2, None, thr, ngt, budget, width)
    return idx, count
