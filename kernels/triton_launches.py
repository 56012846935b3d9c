"""Every Triton launch the ops make on CUDA at a given size, with the block sizes the GPU path uses.

The compile test builds each of these for sm_90 (bf16 and fp32) and the cost model prices them; keeping the
list beside the kernels (block sizes from the same helpers the ops call) keeps the two from drifting apart.
Work and bytes follow the kernels' loops: a selection pass reads B*n values once, a gather reads B*k rows
of d values. Each launch's `work` lists the elements its innermost loops cover, in the loops' address order.
"""

from __future__ import annotations

import triton

from kernels.aot import Launch

# (d, n, k, B): the PERFORMANCE.md benchmark sizes
SIZES = [(768, 24576, 32, 4096), (768, 131072, 32, 4096), (2304, 65536, 64, 4096)]
DTYPES = {"bf16": ("*bf16", 2), "fp32": ("*fp32", 4)}
K_AUX = 256  # an AuxK width for the dead-latent path (training only)
PRUNE_MIN_N = 2048  # below this the selection bisects whole rows (a row is a few blocks)
# bisection passes over a row's keys: 16-fold narrowing per pass, bf16 keys hold 16 bits, fp32 keys 32
BISECT_PASSES = {"bf16": 4, "fp32": 8}


def _p2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def select_blocks(n: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_N, num_warps) of the selection kernels on a GPU."""
    return 2, min(_p2(n), 512), 4


def dense_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_D) of the gather / scatter kernels on a GPU."""
    return 16, min(_p2(d), 128)


def decode_sse_blocks(width: int, d: int, dtype_bytes: int = 2) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_D) of the fused decode + squared error: a [BLOCK_B, width, BLOCK_D] tile of gathered
    rows held in registers (about 8192 values for 4 warps in 16-bit, 4096 in fp32: no spills on sm_90)."""
    w = _p2(width)
    bd = min(_p2(d), 64)
    budget = 8192 if dtype_bytes <= 2 else 4096
    return max(1, min(16, budget // (w * bd))), bd


L2_BUDGET = 24 << 20  # bytes of W_dec columns one decode chunk may keep in L2 (an H100 has 50 MB in two halves)


def decode_chunk(n: int, d: int, dtype_bytes: int, block_d: int, uses: int, budget: int = L2_BUDGET) -> int:
    """Columns of W_dec [n, d] per chunk of the fused decode: all of d when W_dec fits in `budget` or the batch
    reads its rows fewer than twice on average (`uses` = B * width gathered rows: chunking would only re-read
    the code), else the largest power-of-two multiple of block_d whose n rows fit (at least block_d). Each W
    element is then read from DRAM about once, however often the batch uses its row."""
    if n * d * dtype_bytes <= budget or uses < 2 * n:
        return d
    chunk = block_d
    while n * 2 * chunk * dtype_bytes <= budget and 2 * chunk < d:
        chunk *= 2
    return chunk


def grad_blocks(d: int) -> tuple[int, int, int]:
    """(BLOCK_L latents, BLOCK_P pairs per step, BLOCK_D) of the latent-sorted weight-gradient kernel."""
    return 32, 32, min(_p2(d), 128)


def gemm_blocks(d: int, n: int, dtype, interpret: bool = False) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) of the fused encoder matmul. On sm_90 a
    128 x 128 tile over 8 warps compiles to wgmma (HGMMA) with 3 shared-memory stages and no spills; the
    interpreter takes large tiles (its cost is per program)."""
    if interpret:
        return 64, 128, 32, 8, 4, 1
    if str(dtype).endswith("float32"):
        return 64, 128, 32, 8, 8, 3
    return 128, 128, 64, 8, 8, 3


def submax_width(n: int, k: int) -> int:
    """Columns per sub-block of the maxima that prune the selection: about sqrt(n / 2k), so the row's maxima
    (n / SUB) and the candidate sub-blocks' entries (2k * SUB) are of one size; a power of two in [16, 128]
    (16 bf16 values fill one 32-byte sector), dividing the matmul's column tile."""
    target = max(1.0, (n / (2 * k)) ** 0.5)
    sub = 1 << max(0, int(target).bit_length() - 1)  # the power of two at or below
    return max(16, min(128, sub))


def tile_select_caps(k: int) -> tuple[int, int, int]:
    """What a row may keep before it falls back: 8k maxima at or above the first, cheap bound (about k ln(n /
    SUB / k) of them), 2k sub-blocks at or above t (k, plus ties among the maxima), 4k entries at or above t
    (about k)."""
    return _p2(8 * k), _p2(2 * k), _p2(4 * k)


SELECT_WARPS = 4  # warps per row of the pruned selection: its many row reductions stay within a warp (shuffles)


def tile_select_fits(n: int, k: int) -> bool:
    """The pruned selection runs when a row has several times more sub-blocks than it keeps and its buffers
    stay small enough for registers (at most 4096 maxima and 4096 candidate entries per row)."""
    sub = submax_width(n, k)
    tcap = tile_select_caps(k)[1]
    return n >= 4 * tcap * sub and triton.cdiv(n, sub) <= 4096 and tcap * sub <= 4096


def batch_prune_fits(n: int, k: int) -> bool:
    """BatchTopK's pruned selection (kernels/triton_batch.py) runs when a row holds at least 4k sub-blocks: the
    maxima are then a small fraction of the entries, and the listed sub-blocks (about k per row) fewer still."""
    return triton.cdiv(n, submax_width(n, k)) >= 4 * k


def batch_passes(shift: int) -> int:
    """Passes of a 16-way bisection over ReLU'd order keys (31 - shift bits: 4 for bf16, 5 fp16, 8 fp32)."""
    return -(-(31 - shift) // 4)


def batch_caps(total: int) -> tuple[int, int]:
    """(sub-blocks, entries) the pruned BatchTopK lists before it falls back: each is about total = k*B (plus ties
    at the bound), so twice and four times that, plus slack for small batches."""
    return 2 * total + 1024, 4 * total + 1024


def batch_blocks(sub: int) -> tuple[int, int, int, int]:
    """Block sizes of the pruned BatchTopK: keys per program of a counting pass and of the sub-block listing
    (large: each program first replays the bisection), sub-blocks per program of the entry listing (2048
    entries), candidates per step of the per-row write, keys per program (or step) of the per-row counts and
    of the budget (1024: 4096 spills there)."""
    return 4096, max(1, 2048 // sub), 64, 1024


def candidate_width(n: int, k: int) -> int:
    """Width C of the candidate buffer: 16k rounded up to a power of two, at least 256, at most n."""
    return min(_p2(n), max(256, _p2(16 * k)))


def _select_launches(dt: str, n: int, k: int, B: int) -> list[Launch]:
    P, es = DTYPES[dt]
    BB, BN, nw = select_blocks(n)
    C = candidate_width(n, k)
    tag = f"{dt} n={n} k={k}"
    tile = BB * BN
    passes = BISECT_PASSES[dt]
    out = []

    def compact(label, n_cols, width, mode, colmask="*i32", has_colmask=0, store=True, by_value=False,
                thrv=P, thr_strides=(0, 0), idx="*i64", active=False):
        sig = dict(pre_ptr=P, colmask_ptr=colmask, active_ptr="*i32", thr_ptr="*i32", cgt_ptr="*i32", budget_ptr="*i32",
                   thrv_ptr=thrv, thr_sb=thr_strides[0], thr_sn=thr_strides[1], idx_ptr=idx, ngt_ptr="*i32",
                   neq_ptr="*i32", B=B, n=n_cols, stride_b=n_cols, width=width)
        cx = dict(MODE=mode, SHIFT=16 if dt == "bf16" else 0, HAS_COLMASK=has_colmask, HAS_ACTIVE=active,
                  BY_VALUE=by_value,
                  STORE=store, BLOCK_B=BB, BLOCK_N=min(_p2(n_cols), BN))
        nbytes = B * n_cols * es + (B * width * 8 if store else B * 8)
        out.append(Launch(label, "_compact_kernel", sig, cx, nw, BB * min(_p2(n_cols), BN), (B * n_cols,), nbytes))

    def kth(label, n_cols, kk, mode, colmask="*i32", has_colmask=0, active=False):
        sig = dict(pre_ptr=P, colmask_ptr=colmask, active_ptr="*i32", thr_ptr="*i32", cgt_ptr="*i32", B=B,
                   n=n_cols, stride_b=n_cols, k=kk)
        cx = dict(MODE=mode, SHIFT=16 if dt == "bf16" else 0, HAS_COLMASK=has_colmask, HAS_ACTIVE=active,
                  BLOCK_B=BB, BLOCK_N=min(_p2(n_cols), BN), NPIV=16)
        out.append(Launch(label, "_row_kth_kernel", sig, cx, nw, BB * min(_p2(n_cols), BN),
                          (B * n_cols, B * n_cols * passes), B * n_cols * es * (1 + passes)))

    def candidates(label, kk, mode, colmask="*i32", has_colmask=False):
        width = candidate_width(n, kk)
        sig = dict(pre_ptr=P, colmask_ptr=colmask, z_ptr="*fp32", cand_ptr="*i64", cnt_ptr="*i32", B=B, n=n,
                   stride_b=n, width=width)
        cx = dict(MODE=mode, HAS_COLMASK=has_colmask, BLOCK_B=BB, BLOCK_N=BN)
        # two reads of the row; the candidates (about 2k per row) written once
        out.append(Launch(label, "_candidates_kernel", sig, cx, nw, tile, (B * n, B * n),
                          2 * B * n * es + B * 2 * kk * 8))

    for mode, fam in ((0, "row"), (1, "abs")):
        candidates(f"{fam} candidates {tag}", k, mode)
        kth(f"{fam} kth-on-candidates C={C} {tag}", C, k, mode, has_colmask=2)
        compact(f"{fam} compact-on-candidates {tag}", C, k, mode, has_colmask=2)
        # the fallback for rows over the candidate buffer (launched every step; rows not flagged return at once)
        kth(f"{fam} kth-full-row (fallback) {tag}", n, k, mode, active=True)
        compact(f"{fam} compact-full-row (fallback) {tag}", n, k, mode, active=True)
        kth(f"{fam} kth-full-row (n < {PRUNE_MIN_N}) {tag}", n, k, mode)
        compact(f"{fam} compact-full-row (n < {PRUNE_MIN_N}) {tag}", n, k, mode)
        candidates(f"{fam} auxk candidates {tag}", K_AUX, mode, colmask="*i8", has_colmask=True)
    sig = dict(pre_ptr=P, piv_ptr="*i64", counts_ptr="*i32", B=B, n=n, stride_b=n)
    cx = dict(SHIFT=16 if dt == "bf16" else 0, BLOCK_B=BB, BLOCK_N=BN, NPIV=16)
    out.append(Launch(f"batch count (x{passes} passes) {tag}", "_count_ge_kernel", sig, cx, nw, tile,
                      (B * n * passes,), B * n * es * passes))
    compact(f"batch count-only {tag}", n, 1, 2, store=False, idx="*i32")
    compact(f"batch compact {tag}", n, 3 * k + 1, 2)
    for strides, what in (((0, 0), "thr-scalar"), ((0, 1), "thr-latent"), ((1, 0), "stat")):
        compact(f"{what} count {tag}", n, 1, 0, store=False, by_value=True, thrv="*fp32", thr_strides=strides,
                idx="*i32")
        compact(f"{what} compact {tag}", n, k + 13, 0, by_value=True, thrv="*fp32", thr_strides=strides)
    return out


def _dense_launches(dt: str, d: int, n: int, k: int, B: int) -> list[Launch]:
    P, es = DTYPES[dt]
    BB, BD = dense_blocks(d)
    BL, BP, BDg = grad_blocks(d)
    tag = f"{dt} d={d} k={k}"
    work = (B * k * d,)
    reread = B * k * (8 + es) * triton.cdiv(d, BD)  # values and indices, once per d block
    pairs = B * k * 12  # sorted latent, token (int32) and coefficient (fp32) per pair
    gs = dict(B=B, width=k, d=d, s_wn=d, s_wd=1)
    # the weight-gradient kernel gathers rows of a [B, d] source that stays in L2 (6-19 MB here): its DRAM
    # bytes are the source once, the pairs, and the gradient written once
    rows = dict(lat_ptr="*i32", tok_ptr="*i32", coef_ptr="*fp32", off_ptr="*i32", src_ptr=P, out_ptr=P, n=n,
                d=d, part_ptr="*fp32")
    rows_cx = dict(DOT_BF16=dt == "bf16", BLOCK_L=BL, BLOCK_P=BP, BLOCK_D=BDg)
    grad_bytes = B * d * es + pairs + n * d * es
    return [
        Launch(f"decode fwd {tag}", "_gather_sum_kernel", dict(val_ptr=P, idx_ptr="*i64", w_ptr=P,
               out_ptr="*fp32", **gs), dict(BLOCK_B=BB, BLOCK_D=BD), 4, BB * BD, work,
               B * k * d * es + reread + 4 * B * d),
        Launch(f"decode bwd values {tag}", "_gather_dot_kernel", dict(g_ptr=P, idx_ptr="*i64", w_ptr=P,
               out_ptr="*fp32", **gs), dict(BLOCK_B=BB, BLOCK_D=BD), 4, BB * BD, work,
               B * d * es + B * k * d * es + B * k * 12),
        Launch(f"decode bwd W_dec {tag}", "_grad_rows_kernel", dict(rows, gb_ptr="*fp32", w_ptr=P, s_on=d, s_od=1),
               dict(rows_cx, HAS_BIAS=False, HAS_PRE=False), 4, BP * BDg, work, grad_bytes),
        Launch(f"encode bwd grad_x {tag}", "_gather_sum_kernel", dict(val_ptr="*fp32", idx_ptr="*i64", w_ptr=P,
               out_ptr="*fp32", **gs), dict(BLOCK_B=BB, BLOCK_D=BD), 4, BB * BD, work,
               B * k * d * es + reread + 4 * B * d),
        Launch(f"encode bwd W_enc, b_enc {tag}", "_grad_rows_kernel", dict(rows, gb_ptr=P, w_ptr=P, s_on=1, s_od=n),
               dict(rows_cx, HAS_BIAS=True, HAS_PRE=False), 4, BP * BDg, work, grad_bytes + n * es),
        # the training step's: b_pre's gradient folded in (W_enc's tiles read, one fp32 [d] partial per block)
        Launch(f"encode bwd W_enc, b_enc, b_pre {tag}", "_grad_rows_kernel",
               dict(rows, gb_ptr="*fp32", w_ptr=P, s_on=1, s_od=n), dict(rows_cx, HAS_BIAS=True, HAS_PRE=True), 4,
               BP * BDg, work, grad_bytes + n * 4 + n * d * es + triton.cdiv(n, BL) * d * 4),
    ]


def _tile_launches(dt: str, d: int, n: int, k: int, B: int) -> list[Launch]:
    """v4: the encoder matmul with sub-block maxima (16-bit only: fp32 keeps torch's matmul), the maxima pass
    of `select` on a given pre, the pruned selection, the fallback rows' ordering, the fused decode + error."""
    P, es = DTYPES[dt]
    sub = submax_width(n, k)
    T = triton.cdiv(n, sub)
    t1cap, tcap, C = tile_select_caps(k)
    KP = _p2(k)
    shift = 16 if dt == "bf16" else 0
    tag = f"{dt} n={n} k={k}"
    out = []
    if dt == "bf16":
        import torch

        BM, BN, BK, GM, nw, _ = gemm_blocks(d, n, torch.bfloat16)
        sig = dict(x_ptr=P, w_ptr=P, bias_ptr=P, pre_ptr=P, smax_ptr=P, B=B, n=n, d=d, s_wd=n, s_wn=1, T=T)
        programs = triton.cdiv(B, BM) * triton.cdiv(n, BN)
        for mode, fam in ((0, "row"), (1, "abs")):
            cx = dict(MODE=mode, HAS_BIAS=True, IEEE=False, SUB=sub, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, GROUP_M=GM)
            out.append(Launch(f"{fam} matmul + sub-block maxima d={d} {tag}", "_gemm_submax_kernel", sig, cx, nw,
                              BM * BN * BK, (B * n * d,), B * d * es + n * d * es + B * n * es + B * T * es, programs))
        cx = dict(MODE=0, HAS_BIAS=True, IEEE=False, SUB=sub, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, GROUP_M=GM,
                  WITH_SUBMAX=False)
        out.append(Launch(f"matmul alone (Triton baseline) d={d} {tag}", "_gemm_submax_kernel", sig, cx, nw,
                          BM * BN * BK, (B * n * d,), B * d * es + n * d * es + B * n * es, programs))
    BBs, BNs = 2, max(sub, min(_p2(n), 512))
    for mode, fam in ((0, "row"), (1, "abs")):
        out.append(Launch(f"{fam} sub-block maxima pass {tag}", "_submax_kernel",
                          dict(pre_ptr=P, smax_ptr=P, B=B, n=n, stride_b=n, T=T),
                          dict(MODE=mode, SUB=sub, BLOCK_B=BBs, BLOCK_N=BNs), 4, BBs * BNs,
                          (B * n,), B * n * es + B * T * es, triton.cdiv(B, BBs)))
        # bytes: the maxima, about k candidate sub-blocks (a sector at least each), scratch (about k ln k
        # maxima, k sub-blocks, k entries, each written and read), the [B, k] result.
        # No loops: the bisections over the first bound's maxima (T1CAP) and over the hits (C) are unrolled;
        # all of it is priced as code outside loops, once per program (a row)
        cand = B * k * max(sub * es, 32)
        scratch = B * (2 * 4 * k * 8 + k * 4 + 2 * k * 8 + 2 * k * 8) * 2
        out.append(Launch(f"{fam} select from maxima {tag}", "_select_tiles_kernel",
                          dict(pre_ptr=P, smax_ptr=P, t1_ptr="*i32", k1_ptr="*i32", tid_ptr="*i32", hkey_ptr="*i32",
                               hcol_ptr="*i32", kkey_ptr="*i32", kcol_ptr="*i32", idx_ptr="*i64", val_ptr=P,
                               flag_ptr="*i32", B=B, n=n, stride_b=n, T=T, k=k),
                          dict(MODE=mode, SHIFT=shift, SUB=sub, TP=_p2(T), G=KP, T1CAP=t1cap, TCAP=tcap, C=C, KP=KP,
                               BLOCK_B=1), SELECT_WARPS, 1, (),
                          B * T * es + cand + scratch + B * k * (8 + es) + B * 4, B))
        out.append(Launch(f"{fam} order fallback rows {tag}", "_order_rows_kernel",
                          dict(pre_ptr=P, idx_ptr="*i64", val_ptr=P, active_ptr="*i32", B=B, stride_b=n, k=k),
                          dict(MODE=mode, SHIFT=shift, KP=KP, BLOCK_B=1), 4, 1, (), B * 4, 0))
    BB, BD = decode_sse_blocks(k, d, es)
    chunk = decode_chunk(n, d, es, BD, B * k)
    chunks = triton.cdiv(d, chunk)
    # DRAM bytes: W_dec's used rows once (each chunk's columns stay in L2 while the batch gathers them; L2 hits
    # are not priced, as in the weight-gradient kernels), the code once per chunk, x_hat, dY and the target once,
    # the chunks' parts of the values' gradient
    out.append(Launch(f"decode + squared error {dt} d={d} k={k}", "_decode_sse_kernel",
                      dict(val_ptr=P, idx_ptr="*i64", w_ptr=P, bias_ptr=P, tgt_ptr=P, xhat_ptr=P, dy_ptr=P,
                           gval_ptr="*fp32", sse_ptr="*fp32", B=B, width=k, d=d, s_wn=d, s_wd=1, chunk=chunk),
                      dict(HAS_BIAS=True, BLOCK_B=BB, BLOCK_W=_p2(k), BLOCK_D=BD), 4, BB * _p2(k) * BD, (B * k * d,),
                      min(n, B * k) * d * es + chunks * B * k * (8 + es + 4) + 3 * B * d * es,
                      chunks * triton.cdiv(B, BB)))
    return out


BATCH_FILL = 1.1  # listed sub-blocks and candidate entries per kept entry, for pricing (Gaussian pre: 1.00-1.04)
BATCH_WIDTH = 1.7  # BatchTopK's code width (the largest row count) over k, for pricing (Gaussian pre: 1.55-1.72)
NPIV = 16  # pivots per pass of BatchTopK's bisections (kernels/triton_batch.py): a 16-fold narrowing


def _batch_launches(dt: str, n: int, k: int, B: int) -> list[Launch]:
    """v5: BatchTopK pruned by the sub-block maxima (kernels/triton_batch.py), one launch each (a counting pass
    is one of `batch_passes` alike). Every kernel first replays the bisection's counts (its first loop, NPIV
    per pass); what follows is code outside loops, once per program, except the budget's two loops over the
    rows and the write's loops over a row's candidates and its padding."""
    P, es = DTYPES[dt]
    shift = 16 if dt == "bf16" else 0
    sub = submax_width(n, k)
    T = triton.cdiv(n, sub)
    BT = B * T
    total = k * B
    tcap, ecap = batch_caps(total)
    passes = batch_passes(shift)
    live = int(BATCH_FILL * total)  # listed sub-blocks, and candidate entries
    width = int(BATCH_WIDTH * k)
    cb, eb, rb, sb = batch_blocks(sub)
    tprog, eprog = triton.cdiv(BT, cb), triton.cdiv(tcap, eb)
    tag = f"{dt} n={n} k={k}"
    cx = dict(BITS=31 - shift, NPIV=NPIV)
    out = []

    def add(label, kernel, sig, consts, programs, nbytes, loops=(), tiles=(), replayed=passes):
        replay = (programs * replayed * NPIV,)  # the replay of the bisection's passes so far
        out.append(Launch(f"batch {label} {tag}", kernel, sig, dict(cx, **consts), 4, (NPIV,) + tuple(tiles),
                          replay + tuple(loops), nbytes, programs))

    count_sig = dict(len_ptr="*i64", cap=ecap, counts_ptr="*i64", npass=2, total=total)
    add("count pass over the maxima", "_count_pass_kernel", dict(count_sig, key_ptr=P, len_ptr=P, cap=BT),
        dict(FROM_VALUES=True, SHIFT=shift, BLOCK=cb), tprog, BT * es, replayed=(passes - 1) / 2)
    tiles_sig = dict(smax_ptr=P, counts_ptr="*i64", npass=passes, total=total, pcnt_ptr="*i64", poff_ptr="*i64",
                     tid_ptr="*i64", tcap=tcap, BT=BT)
    for store in (False, True):
        add(f"list sub-blocks at or above t ({'write' if store else 'count'})", "_batch_tiles_kernel", tiles_sig,
            dict(STORE=store, SHIFT=shift, BLOCK=cb), tprog, BT * es + (live * 8 if store else tprog * 8))
    entries_sig = dict(pre_ptr=P, stride_b=n, n=n, T=T, tid_ptr="*i64", tlen_ptr="*i64", tcap=tcap,
                       counts_ptr="*i64", npass=passes, total=total, pcnt_ptr="*i64", poff_ptr="*i64",
                       eflat_ptr="*i64", ekey_ptr="*i32", ecap=ecap)
    for store in (False, True):
        add(f"list candidate entries ({'write' if store else 'count'})", "_batch_entries_kernel", entries_sig,
            dict(STORE=store, SHIFT=shift, SUB=sub, BLOCK_S=eb), eprog,
            live * (8 + max(sub * es, 32)) + (live * 12 if store else eprog * 8))
    add("count pass over the candidates", "_count_pass_kernel", dict(count_sig, key_ptr="*i32"),
        dict(FROM_VALUES=False, SHIFT=shift, BLOCK=cb), triton.cdiv(live, cb), live * 4, replayed=(passes - 1) / 2)
    add("per-row counts (atomics)", "_batch_row_counts_kernel",
        dict(eflat_ptr="*i64", ekey_ptr="*i32", elen_ptr="*i64", ecap=ecap, n=n, counts_ptr="*i64", npass=passes,
             total=total, ngt_ptr="*i32", neq_ptr="*i32", nall_ptr="*i32"), dict(BLOCK=sb), triton.cdiv(live, sb),
        live * 12 + B * 12)
    add("ties' budget per row, width, flag", "_batch_budget_kernel",
        dict(counts_ptr="*i64", npass=passes, total=total, tlen_ptr="*i64", tcap=tcap, elen_ptr="*i64", ecap=ecap,
             ngt_ptr="*i32", neq_ptr="*i32", nall_ptr="*i32", budget_ptr="*i32", count_ptr="*i64",
             start_ptr="*i64", out_ptr="*i64", B=B), dict(BLOCK=sb), 1, B * 40, (B, B), (sb, sb))
    # the write: a row's candidates (one loop), their ranking (k against k in [rb, rb] steps: the inner loop of
    # two), the padding
    add("write each row's columns, ranked", "_batch_write_kernel",
        dict(eflat_ptr="*i64", ekey_ptr="*i32", n=n, counts_ptr="*i64", npass=passes, total=total,
             budget_ptr="*i32", count_ptr="*i64", start_ptr="*i64", nall_ptr="*i32", kcol_ptr="*i32",
             kkey_ptr="*i32", pre_ptr=P, stride_b=n, idx_ptr="*i64", val_ptr=P, width=width),
        dict(BLOCK=rb), B, live * 12 + total * (8 + 8 + 32) + B * width * (8 + es) + B * 28,
        (live, B * triton.cdiv(k, rb) ** 2 * rb * rb, B * (width - k)), (rb, rb * rb, rb))
    return out


def launches(d: int, n: int, k: int, B: int, dt: str) -> list[Launch]:
    """Every launch of select / encode / decode (forward and backward) at one size and dtype."""
    return (_select_launches(dt, n, k, B) + _dense_launches(dt, d, n, k, B) + _tile_launches(dt, d, n, k, B)
            + _batch_launches(dt, n, k, B))


def benchmark_launches() -> list[Launch]:
    """The launches at the three benchmark sizes, bf16 and fp32."""
    return [la for dt in DTYPES for (d, n, k, B) in SIZES for la in launches(d, n, k, B, dt)]


def torch_op(label: str, nbytes: float, count: int = 1) -> list[Launch]:
    """A torch launch in the step, priced by the bytes it moves (kernel "" = not ours to compile)."""
    return [Launch(label, "", {}, {}, nbytes=nbytes)] * count


def _pick(all_launches: list[Launch], *prefixes: str) -> list[Launch]:
    out = []
    for p in prefixes:
        hit = [la for la in all_launches if la.label.startswith(p)]
        if len(hit) != 1:
            raise KeyError(f"{len(hit)} launches labelled {p!r}...")
        out += hit
    return out


def step_parts(rule: str, d: int, n: int, k: int, B: int, dt: str = "bf16") -> tuple[list[Launch], int]:
    """(launches in order, host syncs) of one forward + backward of encode -> decode -> squared error, as the
    benchmark times it (no AuxK; b_pre = b_dec handed to the encoder, the error from kernels.decode_sse). For the
    row rules and BatchTopK the first launch is the fused matmul (priced against the measured cuBLAS matmul by
    the model)."""
    _, es = DTYPES[dt]
    la = launches(d, n, k, B, dt)
    small = B * k * 8  # one [B, k] int64 / fp32 pass, order of magnitude
    shift = torch_op("x - b_pre", B * d * 2 * es)
    if rule in ("row", "abs"):
        fam = rule
        sel = _pick(la, f"{fam} select from maxima") \
            + [f._replace(work=(0,) * len(f.work), nbytes=B * 4)  # no row flagged: every program returns at once
               for f in _pick(la, f"{fam} kth-full-row (fallback)", f"{fam} compact-full-row (fallback)")] \
            + _pick(la, f"{fam} order fallback rows")
        fwd = shift + _pick(la, f"{fam} matmul + sub-block maxima") + sel \
            + torch_op("relu of the values, grad mask", small, 2 if fam == "row" else 1)
        syncs = 0
    elif rule == "batch":  # v5: pruned by the matmul's maxima
        passes = batch_passes(16 if dt == "bf16" else 0)
        sel = torch_op("zero the bisections' counts and the row counters", B * 24) \
            + _pick(la, "batch count pass over the maxima") * passes \
            + _pick(la, "batch list sub-blocks at or above t (count)") + torch_op("cumulative sum", B * 16) \
            + _pick(la, "batch list sub-blocks at or above t (write)", "batch list candidate entries (count)") \
            + torch_op("cumulative sum", B * 16) + _pick(la, "batch list candidate entries (write)") \
            + _pick(la, "batch count pass over the candidates") * passes \
            + _pick(la, "batch per-row counts", "batch ties' budget", "batch write each row's columns") \
            + torch_op("ReLU of the values (ordered in the kernel)", B * k * 4)
        fwd = shift + _pick(la, "row matmul + sub-block maxima") + sel + torch_op("grad mask", small)
        syncs = 1  # the code's width
        # the code is BATCH_WIDTH * k wide: the decode and gradients run over its padding too (instructions),
        # whose index 0 reads one cached row (no DRAM bytes past the k real entries per row)
        wide = launches(d, n, int(BATCH_WIDTH * k), B, dt)
        la = [w._replace(nbytes=r.nbytes) if w.label.split(" k=")[0] == r.label.split(" k=")[0] else w
              for w, r in zip(wide, la)]
    else:
        raise ValueError(f"no step model for rule {rule!r}")
    chunks = triton.cdiv(d, decode_chunk(n, d, es, decode_sse_blocks(k, d, es)[1], B * k))
    fwd += _pick(la, "decode + squared error") + torch_op("sum of the error's parts", 4096) \
        + (torch_op("sum of the d chunks' parts of the values' gradient", chunks * B * k * 4) if chunks > 1 else [])
    sort = torch_op("sort pairs by latent, block offsets, coef", B * k * 40, 5)
    bwd = torch_op("loss backward, scale the values' gradient and the coefficients", small, 3) + sort \
        + _pick(la, "decode bwd W_dec") + torch_op("grad b_dec (decoder): dY summed over the batch", B * d * es) \
        + torch_op("encode grad prep", small, 2) + _pick(la, "encode bwd W_enc, b_enc, b_pre") \
        + torch_op("grad b_pre: the latent blocks' parts summed", triton.cdiv(n, grad_blocks(d)[0]) * d * 4) \
        + torch_op("casts, b_dec's two gradients summed", 4 * d * 4, 3)
    return fwd + bwd, syncs


def select_parts(rule: str, n: int, k: int, B: int, dt: str = "bf16") -> tuple[list[Launch], int]:
    """(launches, host syncs) of the selection alone, as `kernels.select` runs it on a given pre."""
    if rule in ("row", "abs"):
        la = launches(768, n, k, B, dt)
        parts, _ = step_parts(rule, 768, n, k, B, dt)
        first = next(i for i, p in enumerate(parts) if p.label.startswith(f"{rule} select from maxima"))
        last = next(i for i, p in enumerate(parts) if p.label.startswith(f"{rule} order fallback rows"))
        return _pick(la, f"{rule} sub-block maxima pass") + parts[first:last + 1] \
            + torch_op("values gathered from pre (differentiable)", B * k * 16, 2), 0
    parts, syncs = step_parts(rule, 768, n, k, B, dt)
    first = next(i for i, p in enumerate(parts) if p.label.startswith("zero the bisections"))
    cut = next(i for i, p in enumerate(parts) if p.label.startswith("grad mask"))
    return _pick(launches(768, n, k, B, dt), "row sub-block maxima pass") + parts[first:cut], syncs
