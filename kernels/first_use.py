"""The Triton path proves itself before it is trusted: the first use in a process of each kernel path and shape
on CUDA runs once more on a small row slice, against the torch twin on the same slice.

Codes must be identical up to ties (index sets equal except among entries tied with the boundary: the k-th
value, or the threshold), values and gradients equal within a tolerance of the dtype. On a difference or an
exception, one warning names the kernel path and the difference, and that key takes the twin's path from then on.
The comparisons per op are in kernels/twin_compare.py. `SAE_KERNELS_CHECK`: "auto" (the default) checks on CUDA
only, "0" never, "1" everywhere (the tests, whose Triton runs in the CPU interpreter).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

CHECK = os.environ.get("SAE_KERNELS_CHECK", "auto")
MODES = ("auto", "0", "1")

_VERDICTS: dict[tuple, str | None] = {}  # key -> None (trusted) or the difference found


def on_cuda(t: torch.Tensor) -> bool:
    """Whether `t` lives on a CUDA device (the dispatch's "auto" and the check ask here; tests stand in a GPU)."""
    return t.is_cuda


def wanted(t: torch.Tensor) -> bool:
    """Whether a first use on `t` is checked."""
    if CHECK not in MODES:
        raise ValueError(f"SAE_KERNELS_CHECK={CHECK!r}: expected one of {MODES}")
    if CHECK == "0":
        return False
    return CHECK == "1" or on_cuda(t)


def trusted(key: tuple, name: str, t: torch.Tensor, check: Callable[[], str | None]) -> bool:
    """Whether the Triton path `key` may run. Its first checked use calls `check()` (the difference from the
    twin, or None); a difference or an exception is warned about once, naming `name`, and the key is then
    refused for the rest of the process. Unchecked uses (checking off, or a CUDA graph being captured, where a
    host read is not allowed) trust the path without recording a verdict."""
    if key in _VERDICTS:
        return _VERDICTS[key] is None
    if not wanted(t) or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
        return True
    try:
        diff = check()
    except Exception as exc:  # noqa: BLE001  the failure is the verdict, reported once
        diff = f"it raised {type(exc).__name__}: {exc}"
    _VERDICTS[key] = diff
    if diff is not None:
        warnings.warn(
            f"kernels: the Triton {name} failed its first-use check against the torch twin ({diff}); "
            "this process uses the twin for it",
            RuntimeWarning,
            stacklevel=3,
        )
    return diff is None


def fallbacks() -> dict[tuple, str]:
    """The keys whose first-use check failed, with the difference found (the benchmarks report them)."""
    return {key: diff for key, diff in _VERDICTS.items() if diff is not None}
