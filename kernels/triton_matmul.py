"""The encoder's pre-activations and their sub-block maxima by the faster of two routes on the GPU at hand.

Route "fused": our Triton matmul writes the maxima in its epilogue (`triton_tiles.gemm_submax`): no extra pass,
but only as fast as Triton's matmul is against cuBLAS on this GPU and Triton version (the cost model's ETA, never
measured before a GPU runs it). Route "cublas": torch's matmul, then one read pass for the maxima
(`triton_tiles.submax`). The fused route wins when Triton's matmul is within a few percent of cuBLAS's (about 7%
at (2304, 65536, 64) in bf16, by the cost model); otherwise the extra pass costs less than the slower matmul.
So on CUDA each shape is timed once, both ways, on its first call, and the faster route is kept for the
process. Both routes return the same numbers up to the matmul's rounding; the selection is exact either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from kernels import triton_tiles as tiles

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


def _fused(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, mode: int, sub: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    return tiles.gemm_submax(x, W, bias, mode, sub)


def _cublas(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, mode: int, sub: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    pre = torch.addmm(bias, x, W) if bias is not None else x @ W
    return pre, tiles.submax(pre, mode, sub)


ROUTES: dict[str, Callable] = {"fused": _fused, "cublas": _cublas}


def choose(key: tuple, runs: dict[str, Callable[[], object]]) -> str:
    """The route whose run is fastest (ties to the first), timed once per key and remembered. A route that fails
    (say the Triton kernel does not compile with the installed Triton) is dropped with a warning naming the
    error; if every route fails, the last error is raised."""
    if key not in _CHOICE:
        times, error = {}, None
        for name, run in runs.items():
            try:
                times[name] = _time_ms(run)
            except Exception as exc:  # noqa: BLE001  reported, and the other route serves
                error = exc
                warnings.warn(f"kernels: the {name!r} route to the encoder's pre-activations failed "
                              f"({type(exc).__name__}: {exc}); using the other route", RuntimeWarning, stacklevel=2)
        if not times:
            raise error
        _CHOICE[key] = min(times, key=times.get)
    return _CHOICE[key]


def matmul_with_maxima(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, mode: int, sub: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre = x @ W (+ bias) [B, n], its maxima over each `sub` columns [B, ceil(n / sub)]) by the faster route.
    Off CUDA, or while a CUDA graph is being captured, the fused route (no timing)."""
    route = ROUTE
    if route == "auto":
        if not x.is_cuda or torch.cuda.is_current_stream_capturing():
            route = "fused"
        else:
            key = (tuple(x.shape), tuple(W.shape), W.stride(), x.dtype, bias is not None, mode, sub, x.device)
            route = choose(key, {name: (lambda f=f: f(x, W, bias, mode, sub)) for name, f in ROUTES.items()})
    if route not in ROUTES:
        raise ValueError(f"kernels.triton_matmul.ROUTE is {route!r}: expected 'auto' or one of {sorted(ROUTES)}")
    return ROUTES[route](x, W, bias, mode, sub)
