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


def grad_blocks(d: int) -> tuple[int, int, int]:
    """(BLOCK_L latents, BLOCK_P pairs per step, BLOCK_D) of the latent-sorted weight-gradient kernel."""
    return 32, 32, min(_p2(d), 128)


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
                d=d)
    rows_cx = dict(DOT_BF16=dt == "bf16", BLOCK_L=BL, BLOCK_P=BP, BLOCK_D=BDg)
    grad_bytes = B * d * es + pairs + n * d * es
    return [
        Launch(f"decode fwd {tag}", "_gather_sum_kernel", dict(val_ptr=P, idx_ptr="*i64", w_ptr=P,
               out_ptr="*fp32", **gs), dict(BLOCK_B=BB, BLOCK_D=BD), 4, BB * BD, work,
               B * k * d * es + reread + 4 * B * d),
        Launch(f"decode bwd values {tag}", "_gather_dot_kernel", dict(g_ptr=P, idx_ptr="*i64", w_ptr=P,
               out_ptr="*fp32", **gs), dict(BLOCK_B=BB, BLOCK_D=BD), 4, BB * BD, work,
               B * d * es + B * k * d * es + B * k * 12),
        Launch(f"decode bwd W_dec {tag}", "_grad_rows_kernel", dict(rows, gb_ptr="*fp32", s_on=d, s_od=1),
               dict(rows_cx, HAS_BIAS=False), 4, BP * BDg, work, grad_bytes),
        Launch(f"encode bwd grad_x {tag}", "_gather_sum_kernel", dict(val_ptr="*fp32", idx_ptr="*i64", w_ptr=P,
               out_ptr="*fp32", **gs), dict(BLOCK_B=BB, BLOCK_D=BD), 4, BB * BD, work,
               B * k * d * es + reread + 4 * B * d),
        Launch(f"encode bwd W_enc, b_enc {tag}", "_grad_rows_kernel", dict(rows, gb_ptr=P, s_on=1, s_od=n),
               dict(rows_cx, HAS_BIAS=True), 4, BP * BDg, work, grad_bytes + n * es),
    ]


def launches(d: int, n: int, k: int, B: int, dt: str) -> list[Launch]:
    """Every launch of select / encode / decode (forward and backward) at one size and dtype."""
    return _select_launches(dt, n, k, B) + _dense_launches(dt, d, n, k, B)


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
    benchmark times it (no AuxK); the encoder matmul itself is left out (it is the reference)."""
    _, es = DTYPES[dt]
    C = candidate_width(n, k)
    la = launches(d, n, k, B, dt)
    small = B * k * 8  # one [B, k] int64 / fp32 pass, order of magnitude
    nd = n * d
    if rule in ("row", "abs"):
        fam = rule
        sel = _pick(la, f"{fam} candidates") + torch_op("candidate mask, gather", 2 * B * C * 8, 2) \
            + _pick(la, f"{fam} kth-on-candidates", f"{fam} compact-on-candidates") \
            + [f._replace(work=(0,) * len(f.work), nbytes=B * 4)  # no row flagged: every program returns at once
               for f in _pick(la, f"{fam} kth-full-row (fallback)", f"{fam} compact-full-row (fallback)")] \
            + torch_op("fallback flags, carried z update", B * 16, 6) \
            + torch_op("gather, argsort and reorder of [B, k]", small, 6)
        syncs = 0
    elif rule == "batch":
        sel = torch_op("max of pre", B * n * es) + _pick(la, "batch count (") \
            + torch_op("pivots and narrowing on the device", 256, 6 * BISECT_PASSES[dt]) \
            + _pick(la, "batch count-only") + torch_op("tie budget", B * 16, 5) + _pick(la, "batch compact") \
            + torch_op("gather, argsort and reorder of [B, w]", small, 8)
        syncs = 1  # the code's width
    else:
        raise ValueError(f"no step model for rule {rule!r}")
    fwd = sel + torch_op("grad masks, cat", small, 2) + _pick(la, "decode fwd") \
        + torch_op("x_hat cast + b_dec", B * d * (4 + 2 * es), 2) + torch_op("loss", B * d * 3 * es, 3)
    sort = torch_op("sort pairs by latent, block offsets, coef", B * k * 40, 5)
    bwd = torch_op("loss backward", B * d * 3 * es, 3) + _pick(la, "decode bwd values") + sort \
        + _pick(la, "decode bwd W_dec") + torch_op("encode grad prep", small, 3) \
        + torch_op("W_enc transposed copy ([d, n] row-major only)", 2 * nd * es) \
        + _pick(la, "encode bwd grad_x") + sort + _pick(la, "encode bwd W_enc") \
        + torch_op("grad b_dec, grad x", B * d * 2 * es, 2)
    return fwd + bwd, syncs


def select_parts(rule: str, n: int, k: int, B: int, dt: str = "bf16") -> tuple[list[Launch], int]:
    """(launches, host syncs) of the selection alone, as `kernels.select` runs it."""
    parts, syncs = step_parts(rule, 768, n, k, B, dt)
    cut = next(i for i, p in enumerate(parts) if p.label.startswith("grad masks"))
    return parts[:cut], syncs
