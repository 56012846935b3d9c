"""Triton kernels behind kernels.select / decode / encode (imported lazily: CUDA, or tests under TRITON_INTERPRET=1).

Selection never sorts the [B, n] pre-activations. Each value is mapped to an order-preserving integer key
(the fp32 bit pattern with the negative half flipped, shifted right by the bits the input dtype cannot hold:
16 for bf16, 13 for fp16), and the k-th largest key of each row is found by a 16-way bisection: every pass
streams the row once and counts the keys at or above 15 pivots, narrowing the key range 16-fold (4 passes
for bf16, up to 8 for fp32, after one min/max pass). A compaction pass then writes the indices above the
threshold plus the first ties, and only the [B, k] result is ordered (by torch, k values per row).

Decode, its backward and the encoder's backward run on the rows a code touches (kernels/triton_gather.py): a
gather-sum forward, the values' gradient as one dot per entry, and the weight gradients written once per latent
from the latent-sorted (token, latent) pairs: no dense [B, n] gradient, no fp32 [n, d] buffer, no atomics.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
import triton
import triton.language as tl

from kernels import triton_batch as batch
from kernels import triton_tiles as tiles
from kernels.code import SparseCode
from kernels.triton_common import empty as _empty
from kernels.triton_common import key_shift as _shift
from kernels.triton_common import order_key
from kernels.triton_gather import decode_sse, gather_dot, gather_sum, sorted_pairs
from kernels.triton_launches import (
    PRUNE_MIN_N,
    batch_prune_fits,
    candidate_width,
    select_blocks,
    submax_width,
    tile_select_fits,
)
from kernels.triton_matmul import matmul_with_maxima

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
NPIV = 16  # bisection fan-out per pass

_I32_MIN = -2147483648
_I32_MAX = 2147483647


def _p2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


# ----------------------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _load_keys(pre_ptr, colmask_ptr, rows, rmask, cols, n, stride_b,
               MODE: tl.constexpr, SHIFT: tl.constexpr, HAS_COLMASK: tl.constexpr):
    # HAS_COLMASK: 0 none, 1 a per-column int8 mask (AuxK's dead latents), 2 a per-row int32 length
    cmask = cols < n
    if HAS_COLMASK == 1:
        cmask = cmask & (tl.load(colmask_ptr + cols, mask=cols < n, other=0) != 0)
    m = rmask[:, None] & cmask[None, :]
    if HAS_COLMASK == 2:
        rl = tl.load(colmask_ptr + rows, mask=rmask, other=0)
        m = m & (cols[None, :] < rl[:, None])
    # 64-bit row offsets: B * n passes 2^31 at B = 16384, n = 131072
    x = tl.load(pre_ptr + rows[:, None].to(tl.int64) * stride_b + cols[None, :], mask=m, other=0.0).to(tl.float32)
    key = order_key(x, MODE, SHIFT)
    return tl.where(m, key, -2147483648), m


@triton.jit
def _row_kth_kernel(pre_ptr, colmask_ptr, active_ptr, thr_ptr, cgt_ptr, B, n, stride_b, k,
                    MODE: tl.constexpr, SHIFT: tl.constexpr, HAS_COLMASK: tl.constexpr, HAS_ACTIVE: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, NPIV: tl.constexpr):
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
            key, m = _load_keys(pre_ptr, colmask_ptr, rows, rmask, cols, n, stride_b, MODE, SHIFT,
                                HAS_COLMASK)
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
def _load_values(base, colmask_ptr, rmask, cols, n, MODE: tl.constexpr, HAS_COLMASK: tl.constexpr):
    """fp32 values (|x| for MODE 1) of a [rows, cols] tile, 0 where masked out (AuxK: live columns), and the mask."""
    cmask = cols < n
    if HAS_COLMASK:
        cmask = cmask & (tl.load(colmask_ptr + cols, mask=cols < n, other=0) != 0)
    m = rmask[:, None] & cmask[None, :]
    x = tl.load(base + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if MODE == 1:
        x = tl.abs(x)
    return x, m


@triton.jit
def _candidates_kernel(pre_ptr, colmask_ptr, z_ptr, cand_ptr, cnt_ptr, B, n, stride_b, width,
                       MODE: tl.constexpr, HAS_COLMASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per row: mean and std of the (|x| for MODE 1) values, then every column with x >= mean + z * std (z
    carried from the previous call) into cand[b, :width] and its count (which may pass width) into cnt[b].
    Two reads and a float compare per element; the slot cumsum runs only in blocks that hold a candidate."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    base = pre_ptr + rows[:, None].to(tl.int64) * stride_b  # 64-bit: B * n passes 2^31 at the largest sizes
    s1 = tl.zeros([BLOCK_B], tl.float32)
    s2 = tl.zeros([BLOCK_B], tl.float32)
    cnt = tl.zeros([BLOCK_B], tl.float32)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x, m = _load_values(base, colmask_ptr, rmask, cols, n, MODE, HAS_COLMASK)
        s1 += tl.sum(x, axis=1)
        s2 += tl.sum(x * x, axis=1)
        cnt += tl.sum(m.to(tl.float32), axis=1)
    mean = s1 / tl.maximum(cnt, 1.0)
    std = tl.sqrt(tl.maximum(s2 / tl.maximum(cnt, 1.0) - mean * mean, 0.0))
    thr = mean + std * tl.load(z_ptr)
    n_c = tl.zeros([BLOCK_B], tl.int32)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x, m = _load_values(base, colmask_ptr, rmask, cols, n, MODE, HAS_COLMASK)
        hit = (m & (x >= thr[:, None])).to(tl.int32)
        if tl.max(tl.max(hit, axis=1), axis=0) > 0:
            slot = n_c[:, None] + tl.cumsum(hit, axis=1) - 1
            colv = (cols[None, :] + rows[:, None] * 0).to(tl.int64)
            tl.store(cand_ptr + rows[:, None].to(tl.int64) * width + slot, colv, mask=(hit != 0) & (slot < width))
            n_c += tl.sum(hit, axis=1)
    tl.store(cnt_ptr + rows, n_c, mask=rmask)


@triton.jit
def _compact_kernel(pre_ptr, colmask_ptr, active_ptr, thr_ptr, cgt_ptr, budget_ptr, thrv_ptr, thr_sb, thr_sn,
                    idx_ptr, ngt_ptr, neq_ptr, B, n, stride_b, width,
                    MODE: tl.constexpr, SHIFT: tl.constexpr, HAS_COLMASK: tl.constexpr, HAS_ACTIVE: tl.constexpr,
                    BY_VALUE: tl.constexpr, STORE: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
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
            if HAS_COLMASK == 1:
                cmask = cmask & (tl.load(colmask_ptr + cols, mask=cols < n, other=0) != 0)
            m = rmask[:, None] & cmask[None, :]
            x = tl.load(pre_ptr + rows[:, None].to(tl.int64) * stride_b + cols[None, :], mask=m, other=0.0)
            x = x.to(tl.float32)
            t = tl.load(thrv_ptr + rows[:, None] * thr_sb + cols[None, :] * thr_sn, mask=m, other=0.0)
            gt = m & (x > t.to(tl.float32))
            eq = gt & (cols[None, :] < 0)
        else:
            key, m = _load_keys(pre_ptr, colmask_ptr, rows, rmask, cols, n, stride_b, MODE, SHIFT,
                                HAS_COLMASK)
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


def _blocks_select(B: int, n: int) -> tuple[int, int, int]:
    if INTERPRET:  # few large programs: the interpreter's cost is per program
        return min(_p2(B), 64), min(_p2(n), 256), 4
    return select_blocks(n)


def _check_kernel_input(pre: torch.Tensor) -> torch.Tensor:
    if pre.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"Triton select takes float32, bfloat16 or float16 pre-activations, got {pre.dtype}")
    return pre.contiguous()


def _masking(colmask, rowlen) -> tuple[torch.Tensor | None, int]:
    if rowlen is not None:
        return rowlen, 2
    return colmask, int(colmask is not None)


def _row_kth(pre: torch.Tensor, k: int, mode: int, colmask: torch.Tensor | None, rowlen=None, active=None):
    B, n = pre.shape
    BB, BN, nw = _blocks_select(B, n)
    thr = _empty((B,), torch.int32, pre.device)
    cgt = _empty((B,), torch.int32, pre.device)
    cm, masking = _masking(colmask, rowlen)
    _row_kth_kernel[(triton.cdiv(B, BB),)](
        pre, cm if cm is not None else thr, active if active is not None else thr, thr, cgt, B, n, pre.stride(0),
        k, MODE=mode, SHIFT=_shift(pre.dtype), HAS_COLMASK=masking, HAS_ACTIVE=active is not None, BLOCK_B=BB,
        BLOCK_N=BN, NPIV=NPIV, num_warps=nw)
    return thr, cgt


def _compact(pre, mode, colmask, thr, cgt, budget, width, by_value=False, thrv=None, thr_strides=(0, 0),
             store=True, rowlen=None, active=None, out=None):
    colmask, masking = _masking(colmask, rowlen)
    B, n = pre.shape
    BB, BN, nw = _blocks_select(B, n)
    dev = pre.device
    dummy = torch.zeros(1, dtype=torch.int32, device=dev)
    idx = (out if out is not None else _empty((B, max(width, 1)), torch.int64, dev)) if store else dummy
    ngt = dummy if store else _empty((B,), torch.int32, dev)
    neq = dummy if store else _empty((B,), torch.int32, dev)
    _compact_kernel[(triton.cdiv(B, BB),)](
        pre, colmask if colmask is not None else dummy, active if active is not None else dummy,
        thr if thr is not None else dummy, cgt if cgt is not None else dummy,
        budget if budget is not None else dummy, thrv if thrv is not None else pre,
        thr_strides[0], thr_strides[1], idx, ngt, neq, B, n, pre.stride(0), max(width, 1),
        MODE=mode, SHIFT=_shift(pre.dtype), HAS_COLMASK=masking, HAS_ACTIVE=active is not None, BY_VALUE=by_value,
        STORE=store, BLOCK_B=BB, BLOCK_N=BN, num_warps=nw)
    return (idx,) if store else (ngt, neq)


def _finish(pre: torch.Tensor, idx: torch.Tensor, count: torch.Tensor | None, post: str) -> SparseCode:
    """Values from pre at idx (differentiable through torch), padding zeroed, rows ordered by value."""
    width = idx.shape[1]
    if count is not None:
        valid = torch.arange(width, device=idx.device)[None, :] < count[:, None].long()
        idx = torch.where(valid, idx, torch.zeros_like(idx))
    raw = pre.gather(1, idx)
    vals = raw.relu() if post == "relu" else raw
    if count is not None:
        vals = torch.where(valid, vals, torch.zeros_like(vals))
    with torch.no_grad():  # order by the raw value (as torch.topk does), by magnitude for "abs"
        score = raw.detach().float().abs() if post == "abs" else raw.detach().float()
        if count is not None:
            score = torch.where(valid, score, torch.full_like(score, -math.inf))
        order = score.argsort(dim=1, descending=True, stable=True)
    return SparseCode(vals.gather(1, order), idx.gather(1, order))


CAND = None  # candidate-buffer width override (tests force the fallback with a tiny one)
# the carried candidate threshold, in standard deviations above each row's mean, per (n, k, mode, dtype, masked):
# a device scalar, updated after every call so that about TARGET * k columns pass it in most rows
_CARRIED: dict = {}
TARGET = 2.0


def _z(q: torch.Tensor) -> torch.Tensor:
    """Standard-normal quantile of a device tensor."""
    return torch.special.ndtri(q.double().clamp(1e-12, 1 - 1e-12)).float()


def _carried_z(key: tuple, k: int, n_eff: torch.Tensor) -> torch.Tensor:
    if key not in _CARRIED:  # first call: the Gaussian quantile of 2 * TARGET * k columns
        _CARRIED[key] = _z(1.0 - (2 * TARGET * k / n_eff.double()).clamp(max=1.0)).reshape(1)
    return _CARRIED[key]


def _update_z(key: tuple, z: torch.Tensor, cnt: torch.Tensor, k: int, n_eff: torch.Tensor) -> None:
    """Move z so that the 10% quantile of the candidate counts lands on TARGET * k (Gaussian-calibrated step),
    all on the device: rows with fewer than k candidates (and rows over the buffer) take the fallback."""
    q10 = torch.quantile(cnt.float(), 0.1).clamp_min(0.5)
    n_eff = n_eff.double().clamp_min(1)
    step = _z(1.0 - q10 / n_eff) - _z(1.0 - (TARGET * k / n_eff).clamp(max=1.0))
    _CARRIED[key] = (z - step.clamp(-2.0, 2.0)).reshape(1)


def _bisect_indices(pre, k, mode, colmask=None, rowlen=None, active=None, out=None):
    """v1: exact k-th key by 16-way bisection (one read per pass), then compaction: [B, k] columns (into `out`
    and only for the rows flagged in `active` when given)."""
    thr, cgt = _row_kth(pre, k, mode, colmask, rowlen, active)
    budget = k - cgt
    (idx,) = _compact(pre, mode, colmask, thr, cgt, budget, k, rowlen=rowlen, active=active, out=out)
    return idx


def select_topk_indices(pre: torch.Tensor, k: int, mode: int, colmask: torch.Tensor | None = None):
    """Exact top-k column indices per row ([B, k], column order) by key MODE (0 value, 1 magnitude).

    v3, two reads of [B, n] and no host sync: one kernel computes each row's mean and std, then writes the
    columns at or above mean + z * std into a [B, C] candidate buffer, z carried from the previous call (the
    pre-activations of a training run drift slowly); the exact top-k runs on the buffer. Rows with fewer than
    k candidates or more than C take the full bisection, decided on the device (programs without such a row
    return at once). Exact either way; only the speed depends on how well z was carried.
    """
    pre = _check_kernel_input(pre)
    B, n = pre.shape
    C = CAND or candidate_width(n, k)
    if C < k or (CAND is None and (n < PRUNE_MIN_N or C >= n)):
        return _bisect_indices(pre, k, mode, colmask)
    BB, BN, nw = _blocks_select(B, n)
    n_eff = colmask.sum() if colmask is not None else torch.tensor(n, device=pre.device)  # device: no sync
    key = (n, k, mode, pre.dtype, colmask is not None)
    z = _carried_z(key, k, n_eff)
    cand = _empty((B, C), torch.int64, pre.device)
    cnt = _empty((B,), torch.int32, pre.device)
    _candidates_kernel[(triton.cdiv(B, BB),)](
        pre, colmask if colmask is not None else cnt, z, cand, cnt, B, n, pre.stride(0), C, MODE=mode,
        HAS_COLMASK=colmask is not None, BLOCK_B=BB, BLOCK_N=BN, num_warps=nw)
    rowlen = cnt.clamp(max=C)
    valid = torch.arange(C, device=pre.device)[None, :] < rowlen[:, None]
    cand = torch.where(valid, cand, torch.zeros_like(cand))
    sub = pre.gather(1, cand)
    # rows with fewer than k candidates leave slots unwritten: clamp them in range (the fallback rewrites them)
    idx = cand.gather(1, _bisect_indices(sub, k, mode, rowlen=rowlen).clamp(0, C - 1))
    # fewer than k candidates (rows below a carried z: at most the dead count for AuxK) or more than C
    fallback = ((cnt < torch.clamp(n_eff, max=k)) | (cnt > C)).to(torch.int32)
    _bisect_indices(pre, k, mode, colmask, active=fallback, out=idx)
    _update_z(key, z, cnt, k, n_eff)
    return idx


def topk_by_tiles(pre: torch.Tensor, k: int, mode: int, smax: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """v4: (indices [B, k], raw values [B, k]) of each row's top k by key MODE, ordered by key descending (ties
    by column), pruned by sub-block maxima (`smax`, from the fused encoder matmul, or one read pass here). Rows
    the pruning flags (overflowing its buffers) take the full bisection and are ordered on the device: no sync."""
    pre = _check_kernel_input(pre)
    sub = submax_width(pre.shape[1], k)
    if smax is None:
        smax = tiles.submax(pre, mode, sub)
    idx, raw, flag = tiles.select_from_submax(pre, smax, k, mode, sub)
    _bisect_indices(pre, k, mode, active=flag, out=idx)
    tiles.order_rows(pre, idx, raw, flag, k, mode)
    return idx, raw


def _select_ordered(pre: torch.Tensor, k: int, mode: int, colmask: torch.Tensor | None, post: str) -> SparseCode:
    if colmask is None and tile_select_fits(pre.shape[1], k):
        idx, _ = topk_by_tiles(pre.detach(), k, mode)
        raw = pre.gather(1, idx)  # differentiable; already ordered
        return SparseCode(raw.relu() if post == "relu" else raw, idx)
    return _finish(pre, select_topk_indices(pre.detach(), k, mode, colmask), None, post)


def select_row(pre: torch.Tensor, k: int, colmask: torch.Tensor | None = None) -> SparseCode:
    return _select_ordered(pre, k, 0, colmask, "relu")


def select_abs(pre: torch.Tensor, k: int, colmask: torch.Tensor | None = None) -> SparseCode:
    return _select_ordered(pre, k, 1, colmask, "abs")


def aux_select(pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool) -> SparseCode:
    """AuxK's code: each row's min(k_aux, n) largest entries among the dead latents (by magnitude when signed),
    zero-valued padding past the dead count. Fixed width, so the dead count never reaches the host."""
    B, n = pre.shape
    ka = min(k_aux, n)
    colmask = dead.to(torch.int8).contiguous()
    count = dead.sum().clamp(max=ka).expand(B)
    idx = select_topk_indices(pre.detach(), ka, int(signed), colmask)
    return _finish(pre, idx, count, "abs" if signed else "relu")


def select_by_value(pre: torch.Tensor, thrv: torch.Tensor, strides: tuple[int, int], post: str) -> SparseCode:
    """Keep pre > thrv (broadcast by strides): a count pass, then a write pass at the widest row's count."""
    p = _check_kernel_input(pre.detach())
    thrv = thrv.to(torch.float32).contiguous()
    ngt, _ = _compact(p, 0, None, None, None, None, 1, by_value=True, thrv=thrv, thr_strides=strides,
                      store=False)
    width = max(int(ngt.max().item()), 1)
    (idx,) = _compact(p, 0, None, None, None, None, width, by_value=True, thrv=thrv, thr_strides=strides)
    return _finish(pre, idx, ngt, post)


def select_threshold(pre: torch.Tensor, threshold) -> SparseCode:
    thr = torch.as_tensor(threshold, dtype=torch.float32, device=pre.device)
    # the twin compares in pre's dtype: round the threshold the same way
    thr = thr.to(pre.dtype).float()
    if thr.dim() == 0:
        return select_by_value(pre, thr.reshape(1), (0, 0), "none")
    if thr.shape != (pre.shape[1],):
        raise ValueError(f"threshold of shape {tuple(thr.shape)} does not fit pre {tuple(pre.shape)}: "
                         f"expected a scalar or [{pre.shape[1]}]")
    return select_by_value(pre, thr, (0, 1), "none")


def select_stat(pre: torch.Tensor, k: int) -> SparseCode:
    from kernels.select_torch import stat_threshold

    thr = stat_threshold(pre.detach(), k)
    return select_by_value(pre, thr, (1, 0), "none")


# None until BatchTopK's pruned path first runs in this process; False if that first run failed (say its kernels do
# not compile with the installed Triton), which sends every later call to the full-batch path
_PRUNED_BATCH: bool | None = None


def select_batch(pre: torch.Tensor, k: int, smax: torch.Tensor | None = None) -> SparseCode:
    """Top k*B of relu(pre) over the batch, ties at the threshold in row, then column order. Where a row holds
    enough sub-blocks, v5's pruned path (kernels/triton_batch.py) reads the sub-block maxima (`smax`, from the
    fused encoder matmul, or one read pass here) and the few sub-blocks they point to; otherwise, or when its
    buffers overflow, the full-batch path below. One host read either way (two after an overflow)."""
    global _PRUNED_BATCH
    p = _check_kernel_input(pre.detach())
    B, n = p.shape
    if batch_prune_fits(n, k) and _PRUNED_BATCH is not False:
        sub = submax_width(n, k)
        try:
            pruned = batch.select_from_submax(p, smax if smax is not None else tiles.submax(p, 0, sub), k, sub)
        except Exception as exc:  # noqa: BLE001  only before it has ever worked: reported, then the full path
            if _PRUNED_BATCH:
                raise
            warnings.warn(f"kernels: BatchTopK's pruned selection failed on its first use ({type(exc).__name__}: "
                          f"{exc}); this process uses the full-batch selection", RuntimeWarning, stacklevel=2)
            _PRUNED_BATCH, pruned = False, None
        else:
            _PRUNED_BATCH = True
        if pruned is not None:  # rows already ordered, padding zero-valued at index 0
            idx, raw, count = pruned
            if not pre.requires_grad:
                return SparseCode(raw.relu(), idx)
            valid = torch.arange(idx.shape[1], device=idx.device)[None, :] < count[:, None]
            return SparseCode(torch.where(valid, pre.gather(1, idx).relu(), 0.0), idx)
    return _select_batch_full(pre, p, k)


def _select_batch_full(pre: torch.Tensor, p: torch.Tensor, k: int) -> SparseCode:
    """v1 over the whole batch: a global 16-way bisection run on the device (a fixed number of count launches:
    enough to narrow the key range to one key), then the row compaction with the global threshold and each
    row's share of the ties (in row order). One host read: the code's width."""
    B, n = p.shape
    total = min(k * B, B * n)
    shift = _shift(p.dtype)
    BB, BN, nw = _blocks_select(B, n)
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
        _count_ge_kernel[(triton.cdiv(B, BB),)](p, piv, counts, B, n, p.stride(0), SHIFT=shift,
                                                BLOCK_B=BB, BLOCK_N=BN, NPIV=NPIV, num_warps=nw)
        # counts fall with j: the last pivot still holding `total` keys bounds the threshold from below
        j = (((counts >= total) & (piv < hi)).sum() - 1).clamp_min(0)
        lo, hi = lo + j * step, torch.minimum(hi, lo + (j + 1) * step)
    thr = lo.to(torch.int32).expand(B).contiguous()
    ngt, neq = _compact(p, 2, None, thr, None, None, 1, store=False)
    # threshold key 0 (fewer than k*B positives): every positive, no zero-valued ties
    before = torch.cumsum(neq, 0) - neq
    budget = (total - ngt.sum() - before).clamp(min=0).minimum(neq)
    budget = torch.where(lo == 0, torch.zeros_like(budget), budget).to(torch.int32)
    count = ngt + budget
    width = max(int(count.max()), 1)  # the output's shape: the one host read
    (idx,) = _compact(p, 2, None, thr, ngt, budget, width)
    return _finish(pre, idx, count, "relu")


@triton.jit
def _count_ge_kernel(pre_ptr, piv_ptr, counts_ptr, B, n, stride_b, SHIFT: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, NPIV: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    jj = tl.arange(0, NPIV)
    piv = tl.load(piv_ptr + jj)
    counts = tl.zeros([BLOCK_B, NPIV], tl.int32)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        key, m = _load_keys(pre_ptr, pre_ptr, rows, rmask, cols, n, stride_b, 2, SHIFT, 0)
        ge = key.to(tl.int64)[:, :, None] >= piv[None, None, :]
        counts += tl.sum(ge.to(tl.int32), axis=1)
    # int64 totals (B * n can pass 2^31); relaxed: the counts are read only after the launch completes
    tl.atomic_add(counts_ptr + jj, tl.sum(counts, axis=0).to(tl.int64), sem="relaxed")


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
    out = DecodeFn.apply(code.values, code.indices.long(), W_dec)
    return out if b_dec is None else out + b_dec


class DecodeSSEFn(torch.autograd.Function):
    """(x_hat, sum (x_hat - target)^2) with one gather of W_dec's rows: the forward also computes what the loss's
    backward needs (dY = 2 (x_hat - target) and the values' gradient), so the backward gathers no W_dec row."""

    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec, target):
        ctx.set_materialize_grads(False)
        values, indices, target = values.contiguous(), indices.contiguous(), target.contiguous()
        x_hat, sse, dy, gval = decode_sse(values, indices, W_dec, b_dec, target)
        ctx.save_for_backward(values, indices, W_dec, dy, gval)
        return x_hat, sse

    @staticmethod
    def backward(ctx, g_xhat, g_sse):
        values, indices, W_dec, dy, gval = ctx.saved_tensors
        want_v, _, want_w, want_b, want_t = ctx.needs_input_grad
        if g_sse is None and g_xhat is None:
            return None, None, None, None, None
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
        return (g_vals.to(values.dtype) if g_vals is not None else None), None, gW, g_b, g_t


def decode_sse_fused(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None, target: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    return DecodeSSEFn.apply(code.values, code.indices.long(), W_dec, b_dec, target)


# ----------------------------------------------------------------------------------------------------------
# encode: pre-activations + selection, backward only at the selected entries
# ----------------------------------------------------------------------------------------------------------
FUSED_FP32 = False  # tests set this: the fused matmul + selection for fp32 too (on a GPU it serves 16-bit dtypes)


def _select_detached(pre, rule, k, threshold, colmask=None):
    if rule == "row":
        return select_row(pre, k, colmask)
    if rule == "abs":
        return select_abs(pre, k, colmask)
    if rule == "batch":
        return select_batch(pre, k)
    if rule == "threshold":
        return select_threshold(pre, threshold)
    if rule == "stat":
        return select_stat(pre, k)
    raise ValueError(rule)


def _grad_mask(values: torch.Tensor, rule: str) -> torch.Tensor:
    """d value / d pre at each code entry: ReLU'd rules pass where the value is positive; the others pass
    everywhere but padding (value 0)."""
    if rule in ("row", "batch"):
        return values > 0
    if rule == "abs":
        return torch.ones_like(values, dtype=torch.bool)
    return values != 0


def _fused_applies(x: torch.Tensor, rule: str, k: int | None, n: int) -> bool:
    """The matmul with the sub-block maxima in its epilogue serves the row rules and BatchTopK in 16-bit dtypes
    (fp32 keeps torch's matmul, whose precision the user set), where their pruned selection fits."""
    fits = tile_select_fits(n, k) if rule in ("row", "abs") else rule == "batch" and batch_prune_fits(n, k)
    if not fits:
        return False
    return x.dtype in (torch.bfloat16, torch.float16) or FUSED_FP32


def _encode_forward(x, W_enc, b_enc, rule, k, threshold, dead, k_aux):
    """(code, aux) of x (already shifted by b_pre) with no autograd."""
    n = W_enc.shape[1]
    if _fused_applies(x, rule, k, n):
        mode = int(rule == "abs")
        pre, smax = matmul_with_maxima(x, W_enc, b_enc, mode, submax_width(n, k))
        if rule == "batch":
            code = select_batch(pre, k, smax)
        else:
            idx, raw = topk_by_tiles(pre, k, mode, smax)
            code = SparseCode(raw.relu() if rule == "row" else raw, idx)
    else:
        # the bias rides in cuBLAS's epilogue: no extra read + write of [B, n]
        pre = torch.addmm(b_enc, x, W_enc) if b_enc is not None else x @ W_enc
        code = _select_detached(pre, rule, k, threshold)
    aux = aux_select(pre, dead, k_aux, rule == "abs") if dead is not None and k_aux >= 1 else None
    return code, aux


class EncodeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_pre, rule, k, threshold, dead, k_aux):
        x = x.contiguous()
        if b_pre is not None:
            x = (x - b_pre).contiguous()
        if 1 not in W_enc.stride():  # row- or column-major both feed the matmul and the gathers as they are
            W_enc = W_enc.contiguous()
        with torch.no_grad():
            code, aux = _encode_forward(x, W_enc, b_enc, rule, k, threshold, dead, k_aux)
        w = code.values.shape[1]
        if aux is not None:
            idx_all = torch.cat([code.indices, aux.indices], 1).contiguous()
            # AuxK's padding (past the dead count) is a constant: no gradient, also for "abs" entries
            live = torch.arange(aux.values.shape[1], device=x.device) < dead.sum()
            aux_mask = _grad_mask(aux.values, "abs" if rule == "abs" else "row") & live
            mask_all = torch.cat([_grad_mask(code.values, rule), aux_mask], 1)
            aux_vals, aux_idx = aux.values, aux.indices
        else:
            idx_all = code.indices
            mask_all = _grad_mask(code.values, rule)
            aux_vals = code.values.new_zeros(code.values.shape[0], 0)
            aux_idx = code.indices.new_zeros(code.indices.shape[0], 0)
        ctx.save_for_backward(x, W_enc, idx_all, mask_all)
        ctx.w = w
        ctx.has_b = b_enc is not None
        ctx.mark_non_differentiable(code.indices, aux_idx)
        return code.values, code.indices, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, _gi, g_aux, _gai):
        x, W_enc, idx_all, mask_all = ctx.saved_tensors  # x: the input shifted by b_pre
        want_x, want_w, want_b, want_pre = ctx.needs_input_grad[:4]
        B = x.shape[0]
        if g_vals is None:
            g_vals = torch.zeros(B, ctx.w, dtype=x.dtype, device=x.device)
        gs = g_vals.float()
        if idx_all.shape[1] > ctx.w:
            ga = g_aux.float() if g_aux is not None else torch.zeros(B, idx_all.shape[1] - ctx.w,
                                                                       device=x.device)
            gs = torch.cat([gs, ga], 1)
        gs = torch.where(mask_all, gs, torch.zeros_like(gs)).contiguous()
        d, n = W_enc.shape
        gx = gW = gb = g_pre = None
        if want_x:  # grad_x[b] = sum_j gs[b, j] * W_enc[:, idx[b, j]]: a gather-sum over W_enc's columns
            if W_enc.stride(0) == 1:  # columns contiguous (W_enc is an [n, d] tensor's transpose): no copy
                gx = gather_sum(gs, idx_all, W_enc, W_enc.stride(1), 1, d, x.dtype)
            else:  # [d, n] row-major: columns strided by n would each touch their own sector; one copy
                W_t = W_enc.t().contiguous()
                gx = gather_sum(gs, idx_all, W_t, d, 1, d, x.dtype)
                del W_t
        # the latent sums of gs are b_enc's gradient, and (through W_enc) b_pre's: keep them in fp32
        want_sums = (want_b and ctx.has_b) or (want_pre and not want_x)
        wt_sums = None
        if want_w or want_sums:  # each latent's column written once, in W_enc's layout
            gW = torch.empty_like(W_enc)
            sums = torch.empty(n, dtype=torch.float32, device=x.device) if want_sums else None
            # b_pre's gradient without x's is -W_enc @ sums: the same launch reads W_enc's tiles for it (gW, an
            # empty_like of the dense W_enc, has its strides)
            fold = want_pre and not want_x
            wt_sums = sorted_pairs(idx_all, n).grad(gs, x, gW.t(), sums, W_enc.t() if fold else None)
            gW = gW if want_w else None
            gb = sums.to(W_enc.dtype) if want_b and ctx.has_b else None
        if want_pre:  # x - b_pre: b_pre's gradient is minus the input gradient summed over the batch
            g_pre = (-(gx.float().sum(0) if gx is not None else wt_sums)).to(W_enc.dtype)
        return gx, gW, gb, g_pre, None, None, None, None, None


def encode(x, W_enc, b_enc, rule, k, threshold, dead, k_aux, b_pre=None):
    vals, idx, aux_vals, aux_idx = EncodeFn.apply(x, W_enc, b_enc, b_pre, rule, k, threshold, dead, k_aux)
    aux = SparseCode(aux_vals, aux_idx) if aux_idx.shape[1] > 0 else None
    return SparseCode(vals, idx), aux
