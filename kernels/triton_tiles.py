"""Top-k selection pruned by sub-block maxima (kernels v4): exact, one read of the pre-activations or none.

Each row of the [B, n] pre-activations is cut into sub-blocks of SUB columns and only their maxima are kept
([B, n / SUB], in pre's dtype). If t is the k-th largest of a row's maxima, at least k entries of the row are >= t (one
in each of those k sub-blocks), so the row's k-th largest entry is >= t, and every entry of the top k lies in a
sub-block whose maximum is >= t. The selection therefore reads the maxima, lists the (about k) sub-blocks at or
above t, reads just those, and finds the exact top k among their entries >= t (about k of them): no carried
state, no statistics, exact by construction. Rows whose lists overflow the fixed buffers (ties among the maxima,
or entries bunched in few sub-blocks) are flagged on the device and redone by the full-row bisection.

The maxima come for free from the encoder: `_gemm_submax_kernel` is the x @ W_enc + b_enc matmul whose epilogue
writes the sub-block maxima beside `pre` (about five instructions per element, read off the sm_90 binary), so
the pre-activations are written once and never re-read in full. `kernels.select` on a given `pre` (and AuxK,
over the dead columns only) computes them in one read pass (`_submax_kernel`).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.triton_common import key_shift as _shift
from kernels.triton_common import order_key, to_storage
from kernels.triton_launches import SELECT_WARPS, gemm_blocks, submax_width, tile_select_caps, tile_select_fits

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_I32_MIN = tl.constexpr(-2147483648)


@triton.jit
def _gemm_submax_kernel(x_ptr, w_ptr, bias_ptr, pre_ptr, smax_ptr, B, n, d, s_wd, s_wn, T,
                        MODE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, SUB: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                        WITH_SUBMAX: tl.constexpr = True):
    """pre = x @ W (+ bias) for one [BLOCK_M, BLOCK_N] tile (x [B, d] row-major, W by strides), written in pre's
    dtype; the epilogue also writes the maximum of each SUB columns of each row (of |pre| for MODE 1) as
    rounded to pre's dtype, into smax [B, T] (same dtype: exact). Grouped tile order keeps a band of W's columns in
    L2. WITH_SUBMAX=False is the plain matmul: the cost model's baseline for what the epilogue adds."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(B, BLOCK_M)
    num_n = tl.cdiv(n, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % gsize
    pid_n = (pid % group) // gsize
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mm = rm < B
    nm = rn < n
    xp = x_ptr + rm[:, None].to(tl.int64) * d + rk[None, :]
    wp = w_ptr + rk[:, None].to(tl.int64) * s_wd + rn[None, :].to(tl.int64) * s_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, d, BLOCK_K):
        km = (k0 + rk) < d
        a = tl.load(xp, mask=mm[:, None] & km[None, :], other=0.0)
        b = tl.load(wp, mask=km[:, None] & nm[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        xp += BLOCK_K
        wp += BLOCK_K * s_wd
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=nm, other=0.0).to(tl.float32)[None, :]
    m2 = mm[:, None] & nm[None, :]
    out = to_storage(acc, pre_ptr.dtype.element_ty)
    tl.store(pre_ptr + rm[:, None].to(tl.int64) * n + rn[None, :], out, mask=m2)
    if not WITH_SUBMAX:
        return
    v = out.to(tl.float32)
    if MODE == 1:
        v = tl.abs(v)
    v = tl.where(m2, v, float("-inf"))
    mx = tl.max(tl.reshape(v, [BLOCK_M, BLOCK_N // SUB, SUB]), axis=2)
    sc = pid_n * (BLOCK_N // SUB) + tl.arange(0, BLOCK_N // SUB)
    tl.store(smax_ptr + rm[:, None].to(tl.int64) * T + sc[None, :], mx.to(smax_ptr.dtype.element_ty),
             mask=mm[:, None] & (sc < T)[None, :])


@triton.jit
def _submax_kernel(pre_ptr, smax_ptr, B, n, stride_b, T, MODE: tl.constexpr, SUB: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
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
        tl.store(smax_ptr + rows[:, None].to(tl.int64) * T + sc[None, :], mx.to(smax_ptr.dtype.element_ty),
                 mask=rmask[:, None] & (sc < T)[None, :])


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
    before = live[:, None, :] & ((keys[:, None, :] > keys[:, :, None])
                                 | ((keys[:, None, :] == keys[:, :, None]) & (cols[:, None, :] < cols[:, :, None])))
    return tl.sum(before.to(tl.int32), axis=2)


@triton.jit
def _select_tiles_kernel(pre_ptr, smax_ptr, t1_ptr, k1_ptr, tid_ptr, hkey_ptr, hcol_ptr, kkey_ptr, kcol_ptr,
                         idx_ptr, val_ptr, flag_ptr, B, n, stride_b, T, k,
                         MODE: tl.constexpr, SHIFT: tl.constexpr, SUB: tl.constexpr, TP: tl.constexpr,
                         G: tl.constexpr, T1CAP: tl.constexpr, TCAP: tl.constexpr, C: tl.constexpr,
                         KP: tl.constexpr, BLOCK_B: tl.constexpr):
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
    tile = tl.load(tid_ptr + r64[:, None] * TCAP + slot[None, :], mask=rmask[:, None] & (slot[None, :] <
                   tl.minimum(ncand, TCAP)[:, None]), other=-1)
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
def _order_rows_kernel(pre_ptr, idx_ptr, val_ptr, active_ptr, B, stride_b, k,
                       MODE: tl.constexpr, SHIFT: tl.constexpr, KP: tl.constexpr, BLOCK_B: tl.constexpr):
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


def _p2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def gemm_submax(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, mode: int, sub: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre [B, n] and its sub-block maxima [B, ceil(n / sub)], both in x's dtype) from one fused matmul.
    x [B, d] contiguous; W [d, n] row- or column-major. fp32 inputs multiply in IEEE fp32 (as torch does with
    TF32 off), 16-bit ones on the tensor cores."""
    B, d = x.shape
    n = W.shape[1]
    T = triton.cdiv(n, sub)
    pre = torch.empty((B, n), dtype=x.dtype, device=x.device)
    if INTERPRET and x.dtype != torch.float32:  # the interpreter's 16-bit tl.dot is wrong: multiply in fp32 there
        x, W, bias = x.float(), W.float(), bias.float() if bias is not None else None
    smax = torch.empty((B, T), dtype=x.dtype, device=x.device)
    BM, BN, BK, GM, nw, stages = gemm_blocks(d, n, x.dtype, interpret=INTERPRET)
    if BN % sub:
        raise ValueError(f"sub-block width {sub} must divide the matmul's column tile {BN}")
    grid = (triton.cdiv(B, BM) * triton.cdiv(n, BN),)
    kw = {} if INTERPRET else {"num_stages": stages}
    _gemm_submax_kernel[grid](x, W, bias if bias is not None else x, pre, smax, B, n, d, W.stride(0), W.stride(1),
                              T, MODE=mode, HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, SUB=sub,
                              BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, GROUP_M=GM, num_warps=nw, **kw)
    return pre, smax


def submax(pre: torch.Tensor, mode: int, sub: int) -> torch.Tensor:
    """Sub-block maxima [B, ceil(n / sub)] (pre's dtype: exact) of pre (|pre| for mode 1) in one read."""
    B, n = pre.shape
    T = triton.cdiv(n, sub)
    smax = torch.empty((B, T), dtype=pre.dtype, device=pre.device)
    BB, BN = (min(_p2(B), 64), max(sub, min(_p2(n), 1024))) if INTERPRET else (2, max(sub, min(_p2(n), 512)))
    _submax_kernel[(triton.cdiv(B, BB),)](pre, smax, B, n, pre.stride(0), T, MODE=mode, SUB=sub, BLOCK_B=BB,
                                          BLOCK_N=BN, num_warps=4)
    return smax


def select_from_submax(pre: torch.Tensor, smax: torch.Tensor, k: int, mode: int, sub: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx [B, k] int64, raw values [B, k] in pre's dtype, flag [B] int32): the exact top k of each row, ordered,
    for every row not flagged; flagged rows are left for the fallback. No host sync."""
    B, n = pre.shape
    T = smax.shape[1]
    t1cap, tcap, C = tile_select_caps(k)
    KP = _p2(k)
    dev = pre.device
    BB = min(_p2(B), 16) if INTERPRET else 1
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
    _select_tiles_kernel[(triton.cdiv(B, BB),)](
        pre, smax, t1, k1, tid, hkey, hcol, kkey, kcol, idx, val, flag, B, n, pre.stride(0), T, k, MODE=mode,
        SHIFT=_shift(pre.dtype), SUB=sub, TP=_p2(T), G=KP, T1CAP=t1cap, TCAP=tcap, C=C, KP=KP, BLOCK_B=BB,
        num_warps=SELECT_WARPS)
    return idx, val, flag


def order_rows(pre: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, active: torch.Tensor, k: int, mode: int
               ) -> None:
    """Reorder (in place) the rows flagged in `active` by key, writing their raw values into val."""
    B = pre.shape[0]
    BB = min(_p2(B), 16) if INTERPRET else 1
    _order_rows_kernel[(triton.cdiv(B, BB),)](pre, idx, val, active, B, pre.stride(0), k, MODE=mode,
                                              SHIFT=_shift(pre.dtype), KP=_p2(k), BLOCK_B=BB, num_warps=4)


__all__ = ["gemm_submax", "submax", "select_from_submax", "order_rows", "submax_width", "tile_select_fits"]
