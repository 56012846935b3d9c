"""The exact top-k of each row read off its sub-block maxima: the row rules' path (TopK, AbsTopK) on Triton.

Each row of the [B, n] pre-activations is cut into sub-blocks of SUB columns and only their maxima are kept
([B, n / SUB], in pre's dtype). If t is the k-th largest of a row's maxima, at least k entries of the row are >= t (one
in each of those k sub-blocks), so the row's k-th largest entry is >= t, and every entry of the top k lies in a
sub-block whose maximum is >= t. The selection therefore reads the maxima, lists the (about k) sub-blocks at or
above t, reads just those, and finds the exact top k among their entries >= t (about k of them): no carried
state, no statistics, exact by construction. Rows whose lists overflow the fixed buffers (ties among the maxima,
or entries bunched in few sub-blocks) are flagged on the device and redone by the bisection (fallback_triton).

The maxima come for free from the encoder (encode_matmul_triton: the matmul's epilogue writes them beside `pre`);
`kernels.select` on a given `pre` computes them in one read pass (`_submax_kernel`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.blocks import SELECT_WARPS, p2, submax_width, tile_select_caps
from kernels.fallback_triton import bisect_rows
from kernels.triton_common import INTERPRET, key_shift, order_key

_I32_MIN = tl.constexpr(-2147483648)


@triton.jit
def _submax_kernel(
    pre_ptr, smax_ptr, B, n, stride_b, T, MODE: tl.constexpr, SUB: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr
):
    """One read of pre: the maximum of each SUB columns of each row (of |pre| for MODE 1)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    base = pre_ptr + rows[:, None].to(tl.int64) * stride_b
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        m = rmask[:, None] & (cols < n)[None, :]
        v = tl.load(base + cols[None, :], mask=m, other=0.0).to(tl.float32)
        if MODE == 1:
            v = tl.abs(v)
        v = tl.where(m, v, float("-inf"))
        mx = tl.max(tl.reshape(v, [BLOCK_B, BLOCK_N // SUB, SUB]), axis=2)
        sc = start // SUB + tl.arange(0, BLOCK_N // SUB)
        tl.store(
            smax_ptr + rows[:, None].to(tl.int64) * T + sc[None, :],
            mx.to(smax_ptr.dtype.element_ty),
            mask=rmask[:, None] & (sc < T)[None, :],
        )


@triton.jit
def _kth_key(keys, valid, k, ITERS: tl.constexpr):
    """Per row of keys [R, W] (int32): the k-th largest valid key by bisection on the key range (ITERS halvings
    cover the keys' bits), INT32_MIN where a row has fewer than k valid keys. Unrolled (static_range): the same
    straight-line code whatever the compiler's unrolling choice, which keeps the cost model's reading stable."""
    lo = tl.min(tl.where(valid, keys, 2147483647), axis=1).to(tl.int64)
    hi = tl.max(tl.where(valid, keys, -2147483648), axis=1).to(tl.int64)
    enough = tl.sum(valid.to(tl.int32), axis=1) >= k
    for _ in tl.static_range(ITERS):
        mid = lo + (hi - lo + 1) // 2
        ge = tl.sum((valid & (keys.to(tl.int64) >= mid[:, None])).to(tl.int32), axis=1)
        up = ge >= k
        lo = tl.where(up, mid, lo)
        hi = tl.where(up, hi, mid - 1)
    return tl.where(enough, lo, -2147483648)


@triton.jit
def _pack(mask, a, a_ptr, b, b_ptr, base, CAP: tl.constexpr, TWO: tl.constexpr):
    """Store a (and b when TWO) where mask holds, packed in order at a_ptr / b_ptr + base[row] + 0..CAP-1; return
    the count per row (which may pass CAP: the caller flags the row)."""
    pos = tl.cumsum(mask.to(tl.int32), axis=1) - 1
    m = mask & (pos < CAP)
    tl.store(a_ptr + base[:, None] + pos, a, mask=m)
    if TWO:
        tl.store(b_ptr + base[:, None] + pos, b, mask=m)
    return tl.sum(mask.to(tl.int32), axis=1)


@triton.jit
def _unpack(ptr, base, count, rmask, other, CAP: tl.constexpr):
    """The first min(count, CAP) values _pack stored per row, as [rows, CAP] (`other` past them), and the mask."""
    cs = tl.arange(0, CAP)
    live = rmask[:, None] & (cs[None, :] < tl.minimum(count, CAP)[:, None])
    return tl.load(ptr + base[:, None] + cs[None, :], mask=live, other=other), live


@triton.jit
def _rank_desc(keys, cols, live):
    """Each live entry's place in its row ordered by key descending, ties by column: the count of live entries
    with a larger key, or an equal key and a smaller column ([rows, K] against [rows, K]: K is small)."""
    before = live[:, None, :] & (
        (keys[:, None, :] > keys[:, :, None]) | ((keys[:, None, :] == keys[:, :, None]) & (cols[:, None, :] < cols[:, :, None]))
    )
    return tl.sum(before.to(tl.int32), axis=2)


@triton.jit
def _select_from_maxima_kernel(
    pre_ptr,
    smax_ptr,
    t1_ptr,
    k1_ptr,
    tid_ptr,
    hkey_ptr,
    hcol_ptr,
    kkey_ptr,
    kcol_ptr,
    idx_ptr,
    val_ptr,
    flag_ptr,
    B,
    n,
    stride_b,
    T,
    k,
    MODE: tl.constexpr,
    SHIFT: tl.constexpr,
    SUB: tl.constexpr,
    TP: tl.constexpr,
    G: tl.constexpr,
    T1CAP: tl.constexpr,
    TCAP: tl.constexpr,
    C: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Exact top-k per row from its sub-block maxima (see the module docstring): idx [B, k] (int64) and the raw
    values val [B, k], ordered by key descending, ties by column; flag[b] = 1 for a row left to the fallback
    (a buffer overflowed: more than T1CAP maxima at or above the first bound, more than TCAP sub-blocks at or
    above t, or more than C entries). t1/k1/tid/hkey/hcol/kkey/kcol: per-row scratch."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    r64 = rows.to(tl.int64)
    # 1. a lower bound t0 of t (the k-th largest maximum), for a few instructions per maximum: the least of G >= k
    #    group maxima (group g: maxima g, g + G, ...; each holds a valid one as T >= G) is exceeded by G >= k
    #    maxima. The maxima at or above t0 (about k ln(T / G) of them) are compacted in column order.
    ts = tl.arange(0, TP)
    tvalid = rmask[:, None] & (ts < T)[None, :]
    mx = tl.load(smax_ptr + r64[:, None] * T + ts[None, :], mask=tvalid, other=float("-inf")).to(tl.float32)
    mkey = tl.where(tvalid, order_key(mx, 0, SHIFT), _I32_MIN)
    t0 = tl.min(tl.max(tl.reshape(mkey, [BLOCK_B, TP // G, G]), axis=1), axis=1)
    b1 = r64 * T1CAP
    n1 = _pack(tvalid & (mkey >= t0[:, None]), ts[None, :] + rows[:, None] * 0, t1_ptr, mkey, k1_ptr, b1, T1CAP, True)
    tl.debug_barrier()
    # 2. t exactly, by bisection over those few; the sub-blocks at or above t, in column order
    key1, l1 = _unpack(k1_ptr, b1, n1, rmask, _I32_MIN, T1CAP)
    tile1, _ = _unpack(t1_ptr, b1, n1, rmask, 0, T1CAP)
    t = _kth_key(key1, l1, k, 33 - SHIFT)
    ncand = _pack(l1 & (key1 >= t[:, None]), tile1, tid_ptr, tile1, tid_ptr, r64 * TCAP, TCAP, False)
    tl.debug_barrier()
    # 3. their entries at or above t, compacted in column order
    es = tl.arange(0, TCAP * SUB)
    slot = es // SUB
    tile = tl.load(
        tid_ptr + r64[:, None] * TCAP + slot[None, :],
        mask=rmask[:, None] & (slot[None, :] < tl.minimum(ncand, TCAP)[:, None]),
        other=-1,
    )
    cols = tile * SUB + (es % SUB)[None, :]
    em = (tile >= 0) & (cols < n)
    v = tl.load(pre_ptr + r64[:, None] * stride_b + cols, mask=em, other=0.0).to(tl.float32)
    if MODE == 1:
        v = tl.abs(v)
    ekey = order_key(v, 0, SHIFT)
    nhit = _pack(em & (ekey >= t[:, None]), ekey, hkey_ptr, cols, hcol_ptr, r64 * C, C, True)
    tl.debug_barrier()
    # 4. the exact k-th key among the hits; keep those above it and the first ties (column order) up to k
    hkey, live = _unpack(hkey_ptr, r64 * C, nhit, rmask, _I32_MIN, C)
    hcol, _ = _unpack(hcol_ptr, r64 * C, nhit, rmask, 0, C)
    kth = _kth_key(hkey, live, k, 33 - SHIFT)
    gt = live & (hkey > kth[:, None])
    eq = live & (hkey == kth[:, None])
    budget = k - tl.sum(gt.to(tl.int32), axis=1)
    keep = gt | (eq & ((tl.cumsum(eq.to(tl.int32), axis=1) - 1) < budget[:, None]))
    nkeep = _pack(keep, hcol, kcol_ptr, hkey, kkey_ptr, r64 * KP, KP, True)
    tl.debug_barrier()
    # 5. order the kept entries: rank = entries with a larger key, or an equal key and a smaller column
    kk, km = _unpack(kkey_ptr, r64 * KP, nkeep, rmask, _I32_MIN, KP)
    kc, _ = _unpack(kcol_ptr, r64 * KP, nkeep, rmask, 0, KP)
    rank = _rank_desc(kk, kc, km)
    raw = tl.load(pre_ptr + r64[:, None] * stride_b + kc, mask=km, other=0.0)
    bad = (n1 > T1CAP) | (ncand > TCAP) | (nhit > C)
    wm = km & (rank < k) & ~bad[:, None]
    tl.store(idx_ptr + r64[:, None] * k + rank, kc.to(tl.int64), mask=wm)
    tl.store(val_ptr + r64[:, None] * k + rank, raw, mask=wm)
    tl.store(flag_ptr + rows, bad.to(tl.int32), mask=rmask)


@triton.jit
def _order_rows_kernel(
    pre_ptr,
    idx_ptr,
    val_ptr,
    active_ptr,
    B,
    stride_b,
    k,
    MODE: tl.constexpr,
    SHIFT: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """For the rows flagged in active[] (the fallback's): read their k column indices (any order), and write
    them back with their raw values ordered by key descending, ties by column. Other programs return at once."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rmask = rmask & (tl.load(active_ptr + rows, mask=rmask, other=0) != 0)
    if tl.max(rmask.to(tl.int32)) == 0:
        return
    r64 = rows.to(tl.int64)
    ks = tl.arange(0, KP)
    km = rmask[:, None] & (ks < k)[None, :]
    kc = tl.load(idx_ptr + r64[:, None] * k + ks[None, :], mask=km, other=0)
    raw = tl.load(pre_ptr + r64[:, None] * stride_b + kc, mask=km, other=0.0)
    v = raw.to(tl.float32)
    if MODE == 1:
        v = tl.abs(v)
    kk = tl.where(km, order_key(v, 0, SHIFT), _I32_MIN)
    rank = _rank_desc(kk, kc, km)
    tl.debug_barrier()  # every program's row is read before it is rewritten
    tl.store(idx_ptr + r64[:, None] * k + rank, kc, mask=km)
    tl.store(val_ptr + r64[:, None] * k + rank, raw, mask=km)


def submax(pre: torch.Tensor, mode: int, sub: int) -> torch.Tensor:
    """Sub-block maxima [B, ceil(n / sub)] (pre's dtype: exact) of pre (|pre| for mode 1) in one read."""
    B, n = pre.shape
    T = triton.cdiv(n, sub)
    smax = torch.empty((B, T), dtype=pre.dtype, device=pre.device)
    BB, BN = (min(p2(B), 64), max(sub, min(p2(n), 1024))) if INTERPRET else (2, max(sub, min(p2(n), 512)))
    _submax_kernel[(triton.cdiv(B, BB),)](
        pre, smax, B, n, pre.stride(0), T, MODE=mode, SUB=sub, BLOCK_B=BB, BLOCK_N=BN, num_warps=4
    )
    return smax


def select_from_submax(
    pre: torch.Tensor, smax: torch.Tensor, k: int, mode: int, sub: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx [B, k] int64, raw values [B, k] in pre's dtype, flag [B] int32): the exact top k of each row, ordered,
    for every row not flagged; flagged rows are left for the fallback. No host sync."""
    B, n = pre.shape
    T = smax.shape[1]
    t1cap, tcap, C = tile_select_caps(k)
    KP = p2(k)
    dev = pre.device
    BB = min(p2(B), 16) if INTERPRET else 1
    t1 = torch.empty((B, t1cap), dtype=torch.int32, device=dev)
    k1 = torch.empty((B, t1cap), dtype=torch.int32, device=dev)
    tid = torch.empty((B, tcap), dtype=torch.int32, device=dev)
    hkey = torch.empty((B, C), dtype=torch.int32, device=dev)
    hcol = torch.empty((B, C), dtype=torch.int32, device=dev)
    kkey = torch.empty((B, KP), dtype=torch.int32, device=dev)
    kcol = torch.empty((B, KP), dtype=torch.int32, device=dev)
    idx = torch.empty((B, k), dtype=torch.int64, device=dev)
    val = torch.empty((B, k), dtype=pre.dtype, device=dev)
    flag = torch.empty((B,), dtype=torch.int32, device=dev)
    _select_from_maxima_kernel[(triton.cdiv(B, BB),)](
        pre,
        smax,
        t1,
        k1,
        tid,
        hkey,
        hcol,
        kkey,
        kcol,
        idx,
        val,
        flag,
        B,
        n,
        pre.stride(0),
        T,
        k,
        MODE=mode,
        SHIFT=key_shift(pre.dtype),
        SUB=sub,
        TP=p2(T),
        G=KP,
        T1CAP=t1cap,
        TCAP=tcap,
        C=C,
        KP=KP,
        BLOCK_B=BB,
        num_warps=SELECT_WARPS,
    )
    return idx, val, flag


def order_rows(pre: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, active: torch.Tensor, k: int, mode: int) -> None:
    """Reorder (in place) the rows flagged in `active` by key, writing their raw values into val."""
    B = pre.shape[0]
    BB = min(p2(B), 16) if INTERPRET else 1
    _order_rows_kernel[(triton.cdiv(B, BB),)](
        pre, idx, val, active, B, pre.stride(0), k, MODE=mode, SHIFT=key_shift(pre.dtype), KP=p2(k), BLOCK_B=BB, num_warps=4
    )


def topk_from_submax(pre: torch.Tensor, k: int, mode: int, smax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [B, k], raw values [B, k]) of each row's top k by key MODE, ordered by key descending (ties by
    column), read off the sub-block maxima (`smax`, from the fused encoder matmul, or one read pass here). Rows
    the pruning flags (overflowing its buffers) take the bisection and are ordered on the device: no sync."""
    sub = submax_width(pre.shape[1], k)
    if smax is None:
        smax = submax(pre, mode, sub)
    idx, raw, flag = select_from_submax(pre, smax, k, mode, sub)
    bisect_rows(pre, k, mode, active=flag, out=idx)
    order_rows(pre, idx, raw, flag, k, mode)
    return idx, raw
