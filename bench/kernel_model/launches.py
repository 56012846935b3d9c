"""Every Triton launch the ops make on CUDA at a given size, with the block sizes the GPU path uses.

The compile check builds each of these for sm_90 (bf16 and fp32) and the cost model prices them. Block sizes and
path predicates come from `kernels.blocks`, the same helpers the ops call, so the catalogue and the kernels do not
drift apart. Work and bytes follow the kernels' loops: a selection pass reads B*n values once, a gather reads B*k
rows of d values. Each launch's `work` lists the elements its innermost loops cover, in the loops' address order.
"""

from __future__ import annotations

from typing import NamedTuple

from kernels.blocks import (
    NPIV,
    SELECT_WARPS,
    batch_blocks,
    batch_caps,
    batch_passes,
    cdiv,
    decode_chunk,
    decode_sse_blocks,
    dense_blocks,
    gemm_blocks,
    grad_blocks,
    p2,
    select_blocks,
    submax_width,
    tile_select_caps,
)

# (d, n, k, B): the PERFORMANCE.md benchmark sizes
SIZES = [(768, 24576, 32, 4096), (768, 131072, 32, 4096), (2304, 65536, 64, 4096)]
DTYPES = {"bf16": ("*bf16", 2), "fp32": ("*fp32", 4)}
K_AUX = 256  # AuxK's width (TrainConfig's default k_aux): the dead-latent code of every training step
# bisection passes over a row's keys: 16-fold narrowing per pass, bf16 keys hold 16 bits, fp32 keys 32
BISECT_PASSES = {"bf16": 4, "fp32": 8}
BATCH_FILL = 1.1  # listed sub-blocks and candidate entries per kept entry, for pricing (Gaussian pre: 1.00-1.04)
BATCH_WIDTH = 1.7  # BatchTopK's code width (the largest row count) over k, for pricing (Gaussian pre: 1.55-1.72)


class Launch(NamedTuple):
    """One kernel launch as the ops make it: what to compile, and what the cost model needs to price it.

    signature: runtime parameters, each a type string ("*bf16", "i32", "i64") or an example int (specialized as
    the JIT does: 1 becomes a constant, a multiple of 16 is marked divisible by 16). tile: elements one
    iteration of each innermost loop handles (per program; one number for every loop, or one per loop); work:
    elements each innermost loop covers in all (summed over programs and passes), in address order of the loops;
    nbytes: DRAM bytes the launch moves; programs: the grid's size, which prices the code outside the loops
    (0: not priced). kernel "": a torch launch, priced by its bytes only.
    """

    label: str
    kernel: str
    signature: dict
    constexprs: dict
    num_warps: int = 4
    tile: int | tuple[int, ...] = 1
    work: tuple[float, ...] = ()
    nbytes: float = 0.0
    programs: int = 0

    def tiles(self) -> tuple[int, ...]:
        """The tile of each innermost loop."""
        return self.tile if isinstance(self.tile, tuple) else (self.tile,) * len(self.work)


def _select_launches(dt: str, n: int, k: int, B: int) -> list[Launch]:
    P, es = DTYPES[dt]
    BB, BN, nw = select_blocks(n)
    tag = f"{dt} n={n} k={k}"
    tile = BB * BN
    shift = 16 if dt == "bf16" else 0
    passes = BISECT_PASSES[dt]
    out = []

    def compact(
        label,
        n_cols,
        width,
        mode,
        colmask="*i32",
        has_colmask=False,
        store=True,
        by_value=False,
        thrv=P,
        thr_strides=(0, 0),
        idx="*i64",
        active=False,
    ):
        sig = dict(
            pre_ptr=P,
            colmask_ptr=colmask,
            active_ptr="*i32",
            thr_ptr="*i32",
            cgt_ptr="*i32",
            budget_ptr="*i32",
            thrv_ptr=thrv,
            thr_sb=thr_strides[0],
            thr_sn=thr_strides[1],
            idx_ptr=idx,
            ngt_ptr="*i32",
            neq_ptr="*i32",
            B=B,
            n=n_cols,
            stride_b=n_cols,
            width=width,
        )
        cx = dict(
            MODE=mode,
            SHIFT=shift,
            HAS_COLMASK=has_colmask,
            HAS_ACTIVE=active,
            BY_VALUE=by_value,
            STORE=store,
            BLOCK_B=BB,
            BLOCK_N=min(p2(n_cols), BN),
        )
        nbytes = B * n_cols * es + (B * width * 8 if store else B * 8)
        out.append(Launch(label, "_compact_kernel", sig, cx, nw, BB * min(p2(n_cols), BN), (B * n_cols,), nbytes))

    def kth(label, n_cols, kk, mode, colmask="*i32", has_colmask=False, active=False):
        sig = dict(
            pre_ptr=P,
            colmask_ptr=colmask,
            active_ptr="*i32",
            thr_ptr="*i32",
            cgt_ptr="*i32",
            B=B,
            n=n_cols,
            stride_b=n_cols,
            k=kk,
        )
        cx = dict(
            MODE=mode, SHIFT=shift, HAS_COLMASK=has_colmask, HAS_ACTIVE=active, BLOCK_B=BB, BLOCK_N=min(p2(n_cols), BN), NPIV=16
        )
        out.append(
            Launch(
                label,
                "_row_kth_kernel",
                sig,
                cx,
                nw,
                BB * min(p2(n_cols), BN),
                (B * n_cols, B * n_cols * passes),
                B * n_cols * es * (1 + passes),
            )
        )

    for mode, fam in ((0, "row"), (1, "abs")):
        # the fallback for rows the sub-block maxima cannot answer (launched every step; rows not flagged return
        # at once), and the bisection of rows too short to prune
        kth(f"{fam} kth-full-row (fallback) {tag}", n, k, mode, active=True)
        compact(f"{fam} compact-full-row (fallback) {tag}", n, k, mode, active=True)
        kth(f"{fam} kth-full-row (no pruning) {tag}", n, k, mode)
        compact(f"{fam} compact-full-row (no pruning) {tag}", n, k, mode)
        # AuxK: the bisection over the dead columns (an int8 column mask), K_AUX wide
        kth(f"{fam} auxk kth over the dead columns {tag}", n, K_AUX, mode, colmask="*i8", has_colmask=True)
        compact(f"{fam} auxk compact over the dead columns {tag}", n, K_AUX, mode, colmask="*i8", has_colmask=True)
    sig = dict(pre_ptr=P, piv_ptr="*i64", counts_ptr="*i64", B=B, n=n, stride_b=n)
    cx = dict(SHIFT=shift, BLOCK_B=BB, BLOCK_N=BN, NPIV=16)
    out.append(
        Launch(
            f"batch count (x{passes} passes) {tag}", "_count_ge_kernel", sig, cx, nw, tile, (B * n * passes,), B * n * es * passes
        )
    )
    compact(f"batch count-only {tag}", n, 1, 2, store=False, idx="*i32")
    compact(f"batch compact {tag}", n, 3 * k + 1, 2)
    for strides, what in (((0, 0), "thr-scalar"), ((0, 1), "thr-latent"), ((1, 0), "stat")):
        compact(f"{what} count {tag}", n, 1, 0, store=False, by_value=True, thrv="*fp32", thr_strides=strides, idx="*i32")
        compact(f"{what} compact {tag}", n, k + 13, 0, by_value=True, thrv="*fp32", thr_strides=strides)
    return out


def _dense_launches(dt: str, d: int, n: int, k: int, B: int) -> list[Launch]:
    P, es = DTYPES[dt]
    BB, BD = dense_blocks(d)
    BL, BP, BDg = grad_blocks(d)
    tag = f"{dt} d={d} k={k}"
    work = (B * k * d,)
    reread = B * k * (8 + es) * cdiv(d, BD)  # values and indices, once per d block
    pairs = B * k * 12  # sorted latent, token (int32) and coefficient (fp32) per pair
    gs = dict(B=B, width=k, d=d, s_wn=d, s_wd=1)
    # the weight-gradient kernel gathers rows of a [B, d] source that stays in L2 (6-19 MB here): its DRAM
    # bytes are the source once, the pairs, and the gradient written once
    rows = dict(
        lat_ptr="*i32", tok_ptr="*i32", coef_ptr="*fp32", off_ptr="*i32", src_ptr=P, out_ptr=P, n=n, d=d, part_ptr="*fp32"
    )
    rows_cx = dict(DOT_BF16=dt == "bf16", BLOCK_L=BL, BLOCK_P=BP, BLOCK_D=BDg)
    grad_bytes = B * d * es + pairs + n * d * es
    return [
        Launch(
            f"decode fwd {tag}",
            "_gather_sum_kernel",
            dict(val_ptr=P, idx_ptr="*i64", w_ptr=P, out_ptr="*fp32", **gs),
            dict(BLOCK_B=BB, BLOCK_D=BD),
            4,
            BB * BD,
            work,
            B * k * d * es + reread + 4 * B * d,
        ),
        Launch(
            f"decode bwd values {tag}",
            "_gather_dot_kernel",
            dict(g_ptr=P, idx_ptr="*i64", w_ptr=P, out_ptr="*fp32", **gs),
            dict(BLOCK_B=BB, BLOCK_D=BD),
            4,
            BB * BD,
            work,
            B * d * es + B * k * d * es + B * k * 12,
        ),
        Launch(
            f"decode bwd W_dec {tag}",
            "_grad_rows_kernel",
            dict(rows, gb_ptr="*fp32", w_ptr=P, s_on=d, s_od=1),
            dict(rows_cx, HAS_BIAS=False, HAS_PRE=False),
            4,
            BP * BDg,
            work,
            grad_bytes,
        ),
        Launch(
            f"encode bwd grad_x {tag}",
            "_gather_sum_kernel",
            dict(val_ptr="*fp32", idx_ptr="*i64", w_ptr=P, out_ptr="*fp32", **gs),
            dict(BLOCK_B=BB, BLOCK_D=BD),
            4,
            BB * BD,
            work,
            B * k * d * es + reread + 4 * B * d,
        ),
        Launch(
            f"encode bwd W_enc, b_enc {tag}",
            "_grad_rows_kernel",
            dict(rows, gb_ptr=P, w_ptr=P, s_on=1, s_od=n),
            dict(rows_cx, HAS_BIAS=True, HAS_PRE=False),
            4,
            BP * BDg,
            work,
            grad_bytes + n * es,
        ),
        # the training step's: b_pre's gradient folded in (W_enc's tiles read, one fp32 [d] partial per block)
        Launch(
            f"encode bwd W_enc, b_enc, b_pre {tag}",
            "_grad_rows_kernel",
            dict(rows, gb_ptr="*fp32", w_ptr=P, s_on=1, s_od=n),
            dict(rows_cx, HAS_BIAS=True, HAS_PRE=True),
            4,
            BP * BDg,
            work,
            grad_bytes + n * 4 + n * d * es + cdiv(n, BL) * d * 4,
        ),
    ]


def _submax_launches(dt: str, d: int, n: int, k: int, B: int) -> list[Launch]:
    """The encoder matmul with sub-block maxima (16-bit only: fp32 keeps torch's matmul), the maxima pass of
    `select` on a given pre, the selection read off the maxima, the fallback rows' ordering, the fused decode +
    error."""
    P, es = DTYPES[dt]
    sub = submax_width(n, k)
    T = cdiv(n, sub)
    t1cap, tcap, C = tile_select_caps(k)
    KP = p2(k)
    shift = 16 if dt == "bf16" else 0
    tag = f"{dt} n={n} k={k}"
    out = []
    if dt == "bf16":
        BM, BN, BK, GM, nw, _ = gemm_blocks(d, n, "torch.bfloat16")
        sig = dict(x_ptr=P, w_ptr=P, bias_ptr=P, pre_ptr=P, smax_ptr=P, B=B, n=n, d=d, s_wd=n, s_wn=1, T=T)
        programs = cdiv(B, BM) * cdiv(n, BN)
        for mode, fam in ((0, "row"), (1, "abs")):
            cx = dict(MODE=mode, HAS_BIAS=True, IEEE=False, SUB=sub, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, GROUP_M=GM)
            out.append(
                Launch(
                    f"{fam} matmul + sub-block maxima d={d} {tag}",
                    "_gemm_submax_kernel",
                    sig,
                    cx,
                    nw,
                    BM * BN * BK,
                    (B * n * d,),
                    B * d * es + n * d * es + B * n * es + B * T * es,
                    programs,
                )
            )
        cx = dict(MODE=0, HAS_BIAS=True, IEEE=False, SUB=sub, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, GROUP_M=GM, WITH_SUBMAX=False)
        out.append(
            Launch(
                f"matmul alone (Triton baseline) d={d} {tag}",
                "_gemm_submax_kernel",
                sig,
                cx,
                nw,
                BM * BN * BK,
                (B * n * d,),
                B * d * es + n * d * es + B * n * es,
                programs,
            )
        )
    BBs, BNs = 2, max(sub, min(p2(n), 512))
    for mode, fam in ((0, "row"), (1, "abs")):
        out.append(
            Launch(
                f"{fam} sub-block maxima pass {tag}",
                "_submax_kernel",
                dict(pre_ptr=P, smax_ptr=P, B=B, n=n, stride_b=n, T=T),
                dict(MODE=mode, SUB=sub, BLOCK_B=BBs, BLOCK_N=BNs),
                4,
                BBs * BNs,
                (B * n,),
                B * n * es + B * T * es,
                cdiv(B, BBs),
            )
        )
        # bytes: the maxima, about k candidate sub-blocks (a sector at least each), scratch (about k ln k
        # maxima, k sub-blocks, k entries, each written and read), the [B, k] result.
        # No loops: the bisections over the first bound's maxima (T1CAP) and over the hits (C) are unrolled;
        # all of it is priced as code outside loops, once per program (a row)
        cand = B * k * max(sub * es, 32)
        scratch = B * (2 * 4 * k * 8 + k * 4 + 2 * k * 8 + 2 * k * 8) * 2
        out.append(
            Launch(
                f"{fam} select from maxima {tag}",
                "_select_from_maxima_kernel",
                dict(
                    pre_ptr=P,
                    smax_ptr=P,
                    t1_ptr="*i32",
                    k1_ptr="*i32",
                    tid_ptr="*i32",
                    hkey_ptr="*i32",
                    hcol_ptr="*i32",
                    kkey_ptr="*i32",
                    kcol_ptr="*i32",
                    idx_ptr="*i64",
                    val_ptr=P,
                    flag_ptr="*i32",
                    B=B,
                    n=n,
                    stride_b=n,
                    T=T,
                    k=k,
                ),
                dict(MODE=mode, SHIFT=shift, SUB=sub, TP=p2(T), G=KP, T1CAP=t1cap, TCAP=tcap, C=C, KP=KP, BLOCK_B=1),
                SELECT_WARPS,
                1,
                (),
                B * T * es + cand + scratch + B * k * (8 + es) + B * 4,
                B,
            )
        )
        out.append(
            Launch(
                f"{fam} order fallback rows {tag}",
                "_order_rows_kernel",
                dict(pre_ptr=P, idx_ptr="*i64", val_ptr=P, active_ptr="*i32", B=B, stride_b=n, k=k),
                dict(MODE=mode, SHIFT=shift, KP=KP, BLOCK_B=1),
                4,
                1,
                (),
                B * 4,
                0,
            )
        )
    BB, BD = decode_sse_blocks(k, d, es)
    chunk = decode_chunk(n, d, es, BD, B * k)
    chunks = cdiv(d, chunk)
    # DRAM bytes: W_dec's used rows once (each chunk's columns stay in L2 while the batch gathers them; L2 hits
    # are not priced, as in the weight-gradient kernels), the code once per chunk, x_hat, dY and the target once,
    # the chunks' parts of the values' gradient
    out.append(
        Launch(
            f"decode + squared error {dt} d={d} k={k}",
            "_decode_sse_kernel",
            dict(
                val_ptr=P,
                idx_ptr="*i64",
                w_ptr=P,
                bias_ptr=P,
                tgt_ptr=P,
                xhat_ptr=P,
                dy_ptr=P,
                gval_ptr="*fp32",
                sse_ptr="*fp32",
                B=B,
                width=k,
                d=d,
                s_wn=d,
                s_wd=1,
                chunk=chunk,
            ),
            dict(HAS_BIAS=True, BLOCK_B=BB, BLOCK_W=p2(k), BLOCK_D=BD),
            4,
            BB * p2(k) * BD,
            (B * k * d,),
            min(n, B * k) * d * es + chunks * B * k * (8 + es + 4) + 3 * B * d * es,
            chunks * cdiv(B, BB),
        )
    )
    return out


def _batch_launches(dt: str, n: int, k: int, B: int) -> list[Launch]:
    """BatchTopK pruned by the sub-block maxima (kernels/batch_select_triton.py), one launch each (a counting pass
    is one of `batch_passes` alike). Every kernel first replays the bisection's counts (its first loop, NPIV
    per pass); what follows is code outside loops, once per program, except the budget's two loops over the
    rows and the write's loops over a row's candidates and its padding."""
    P, es = DTYPES[dt]
    shift = 16 if dt == "bf16" else 0
    sub = submax_width(n, k)
    T = cdiv(n, sub)
    BT = B * T
    total = k * B
    tcap, ecap = batch_caps(total)
    passes = batch_passes(shift)
    live = int(BATCH_FILL * total)  # listed sub-blocks, and candidate entries
    width = int(BATCH_WIDTH * k)
    cb, eb, rb, sb = batch_blocks(sub)
    tprog, eprog = cdiv(BT, cb), cdiv(tcap, eb)
    tag = f"{dt} n={n} k={k}"
    cx = dict(BITS=31 - shift, NPIV=NPIV)
    out = []

    def add(label, kernel, sig, consts, programs, nbytes, loops=(), tiles=(), replayed=passes):
        replay = (programs * replayed * NPIV,)  # the replay of the bisection's passes so far
        out.append(
            Launch(
                f"batch {label} {tag}",
                kernel,
                sig,
                dict(cx, **consts),
                4,
                (NPIV,) + tuple(tiles),
                replay + tuple(loops),
                nbytes,
                programs,
            )
        )

    count_sig = dict(len_ptr="*i64", cap=ecap, counts_ptr="*i64", npass=2, total=total)
    add(
        "count pass over the maxima",
        "_count_pass_kernel",
        dict(count_sig, key_ptr=P, len_ptr=P, cap=BT),
        dict(FROM_VALUES=True, SHIFT=shift, BLOCK=cb),
        tprog,
        BT * es,
        replayed=(passes - 1) / 2,
    )
    tiles_sig = dict(
        smax_ptr=P,
        counts_ptr="*i64",
        npass=passes,
        total=total,
        pcnt_ptr="*i64",
        poff_ptr="*i64",
        tid_ptr="*i64",
        tcap=tcap,
        BT=BT,
    )
    for store in (False, True):
        add(
            f"list sub-blocks at or above t ({'write' if store else 'count'})",
            "_batch_subblocks_kernel",
            tiles_sig,
            dict(STORE=store, SHIFT=shift, BLOCK=cb),
            tprog,
            BT * es + (live * 8 if store else tprog * 8),
        )
    entries_sig = dict(
        pre_ptr=P,
        stride_b=n,
        n=n,
        T=T,
        tid_ptr="*i64",
        tlen_ptr="*i64",
        tcap=tcap,
        counts_ptr="*i64",
        npass=passes,
        total=total,
        pcnt_ptr="*i64",
        poff_ptr="*i64",
        eflat_ptr="*i64",
        ekey_ptr="*i32",
        ecap=ecap,
    )
    for store in (False, True):
        add(
            f"list candidate entries ({'write' if store else 'count'})",
            "_batch_entries_kernel",
            entries_sig,
            dict(STORE=store, SHIFT=shift, SUB=sub, BLOCK_S=eb),
            eprog,
            live * (8 + max(sub * es, 32)) + (live * 12 if store else eprog * 8),
        )
    add(
        "count pass over the candidates",
        "_count_pass_kernel",
        dict(count_sig, key_ptr="*i32"),
        dict(FROM_VALUES=False, SHIFT=shift, BLOCK=cb),
        cdiv(live, cb),
        live * 4,
        replayed=(passes - 1) / 2,
    )
    add(
        "per-row counts (atomics)",
        "_batch_row_counts_kernel",
        dict(
            eflat_ptr="*i64",
            ekey_ptr="*i32",
            elen_ptr="*i64",
            ecap=ecap,
            n=n,
            counts_ptr="*i64",
            npass=passes,
            total=total,
            ngt_ptr="*i32",
            neq_ptr="*i32",
            nall_ptr="*i32",
        ),
        dict(BLOCK=sb),
        cdiv(live, sb),
        live * 12 + B * 12,
    )
    add(
        "ties' budget per row, width, flag",
        "_batch_budget_kernel",
        dict(
            counts_ptr="*i64",
            npass=passes,
            total=total,
            tlen_ptr="*i64",
            tcap=tcap,
            elen_ptr="*i64",
            ecap=ecap,
            ngt_ptr="*i32",
            neq_ptr="*i32",
            nall_ptr="*i32",
            budget_ptr="*i32",
            count_ptr="*i64",
            start_ptr="*i64",
            out_ptr="*i64",
            B=B,
        ),
        dict(BLOCK=sb),
        1,
        B * 40,
        (B, B),
        (sb, sb),
    )
    # the write: a row's candidates (one loop), their ranking (k against k in [rb, rb] steps: the inner loop of
    # two), the padding
    add(
        "write each row's columns, ranked",
        "_batch_write_kernel",
        dict(
            eflat_ptr="*i64",
            ekey_ptr="*i32",
            n=n,
            counts_ptr="*i64",
            npass=passes,
            total=total,
            budget_ptr="*i32",
            count_ptr="*i64",
            start_ptr="*i64",
            nall_ptr="*i32",
            kcol_ptr="*i32",
            kkey_ptr="*i32",
            pre_ptr=P,
            stride_b=n,
            idx_ptr="*i64",
            val_ptr=P,
            width=width,
        ),
        dict(BLOCK=rb),
        B,
        live * 12 + total * (8 + 8 + 32) + B * width * (8 + es) + B * 28,
        (live, B * cdiv(k, rb) ** 2 * rb * rb, B * (width - k)),
        (rb, rb * rb, rb),
    )
    return out


def launches(d: int, n: int, k: int, B: int, dt: str) -> list[Launch]:
    """Every launch of select / encode / decode (forward and backward) at one size and dtype."""
    return (
        _select_launches(dt, n, k, B)
        + _dense_launches(dt, d, n, k, B)
        + _submax_launches(dt, d, n, k, B)
        + _batch_launches(dt, n, k, B)
    )


def benchmark_launches() -> list[Launch]:
    """The launches at the three benchmark sizes, bf16 and fp32."""
    return [la for dt in DTYPES for (d, n, k, B) in SIZES for la in launches(d, n, k, B, dt)]
