"""The encoder's pre-activations and their sub-block maxima, by the faster of two routes on the GPU at hand.

Route "fused": a Triton matmul whose epilogue writes the maxima beside `pre` (`_gemm_submax_kernel`): no extra
pass, but only as fast as Triton's matmul is against cuBLAS on this GPU and Triton version. Route "cublas":
torch's matmul, then one read pass for the maxima (submax_select_triton.submax). So on CUDA each shape is timed
once, both ways, on its first call, and the faster route is kept for the process. Both routes return the same
numbers up to the matmul's rounding; the selection is exact either way.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from kernels.blocks import gemm_blocks
from kernels.submax_select_triton import submax
from kernels.triton_common import INTERPRET, to_storage


@triton.jit
def _gemm_submax_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    pre_ptr,
    smax_ptr,
    B,
    n,
    d,
    s_wd,
    s_wn,
    T,
    MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    SUB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    WITH_SUBMAX: tl.constexpr = True,
):
    """pre = x @ W (+ bias) for one [BLOCK_M, BLOCK_N] tile (x [B, d] row-major, W by strides), written in pre's
    dtype; the epilogue also writes the maximum of each SUB columns of each row (of |pre| for MODE 1) as
    rounded to pre's dtype, into smax [B, T] (same dtype: exact). Grouped tile order keeps a band of W's columns in
    L2. WITH_SUBMAX=False is the plain matmul: the cost model's baseline for what the epilogue adds (bench/kernel_model)."""
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
    tl.store(
        smax_ptr + rm[:, None].to(tl.int64) * T + sc[None, :],
        mx.to(smax_ptr.dtype.element_ty),
        mask=mm[:, None] & (sc < T)[None, :],
    )


def gemm_submax(
    x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, mode: int, sub: int
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
    _gemm_submax_kernel[grid](
        x,
        W,
        bias if bias is not None else x,
        pre,
        smax,
        B,
        n,
        d,
        W.stride(0),
        W.stride(1),
        T,
        MODE=mode,
        HAS_BIAS=bias is not None,
        IEEE=x.dtype == torch.float32,
        SUB=sub,
        BLOCK_M=BM,
        BLOCK_N=BN,
        BLOCK_K=BK,
        GROUP_M=GM,
        num_warps=nw,
        **kw,
    )
    return pre, smax


ROUTE = "auto"  # "fused" or "cublas" forces one (tests); "auto" times both once per shape on CUDA
TIMED_REPS = 3
_CHOICE: dict[tuple, str] = {}


def _time_ms(fn: Callable[[], object]) -> float:
    """Mean milliseconds of TIMED_REPS calls after one warm-up (which also compiles), by CUDA events."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TIMED_REPS):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / TIMED_REPS


def _fused(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, mode: int, sub: int) -> tuple[torch.Tensor, torch.Tensor]:
    return gemm_submax(x, W, bias, mode, sub)


def _cublas(
    x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, mode: int, sub: int
) -> tuple[torch.Tensor, torch.Tensor]:
    pre = torch.addmm(bias, x, W) if bias is not None else x @ W
    return pre, submax(pre, mode, sub)


ROUTES: dict[str, Callable] = {"fused": _fused, "cublas": _cublas}


def choose(key: tuple, runs: dict[str, Callable[[], object]]) -> str:
    """The route whose run is fastest (ties to the first), timed once per key and remembered. A route that fails
    (say the Triton kernel does not compile with the installed Triton) is dropped with a warning naming the
    error; if every route fails, the last error is raised."""
    if key not in _CHOICE:
        times: dict[str, float] = {}
        error: Exception | None = None
        for name, run in runs.items():
            try:
                times[name] = _time_ms(run)
            except Exception as exc:  # noqa: BLE001  reported, and the other route serves
                error = exc
                warnings.warn(
                    f"kernels: the {name!r} route to the encoder's pre-activations failed "
                    f"({type(exc).__name__}: {exc}); using the other route",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if not times:
            assert error is not None  # every route failed
            raise error
        _CHOICE[key] = min(times, key=times.__getitem__)
    return _CHOICE[key]


def matmul_with_maxima(
    x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, mode: int, sub: int, route: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre = x @ W (+ bias) [B, n], its maxima over each `sub` columns [B, ceil(n / sub)]) by `route`, else ROUTE:
    "auto" takes the faster; off CUDA, or while a CUDA graph is being captured, the fused route (no timing)."""
    route = route or ROUTE
    if route == "auto":
        if not x.is_cuda or torch.cuda.is_current_stream_capturing():
            route = "fused"
        else:
            key = (tuple(x.shape), tuple(W.shape), W.stride(), x.dtype, bias is not None, mode, sub, x.device)
            route = choose(key, {name: functools.partial(f, x, W, bias, mode, sub) for name, f in ROUTES.items()})
    if route not in ROUTES:
        raise ValueError(f"kernels.encode_matmul_triton.ROUTE is {route!r}: expected 'auto' or one of {sorted(ROUTES)}")
    return ROUTES[route](x, W, bias, mode, sub)
