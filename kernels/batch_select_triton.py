"""Selection over the batch (BatchTopK) on Triton: the top k*B of the ReLU'd batch, pruned by sub-block maxima
(without reading the pre-activations in full), exact, with no host sync but the one the rule needs (its code's
width); the bisection over the whole batch (fallback_triton) where the pruning does not fit or declines.

The row argument of `submax_select_triton`, over the whole batch: if t is the (k*B)-th largest sub-block maximum, at least
k*B entries are >= t (one in each of those sub-blocks), so the batch's (k*B)-th largest entry is >= t, and every
kept entry is >= t. So: t by bisection over the maxima ([B, n / SUB], SUB times fewer than the entries); the
sub-blocks whose maximum is >= t listed (about k*B); their entries >= t listed (about k*B: every entry of the batch
that is >= t); the exact threshold by bisection over those; the ties at it kept in row, then column order, as
the full-batch path does; each row's kept columns written in column order.

Both lists are compacted in order (a count launch, a cumulative sum, a write launch: no atomics), so the
candidates come out in (row, column) order and each row's are contiguous. Each bisection pass is one launch: its
programs replay the earlier passes' counts (16 numbers per pass, on the device) to find their pivots. A list that
overflows its buffer (ties among the maxima, entries bunched in few sub-blocks) or a batch with fewer than k*B
positive maxima is flagged on the device and read with the width; the full-batch bisection then answers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.blocks import NPIV, batch_blocks, batch_caps, batch_passes, batch_prune_fits, submax_width
from kernels.code import SparseCode
from kernels.fallback_triton import bisect_batch
from kernels.rules import RULES
from kernels.submax_select_triton import submax
from kernels.triton_common import empty, kernel_input, key_shift, order_key, ordered_code


@triton.jit
def _narrowed(counts_ptr, npass, total, BITS: tl.constexpr, NPIV: tl.constexpr):
    """(lo, sb) of pass `npass` after replaying the earlier passes' counts (counts_ptr[q * NPIV + j] = keys >= the
    j-th pivot of pass q). The keys lie in [0, 2^BITS); pass q's pivots are lo + j * 2^sb, a radix digit of 4 bits
    (sb = BITS - 4(q + 1), at least 0), and the total-th largest key lies in [lo, lo + 2^(sb + 4)). After enough
    passes that range is one key: lo (0 when fewer than total keys are positive)."""
    jj = tl.arange(0, NPIV)
    lo = tl.zeros([NPIV], tl.int64).sum(axis=0)
    bits = lo + BITS
    for q in range(npass):
        sb = tl.maximum(bits - 4, 0)
        piv = lo + (jj.to(tl.int64) << sb)
        c = tl.load(counts_ptr + q * NPIV + jj)
        j = tl.maximum(tl.sum(((c >= total) & (piv < lo + (1 << bits))).to(tl.int32), axis=0) - 1, 0)
        lo += j.to(tl.int64) << sb
        bits = sb
    return lo, tl.maximum(bits - 4, 0)


@triton.jit(do_not_specialize=["npass"])
def _count_pass_kernel(
    key_ptr,
    len_ptr,
    cap,
    counts_ptr,
    npass,
    total,
    FROM_VALUES: tl.constexpr,
    SHIFT: tl.constexpr,
    BITS: tl.constexpr,
    NPIV: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pass `npass` of the bisection for the total-th largest key: counts of keys >= each of its 16 pivots, added
    into counts_ptr[npass * NPIV + j] (relaxed: read by later launches only). FROM_VALUES: the keys are the ReLU'd
    order keys of `cap` values; else int32 keys, min(*len_ptr, cap) of them (programs past them return).
    The pivots are a radix digit apart, so each key's digit (clamped to 15; -1 below lo) is histogrammed and
    the counts are the histogram's suffix sums: a few instructions per key instead of 16 comparisons."""
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK
    if FROM_VALUES:
        length = cap
    else:
        length = tl.minimum(tl.load(len_ptr), cap)
    if start >= length:
        return
    lo, sb = _narrowed(counts_ptr, npass, total, BITS, NPIV)
    offs = start + tl.arange(0, BLOCK)
    m = offs < length
    if FROM_VALUES:
        key = order_key(tl.load(key_ptr + offs, mask=m, other=0.0).to(tl.float32), 2, SHIFT)
    else:
        key = tl.load(key_ptr + offs, mask=m, other=0)
    rel = key - lo.to(tl.int32)  # keys and lo lie in [0, 2^31)
    digit = tl.minimum(rel >> sb.to(tl.int32), NPIV - 1) + 1  # 1..16; 0: masked or below lo
    hist = tl.histogram(tl.where(m & (rel >= 0), digit, 0), 2 * NPIV)
    jj = tl.arange(0, NPIV)
    bins = tl.arange(0, 2 * NPIV)
    cnt = tl.sum(tl.where(bins[None, :] > jj[:, None], hist[None, :], 0), axis=1)
    tl.atomic_add(counts_ptr + npass * NPIV + jj, cnt.to(tl.int64), sem="relaxed")


@triton.jit
def _place(hit, ids, pcnt_ptr, poff_ptr, out_ptr, cap, STORE: tl.constexpr):
    """Order-preserving compaction, one program's part: STORE=False writes the program's hit count; STORE=True
    (poff = the inclusive cumulative sum of those counts) writes its hits' ids at their places below cap."""
    pid = tl.program_id(0)
    c = tl.sum(hit.to(tl.int32), axis=0)
    if STORE:
        slot = tl.load(poff_ptr + pid) - c + tl.cumsum(hit.to(tl.int32), axis=0) - 1
        tl.store(out_ptr + slot, ids, mask=hit & (slot < cap))
        return slot
    else:
        tl.store(pcnt_ptr + pid, c.to(tl.int64))
        return c


@triton.jit(do_not_specialize=["npass"])
def _batch_subblocks_kernel(
    smax_ptr,
    counts_ptr,
    npass,
    total,
    pcnt_ptr,
    poff_ptr,
    tid_ptr,
    tcap,
    BT,
    STORE: tl.constexpr,
    SHIFT: tl.constexpr,
    BITS: tl.constexpr,
    NPIV: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The sub-blocks (flat ids b * T + s) whose maximum's ReLU'd key is >= t (the bisection's result after
    `npass` passes over the maxima), listed in order (see _place)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < BT
    t, _ = _narrowed(counts_ptr, npass, total, BITS, NPIV)
    key = order_key(tl.load(smax_ptr + offs, mask=m, other=0.0).to(tl.float32), 2, SHIFT)
    _place(m & (key >= t), offs, pcnt_ptr, poff_ptr, tid_ptr, tcap, STORE)


@triton.jit(do_not_specialize=["npass"])
def _batch_entries_kernel(
    pre_ptr,
    stride_b,
    n,
    T,
    tid_ptr,
    tlen_ptr,
    tcap,
    counts_ptr,
    npass,
    total,
    pcnt_ptr,
    poff_ptr,
    eflat_ptr,
    ekey_ptr,
    ecap,
    STORE: tl.constexpr,
    SHIFT: tl.constexpr,
    BITS: tl.constexpr,
    NPIV: tl.constexpr,
    SUB: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """The entries >= t of the listed sub-blocks (BLOCK_S per program), listed in order (see _place) as their
    flat index b * n + column and ReLU'd order key."""
    pid = tl.program_id(0)
    nt = tl.minimum(tl.load(tlen_ptr), tcap)
    s = pid.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    sm = s < nt
    t, _ = _narrowed(counts_ptr, npass, total, BITS, NPIV)
    tid = tl.load(tid_ptr + s, mask=sm, other=0)
    row = tid // T
    cols = (tid % T)[:, None] * SUB + tl.arange(0, SUB)[None, :]
    em = sm[:, None] & (cols < n)
    x = tl.load(pre_ptr + row[:, None] * stride_b + cols, mask=em, other=0.0).to(tl.float32)
    key = tl.reshape(order_key(x, 2, SHIFT), [BLOCK_S * SUB])
    hit = tl.reshape(em, [BLOCK_S * SUB]) & (key >= t)
    flat = tl.reshape(row[:, None] * n + cols, [BLOCK_S * SUB])
    slot = _place(hit, flat, pcnt_ptr, poff_ptr, eflat_ptr, ecap, STORE)
    if STORE:
        tl.store(ekey_ptr + slot, key, mask=hit & (slot < ecap))


@triton.jit(do_not_specialize=["npass"])
def _batch_row_counts_kernel(
    eflat_ptr,
    ekey_ptr,
    elen_ptr,
    ecap,
    n,
    counts_ptr,
    npass,
    total,
    ngt_ptr,
    neq_ptr,
    nall_ptr,
    BITS: tl.constexpr,
    NPIV: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per row, its candidates above the exact threshold, at it, and in all (relaxed atomics into zeroed
    counters; the candidates come in row order, so a warp's adds mostly hit one address)."""
    pid = tl.program_id(0)
    length = tl.minimum(tl.load(elen_ptr), ecap)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < length
    if pid.to(tl.int64) * BLOCK >= length:
        return
    thr, _ = _narrowed(counts_ptr + npass * NPIV, npass, total, BITS, NPIV)
    row = tl.load(eflat_ptr + offs, mask=m, other=0) // n
    key = tl.load(ekey_ptr + offs, mask=m, other=0)
    one = tl.full([BLOCK], 1, tl.int32)
    tl.atomic_add(ngt_ptr + row, one, mask=m & (key > thr), sem="relaxed")
    tl.atomic_add(neq_ptr + row, one, mask=m & (key == thr), sem="relaxed")
    tl.atomic_add(nall_ptr + row, one, mask=m, sem="relaxed")


@triton.jit(do_not_specialize=["npass"])
def _batch_budget_kernel(
    counts_ptr,
    npass,
    total,
    tlen_ptr,
    tcap,
    elen_ptr,
    ecap,
    ngt_ptr,
    neq_ptr,
    nall_ptr,
    budget_ptr,
    count_ptr,
    start_ptr,
    out_ptr,
    B,
    BITS: tl.constexpr,
    NPIV: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program: each row's share of the ties (in row order: total minus everything above the threshold,
    handed out row by row), its kept count and its first candidate; out = [width (the largest count), 1 when the
    pruned path cannot answer (fewer than total positive maxima, or a list over its buffer)]."""
    t, _ = _narrowed(counts_ptr, npass, total, BITS, NPIV)
    rr = tl.arange(0, BLOCK)
    above = tl.zeros([BLOCK], tl.int64).sum(axis=0)
    for r0 in range(0, B, BLOCK):
        above += tl.sum(tl.load(ngt_ptr + r0 + rr, mask=r0 + rr < B, other=0).to(tl.int64), axis=0)
    ties_before = above * 0
    first = above * 0
    width = above * 0
    for r0 in range(0, B, BLOCK):
        rows = r0 + rr
        rm = rows < B
        gt = tl.load(ngt_ptr + rows, mask=rm, other=0).to(tl.int64)
        eq = tl.load(neq_ptr + rows, mask=rm, other=0).to(tl.int64)
        al = tl.load(nall_ptr + rows, mask=rm, other=0).to(tl.int64)
        before = ties_before + tl.cumsum(eq, axis=0) - eq
        budget = tl.minimum(tl.maximum(total - above - before, 0), eq)
        tl.store(budget_ptr + rows, budget.to(tl.int32), mask=rm)
        tl.store(count_ptr + rows, gt + budget, mask=rm)
        tl.store(start_ptr + rows, first + tl.cumsum(al, axis=0) - al, mask=rm)
        width = tl.maximum(width, tl.max(gt + budget, axis=0))
        ties_before += tl.sum(eq, axis=0)
        first += tl.sum(al, axis=0)
    bad = (t == 0) | (tl.load(tlen_ptr) > tcap) | (tl.load(elen_ptr) > ecap)
    tl.store(out_ptr, width)
    tl.store(out_ptr + 1, bad.to(tl.int64))


@triton.jit(do_not_specialize=["npass"])
def _batch_write_kernel(
    eflat_ptr,
    ekey_ptr,
    n,
    counts_ptr,
    npass,
    total,
    budget_ptr,
    count_ptr,
    start_ptr,
    nall_ptr,
    kcol_ptr,
    kkey_ptr,
    pre_ptr,
    stride_b,
    idx_ptr,
    val_ptr,
    width,
    BITS: tl.constexpr,
    NPIV: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row: its kept entries (above the threshold, and its first `budget` ties), gathered in
    column order into the row's scratch (kcol, kkey), then each written at its rank (key descending, ties by
    column: the order of torch.topk's values) into idx[row] with its raw value in val[row]; zeros past count."""
    row = tl.program_id(0).to(tl.int64)
    thr, _ = _narrowed(counts_ptr + npass * NPIV, npass, total, BITS, NPIV)
    first = tl.load(start_ptr + row)
    nall = tl.load(nall_ptr + row).to(tl.int64)
    budget = tl.load(budget_ptr + row)
    base = row * width
    cc = tl.arange(0, BLOCK)
    kept = budget * 0
    ties = budget * 0
    for c0 in range(0, nall, BLOCK):
        m = c0 + cc < nall
        key = tl.load(ekey_ptr + first + c0 + cc, mask=m, other=-1)
        col = tl.load(eflat_ptr + first + c0 + cc, mask=m, other=0) - row * n
        eq = m & (key == thr)
        keep = (m & (key > thr)) | (eq & (ties + tl.cumsum(eq.to(tl.int32), axis=0) - 1 < budget))
        slot = kept + tl.cumsum(keep.to(tl.int32), axis=0) - 1
        tl.store(kcol_ptr + base + slot, col.to(tl.int32), mask=keep)
        tl.store(kkey_ptr + base + slot, key, mask=keep)
        kept += tl.sum(keep.to(tl.int32), axis=0)
        ties += tl.sum(eq.to(tl.int32), axis=0)
    tl.debug_barrier()  # the row's scratch is written before any thread ranks it
    for i0 in range(0, kept, BLOCK):
        mi = i0 + cc < kept
        ki = tl.load(kkey_ptr + base + i0 + cc, mask=mi, other=0)
        ci = tl.load(kcol_ptr + base + i0 + cc, mask=mi, other=0)
        rank = tl.zeros([BLOCK], tl.int32)
        for j0 in range(0, kept, BLOCK):
            mj = j0 + cc < kept
            kj = tl.load(kkey_ptr + base + j0 + cc, mask=mj, other=0)
            cj = tl.load(kcol_ptr + base + j0 + cc, mask=mj, other=0)
            before = (kj[None, :] > ki[:, None]) | ((kj[None, :] == ki[:, None]) & (cj[None, :] < ci[:, None]))
            rank += tl.sum((mj[None, :] & before).to(tl.int32), axis=1)
        tl.store(idx_ptr + base + rank, ci.to(tl.int64), mask=mi)
        tl.store(val_ptr + base + rank, tl.load(pre_ptr + row * stride_b + ci, mask=mi, other=0.0), mask=mi)
    for c0 in range(kept, width, BLOCK):
        pad = c0 + cc < width
        tl.store(idx_ptr + base + c0 + cc, tl.zeros([BLOCK], tl.int64), mask=pad)
        tl.store(val_ptr + base + c0 + cc, tl.zeros([BLOCK], tl.float32).to(val_ptr.dtype.element_ty), mask=pad)


def select_from_submax(
    pre: torch.Tensor, smax: torch.Tensor, k: int, sub: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(idx [B, width] int64, their raw values [B, width], count [B]) of the top k*B entries of relu(pre) over the
    batch, ties at the threshold in row, then column order; each row ordered by value descending, ties by column,
    zeros past its count. None when the pruned path cannot answer (the caller falls back). smax: the maxima of
    each `sub` columns of pre's rows ([B, ceil(n / sub)], contiguous). One host read: the width, with the flag."""
    B, n = pre.shape
    T = smax.shape[1]
    total = min(k * B, B * n)
    shift = key_shift(pre.dtype)
    passes = batch_passes(shift)
    tcap, ecap = batch_caps(total)
    cb, eb, rb, sb = batch_blocks(sub)
    dev = pre.device
    BT = B * T
    tprog, eprog = triton.cdiv(BT, cb), triton.cdiv(tcap, eb)
    # one zeroed buffer: both bisections' counts, then the per-row counters
    state = torch.zeros(2 * passes * NPIV + 3 * B, dtype=torch.int64, device=dev)
    counts = state[: 2 * passes * NPIV]
    ngt, neq, nall = state[2 * passes * NPIV :].view(torch.int32).view(6, B)[:3]
    kw = dict(BITS=31 - shift, NPIV=NPIV)
    for p in range(passes):  # t: the total-th largest ReLU'd maximum
        _count_pass_kernel[(tprog,)](smax, smax, BT, counts, p, total, FROM_VALUES=True, SHIFT=shift, BLOCK=cb, **kw)
    tid = empty(tcap, torch.int64, dev)
    pcnt = empty(tprog, torch.int64, dev)
    for store in (False, True):  # count, then store at the counts' offsets
        poff = torch.cumsum(pcnt, 0) if store else pcnt
        _batch_subblocks_kernel[(tprog,)](
            smax, counts, passes, total, pcnt, poff, tid, tcap, BT, STORE=store, SHIFT=shift, BLOCK=cb, **kw
        )
    tlen = poff[-1:]
    eflat = empty(ecap, torch.int64, dev)
    ekey = empty(ecap, torch.int32, dev)
    pcnt = empty(eprog, torch.int64, dev)
    for store in (False, True):  # count, then store at the counts' offsets
        poff = torch.cumsum(pcnt, 0) if store else pcnt
        _batch_entries_kernel[(eprog,)](
            pre,
            pre.stride(0),
            n,
            T,
            tid,
            tlen,
            tcap,
            counts,
            passes,
            total,
            pcnt,
            poff,
            eflat,
            ekey,
            ecap,
            STORE=store,
            SHIFT=shift,
            SUB=sub,
            BLOCK_S=eb,
            **kw,
        )
    elen = poff[-1:]
    cand_counts = counts[passes * NPIV :]
    for p in range(passes):  # the exact threshold among the candidates
        _count_pass_kernel[(triton.cdiv(ecap, cb),)](
            ekey, elen, ecap, cand_counts, p, total, FROM_VALUES=False, SHIFT=shift, BLOCK=cb, **kw
        )
    _batch_row_counts_kernel[(triton.cdiv(ecap, sb),)](
        eflat, ekey, elen, ecap, n, counts, passes, total, ngt, neq, nall, BLOCK=sb, **kw
    )
    budget = empty(B, torch.int32, dev)
    count = empty(B, torch.int64, dev)
    start = empty(B, torch.int64, dev)
    out = empty(2, torch.int64, dev)
    _batch_budget_kernel[(1,)](
        counts, passes, total, tlen, tcap, elen, ecap, ngt, neq, nall, budget, count, start, out, B, BLOCK=sb, **kw
    )
    width, bad = out.tolist()  # the one host read
    if bad:
        return None
    width = max(int(width), 1)
    kcol = empty((B, width), torch.int32, dev)
    kkey = empty((B, width), torch.int32, dev)
    idx = empty((B, width), torch.int64, dev)
    val = empty((B, width), pre.dtype, dev)
    _batch_write_kernel[(B,)](
        eflat,
        ekey,
        n,
        counts,
        passes,
        total,
        budget,
        count,
        start,
        nall,
        kcol,
        kkey,
        pre,
        pre.stride(0),
        idx,
        val,
        width,
        BLOCK=rb,
        **kw,
    )
    return idx, val, count


def select_batch(pre: torch.Tensor, k: int, smax: torch.Tensor | None = None) -> SparseCode:
    """Top k*B of relu(pre) over the batch, ties at the threshold in row, then column order. Where a row holds
    enough sub-blocks, the pruned path reads the sub-block maxima (`smax`, from the fused encoder matmul, or one
    read pass here) and the few sub-blocks they point to; otherwise, or when its buffers overflow, the bisection
    over the whole batch. One host read either way (two after an overflow)."""
    p = kernel_input(pre.detach())
    n = p.shape[1]
    if batch_prune_fits(n, k):
        sub = submax_width(n, k)
        pruned = select_from_submax(p, smax if smax is not None else submax(p, 0, sub), k, sub)
        if pruned is not None:  # rows already ordered, padding zero-valued at index 0
            idx, raw, count = pruned
            if not pre.requires_grad:
                return SparseCode(RULES["batch"].value(raw), idx)
            valid = torch.arange(idx.shape[1], device=idx.device)[None, :] < count[:, None]
            return SparseCode(torch.where(valid, RULES["batch"].value(pre.gather(1, idx)), 0.0), idx)
    return select_batch_bisected(pre, p, k)


def select_batch_bisected(pre: torch.Tensor, p: torch.Tensor, k: int) -> SparseCode:
    """The fallback: the bisection over the whole batch (`p`, pre detached and contiguous), values from `pre`."""
    idx, count = bisect_batch(p, k)
    return ordered_code(pre, idx, count, RULES["batch"])
