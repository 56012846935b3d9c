"""The step model: which launches one training step makes, in order, as the cost model prices them.

A step is one forward + backward of encode -> decode -> squared error as the trainer runs it (b_pre = b_dec handed
to the encoder, the error from kernels.decode_sse), with AuxK's code over the dead latents beside the main one
(every training step selects it: the trainer always passes its dead mask) unless k_aux = 0, which is the step
`bench/kernel_bench.py` times. AuxK is priced with at least k_aux dead latents (its code full, no padding).
"""

from __future__ import annotations

from bench.kernel_model.launches import BATCH_WIDTH, DTYPES, K_AUX, Launch, launches
from kernels.blocks import batch_passes, cdiv, decode_chunk, decode_sse_blocks, grad_blocks


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


def step_parts(rule: str, d: int, n: int, k: int, B: int, dt: str = "bf16", k_aux: int = K_AUX) -> tuple[list[Launch], int]:
    """(launches in order, host syncs) of one training step's forward + backward (see the module docstring), with
    AuxK's code k_aux wide (0: none). For the row rules and BatchTopK the first launch is the fused matmul (priced
    against the measured cuBLAS matmul by the model)."""
    _, es = DTYPES[dt]
    la = launches(d, n, k, B, dt)
    width = int(BATCH_WIDTH * k) if rule == "batch" else k  # the main code's width
    small = B * k * 8  # one [B, k] int64 / fp32 pass, order of magnitude
    shift = torch_op("x - b_pre", B * d * 2 * es)
    if rule in ("row", "abs"):
        fam = rule
        sel = (
            _pick(la, f"{fam} select from maxima")
            + [
                f._replace(work=(0,) * len(f.work), nbytes=B * 4)  # no row flagged: every program returns at once
                for f in _pick(la, f"{fam} kth-full-row (fallback)", f"{fam} compact-full-row (fallback)")
            ]
            + _pick(la, f"{fam} order fallback rows")
        )
        fwd = (
            shift
            + _pick(la, f"{fam} matmul + sub-block maxima")
            + sel
            + torch_op("relu of the values, grad mask", small, 2 if fam == "row" else 1)
        )
        syncs = 0
    elif rule == "batch":  # pruned by the matmul's maxima
        passes = batch_passes(16 if dt == "bf16" else 0)
        sel = (
            torch_op("zero the bisections' counts and the row counters", B * 24)
            + _pick(la, "batch count pass over the maxima") * passes
            + _pick(la, "batch list sub-blocks at or above t (count)")
            + torch_op("cumulative sum", B * 16)
            + _pick(la, "batch list sub-blocks at or above t (write)", "batch list candidate entries (count)")
            + torch_op("cumulative sum", B * 16)
            + _pick(la, "batch list candidate entries (write)")
            + _pick(la, "batch count pass over the candidates") * passes
            + _pick(la, "batch per-row counts", "batch ties' budget", "batch write each row's columns")
            + torch_op("ReLU of the values (ordered in the kernel)", B * k * 4)
        )
        fwd = shift + _pick(la, "row matmul + sub-block maxima") + sel + torch_op("grad mask", small)
        syncs = 1  # the code's width
        # the code is BATCH_WIDTH * k wide: the decode and gradients run over its padding too (instructions),
        # whose index 0 reads one cached row (no DRAM bytes past the k real entries per row)
        wide = launches(d, n, int(BATCH_WIDTH * k), B, dt)
        la = [w._replace(nbytes=r.nbytes) if w.label.split(" k=")[0] == r.label.split(" k=")[0] else w for w, r in zip(wide, la)]
    else:
        raise ValueError(f"no step model for rule {rule!r}")
    chunks = cdiv(d, decode_chunk(n, d, es, decode_sse_blocks(k, d, es)[1], B * k))
    fwd += (
        _pick(la, "decode + squared error")
        + torch_op("sum of the error's parts", 4096)
        + (torch_op("sum of the d chunks' parts of the values' gradient", chunks * B * k * 4) if chunks > 1 else [])
    )
    sort = torch_op("sort pairs by latent, block offsets, coef", B * k * 40, 5)
    bwd = (
        torch_op("loss backward, scale the values' gradient and the coefficients", small, 3)
        + sort
        + _pick(la, "decode bwd W_dec")
        + torch_op("grad b_dec (decoder): dY summed over the batch", B * d * es)
    )
    encoder = torch_op("encode grad prep", small, 2) + _pick(la, "encode bwd W_enc, b_enc, b_pre")
    if k_aux:
        aux_fwd, aux_bwd, encoder = _auxk_parts("abs" if rule == "abs" else "row", d, n, k, width, k_aux, B, dt)
        fwd += aux_fwd
        bwd += aux_bwd
    bwd += (
        encoder
        + torch_op("grad b_pre: the latent blocks' parts summed", cdiv(n, grad_blocks(d)[0]) * d * 4)
        + torch_op("casts, b_dec's two gradients summed", 4 * d * 4, 3)
    )
    return fwd + bwd, syncs


def _auxk_parts(
    fam: str, d: int, n: int, k: int, width: int, k_aux: int, B: int, dt: str
) -> tuple[list[Launch], list[Launch], list[Launch]]:
    """(forward, decoder-side backward, encoder backward) of AuxK in a step: the bisection over the dead columns
    and the code's ordering, its decode and loss, their backward, and the encoder's backward over both codes
    (width + k_aux entries per row: its own latent sort, as the joined indices differ from the decoder's)."""
    _, es = DTYPES[dt]
    la = launches(d, n, k, B, dt)
    aux = launches(d, n, k_aux, B, dt)
    code = B * k_aux * (8 + es)
    fwd = (
        torch_op("AuxK: the dead mask as int8, the dead count", 3 * n, 2)
        + _pick(la, f"{fam} auxk kth over the dead columns", f"{fam} auxk compact over the dead columns")
        + torch_op("AuxK code: padding masked, values gathered and ReLU'd", 2 * code, 5)
        + torch_op("AuxK code: each row ordered (argsort of k_aux keys)", B * k_aux * 40)
        + torch_op("AuxK code: rows gathered in order", 2 * code, 2)
        + torch_op("main and AuxK codes joined, AuxK's gradient mask", B * (width + k_aux) * 18, 4)
        + _pick(aux, "decode fwd")
        + torch_op("AuxK decode: cast to the dtype", B * d * (4 + es))
        + torch_op("AuxK loss: the residual, its variance, the error's sum", 3 * B * d * es, 8)
    )
    bwd = (
        torch_op("AuxK loss backward", 3 * B * d * es, 3)
        + _pick(aux, "decode bwd values")
        + torch_op("sort AuxK's pairs by latent, block offsets, coef", B * k_aux * 40, 5)
        + _pick(aux, "decode bwd W_dec")
        + torch_op("W_dec's two gradients summed", 3 * n * d * es)
    )
    # the encoder's backward over both codes: instructions at the joined width, DRAM bytes at the real entries
    wide = _pick(launches(d, n, width + k_aux, B, dt), "encode bwd W_enc, b_enc, b_pre")[0]
    real = _pick(launches(d, n, k + k_aux, B, dt), "encode bwd W_enc, b_enc, b_pre")[0]
    encoder = (
        torch_op("encode grad prep: the two codes' gradients joined and masked", B * (width + k_aux) * 16, 3)
        + torch_op("sort the joined pairs by latent, block offsets, coef", B * (width + k_aux) * 40, 5)
        + [wide._replace(nbytes=real.nbytes)]
    )
    return fwd, bwd, encoder


def select_parts(rule: str, n: int, k: int, B: int, dt: str = "bf16") -> tuple[list[Launch], int]:
    """(launches, host syncs) of the selection alone, as `kernels.select` runs it on a given pre."""
    if rule in ("row", "abs"):
        la = launches(768, n, k, B, dt)
        parts, _ = step_parts(rule, 768, n, k, B, dt, k_aux=0)
        first = next(i for i, p in enumerate(parts) if p.label.startswith(f"{rule} select from maxima"))
        last = next(i for i, p in enumerate(parts) if p.label.startswith(f"{rule} order fallback rows"))
        return _pick(la, f"{rule} sub-block maxima pass") + parts[first : last + 1] + torch_op(
            "values gathered from pre (differentiable)", B * k * 16, 2
        ), 0
    parts, syncs = step_parts(rule, 768, n, k, B, dt, k_aux=0)
    first = next(i for i, p in enumerate(parts) if p.label.startswith("zero the bisections"))
    cut = next(i for i, p in enumerate(parts) if p.label.startswith("grad mask"))
    return _pick(launches(768, n, k, B, dt), "row sub-block maxima pass") + parts[first:cut], syncs
