"""Predicted peak memory of one training step (forward + backward), ours against sparsify's, by accounting.

What `bench/kernel_bench.py` measures with `peak_mib` is the most memory allocated during one fwd+bwd call beyond what
was allocated before it (parameters and the batch), gradients included. Here each library's step is walked phase
by phase, listing the tensors alive at that phase's high point (from the code: `kernels/encode_triton.py`,
`kernels/decode_triton.py`, `kernels/batch_select_triton.py` for ours; sparsify's `fused_encoder.py` and
`xformers.py`, as `bench/kernel_bench.py` calls them); the peak is the largest phase. Allocator rounding and torch's
workspaces are left out, so the figures are estimates to check against the measurement, not measurements.
"""

from __future__ import annotations

from bench.kernel_model.launches import BATCH_WIDTH
from kernels.blocks import batch_caps, cdiv, decode_chunk, decode_sse_blocks, p2, submax_width, tile_select_caps


def peak_ours(rule: str, d: int, n: int, k: int, B: int, es: int = 2) -> tuple[str, dict[str, float]]:
    """(phase, {tensor: bytes}) at our step's high point (no AuxK), for rule "row", "abs" or "batch"."""
    sub = submax_width(n, k)
    T = cdiv(n, sub)
    width = int(BATCH_WIDTH * k) if rule == "batch" else k
    code = B * width * (8 + es + 1)  # indices, values, the gradient mask (kept for the backward)
    x_in = B * d * es  # x - b_pre, kept for the backward
    if rule == "batch":
        tcap, ecap = batch_caps(k * B)
        scratch = tcap * 8 + ecap * 12 + B * width * 8 + B * 40  # the lists, the row scratch, the counters
    else:
        t1cap, tcap, c = tile_select_caps(k)
        scratch = B * (2 * t1cap + tcap + 2 * c + 2 * p2(k)) * 4 + B * 4
    select = {
        "x - b_pre": x_in,
        "pre [B, n]": B * n * es,
        "sub-block maxima": B * T * es,
        "selection scratch": scratch,
        "code": code,
    }
    chunks = cdiv(d, decode_chunk(n, d, es, decode_sse_blocks(width, d, es)[1], B * width))
    pairs = B * width * (4 + 8 + 4 + 4)  # sorted latents, order, tokens, coefficients
    backward = {
        "x - b_pre": x_in,
        "code": code,
        "x_hat and dY": 2 * B * d * es,
        "values' gradient (per d chunk)": chunks * B * width * 4,
        "sorted pairs": pairs,
        "W_enc and W_dec gradients": 2 * n * d * es,
        "bias gradients (fp32 sums)": n * 4 + 2 * d * es,
    }
    phases = {"selection (pre alive)": select, "backward (gradients alive)": backward}
    name = max(phases, key=lambda p: sum(phases[p].values()))
    return name, phases[name]


def peak_sparsify(d: int, n: int, k: int, B: int, es: int = 2) -> tuple[str, dict[str, float]]:
    """(phase, {tensor: bytes}) at sparsify's TopK step's high point (fused encoder + xformers decoder, as
    bench/kernel_bench.py runs it): relu(linear) holds two [B, n] while it runs and returns the pre-activations,
    which the step keeps until its backward is done; the encoder's backward builds the [B, k, d] products."""
    x_in, pre, code = B * d * es, B * n * es, B * k * (8 + es)
    forward = {"x - b_dec": x_in, "linear output and its ReLU": 2 * pre, "top-k values and indices": code}
    backward = {
        "x - b_dec": x_in,
        "pre-activations (returned, kept)": pre,
        "code": code,
        "x_hat and its gradient": 2 * B * d * es,
        "W_dec gradient": n * d * es,
        "decoder's row map and counts": B * k * 8 + (n + 1) * 4,
        "encoder's [B, k, d] contributions": B * k * d * es,
        "W_enc gradient": n * d * es,
    }
    phases = {"forward": forward, "encoder backward": backward}
    name = max(phases, key=lambda p: sum(phases[p].values()))
    return name, phases[name]


__all__ = ["peak_ours", "peak_sparsify"]
