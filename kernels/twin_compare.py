"""How the first-use check (kernels/first_use.py) compares a Triton result with the torch twin's on a row slice.

Each `*_difference` runs the Triton op (a callable handed in, so this module never imports Triton) and the twin
on the first ROWS rows, and returns what differs, or None. Codes: identical up to ties with the boundary (the
k-th score, or the threshold); values and gradients: within the dtype's tolerance (TOL). The gradients are
compared with the twin's at the Triton code's own entries, under one set of random output weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.code import SparseCode
from kernels.decode_twin import decode_twin
from kernels.encode_twin import Encoding, encode_twin, pre_activations, with_gradient
from kernels.encode_twin import aux_select as aux_select_twin
from kernels.rules import RULES, Rule, aux_rule
from kernels.select_twin import select_by_rule, stat_threshold

ROWS = 64  # rows of the slice
# relative tolerance of values and gradients (norm of the difference over the twin's); in encode, also the band
# around the boundary where the two paths, whose pre-activations round differently, may choose differently
TOL = {torch.float32: 1e-3, torch.float64: 1e-9, torch.bfloat16: 5e-2, torch.float16: 2e-2}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """|a - ref| / |ref| in the Frobenius norm, in float64."""
    a, ref = a.detach().double(), ref.detach().double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _entries(code: SparseCode, live: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] bool: where the code's real entries (`live` [B, w]) sit."""
    B = code.indices.shape[0]
    mask = torch.zeros(B, n, dtype=torch.bool, device=code.indices.device)
    rows = torch.arange(B, device=mask.device)[:, None].expand_as(live)
    mask[rows[live], code.indices[live]] = True
    return mask


def _live(code: SparseCode, rule: Rule) -> torch.Tensor:
    """[B, w] bool: a fixed-width code's entries are all real; a variable-width code's are its non-zero ones."""
    return torch.ones_like(code.values, dtype=torch.bool) if rule.fixed_width else code.values != 0


def _lowest_kept(score: torch.Tensor, code: SparseCode, live: torch.Tensor, per_row: bool) -> torch.Tensor:
    """The least score among the code's real entries, per row ([B, 1]) or over the batch ([1, 1]); NaN where none
    (no entry is then near it)."""
    kept = torch.where(live, score.gather(1, code.indices), torch.full_like(score[:, :1], float("inf")))
    low = kept.amin(1, keepdim=True) if per_row else kept.amin().reshape(1, 1)
    return torch.where(torch.isinf(low), torch.full_like(low, float("nan")), low)


def compare_codes(
    tri: SparseCode,
    twin: SparseCode,
    pre: torch.Tensor,
    rule: Rule,
    live_tri: torch.Tensor,
    live_twin: torch.Tensor,
    boundary: torch.Tensor,
    band: float,
    count: str | None,
) -> str | None:
    """What differs between two codes of `pre` [B, n] by `rule`, or None: the same entries except among those
    whose score lies within `band` (relative) of `boundary` (broadcast to [B, n]), no index twice in a row, as
    many entries per row (count "row") or in all ("total"), the Triton code's values the rule's values of
    `pre` at its entries, and zero-valued padding."""
    B, n = pre.shape
    if tri.values.shape != tri.indices.shape or tri.indices.shape[0] != B:
        return f"a code of shape {tuple(tri.values.shape)} / {tuple(tri.indices.shape)} for {B} rows"
    if rule.fixed_width and tri.indices.shape != twin.indices.shape:
        return f"width {tri.indices.shape[1]}, expected {twin.indices.shape[1]}"
    if bool(((tri.indices < 0) | (tri.indices >= n))[live_tri].any()):
        return "an index out of range"
    m_tri, m_twin = _entries(tri, live_tri, n), _entries(twin, live_twin, n)
    if not torch.equal(m_tri.sum(1), live_tri.sum(1)):
        return "a latent kept twice in a row"
    if count == "row" and not torch.equal(m_tri.sum(1), m_twin.sum(1)):
        return "rows hold other counts of entries than the twin's"
    if count == "total" and int(m_tri.sum()) != int(m_twin.sum()):
        return f"{int(m_tri.sum())} entries kept in all, the twin {int(m_twin.sum())}"
    score = rule.score(pre.detach()).double()
    b = boundary.double().expand(B, n)
    near = (score - b).abs() <= band * (b.abs() + score.abs().mean())
    off = (m_tri ^ m_twin) & ~near
    if bool(off.any()):
        r, c = (int(i) for i in off.nonzero()[0])
        which = "Triton" if bool(m_tri[r, c]) else "the twin"
        return f"only {which} keeps latent {c} of row {r} (score {float(score[r, c]):.6g}, boundary {float(b[r, c]):.6g})"
    got = tri.values[live_tri]
    want = rule.value(pre.detach().gather(1, tri.indices.clamp(0, n - 1)))[live_tri]
    tol = TOL.get(pre.dtype, 1e-3)
    if got.numel() and rel(got, want) > tol:
        return f"values differ from the pre-activations' by {rel(got, want):.2e} (relative; tolerance {tol:.0e})"
    if bool((tri.values[~live_tri] != 0).any()):
        return "padding holds non-zero values"
    return None


def compare_tensors(named: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]], dtype: torch.dtype) -> str | None:
    """The first of the named (Triton, twin) pairs that differ by more than the dtype's tolerance, or None."""
    tol = TOL.get(dtype, 1e-3)
    for name, (got, want) in named.items():
        if (got is None) != (want is None):
            return f"{name}: {'none' if got is None else 'one where the twin has none'}"
        if got is None:
            continue
        assert want is not None  # both or neither, checked above
        if got.shape != want.shape:
            return f"{name} of shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if not bool(torch.isfinite(got).all()):
            return f"{name} holds non-finite values"
        if rel(got, want) > tol and bool((got != want).any()):
            return f"{name} differs by {rel(got, want):.2e} (relative; tolerance {tol:.0e})"
    return None


def _boundary(pre: torch.Tensor, twin: SparseCode, live: torch.Tensor, rule: str, k: int | None, threshold) -> torch.Tensor:
    """Where `rule` cuts `pre`: the twin's k-th score per row (row, abs), its least kept score over the batch
    (batch), the threshold (threshold, stat)."""
    r = RULES[rule]
    if rule == "threshold":
        thr = torch.as_tensor(threshold, dtype=pre.dtype, device=pre.device).double()
        return thr.reshape(1, -1) if thr.dim() else thr.reshape(1, 1)
    if rule == "stat":
        assert k is not None  # kernels.select checked it
        return stat_threshold(pre, k)[:, None]
    return _lowest_kept(r.score(pre).double(), twin, live, per_row=r.over == "row")


def _check_code(tri: SparseCode, twin: SparseCode, pre: torch.Tensor, rule: str, k, threshold, band: float) -> str | None:
    r = RULES[rule]
    live_tri, live_twin = _live(tri, r), _live(twin, r)
    count = "row" if r.fixed_width else "total" if rule == "batch" and band == 0 else None
    return compare_codes(tri, twin, pre, r, live_tri, live_twin, _boundary(pre, twin, live_twin, rule, k, threshold), band, count)


def _check_aux(
    tri: SparseCode, twin: SparseCode, pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool, band: float
) -> str | None:
    r = aux_rule(signed)
    width = min(k_aux, pre.shape[1])
    if tri.indices.shape[1] != width:
        return f"AuxK code of width {tri.indices.shape[1]}, expected min(k_aux, n) = {width}"
    live = (torch.arange(width, device=pre.device) < dead.sum())[None, :].expand(pre.shape[0], width)
    if not bool(dead[tri.indices[live]].all()):
        return "AuxK keeps a latent that is not dead"
    score = r.score(pre).double().masked_fill(~dead, float("nan"))
    boundary = _lowest_kept(score, twin, live, per_row=True)
    diff = compare_codes(tri, twin, pre, r, live, live, boundary, band, "row")
    return None if diff is None else f"AuxK: {diff}"


def select_difference(run: Callable[[torch.Tensor], SparseCode], pre: torch.Tensor, rule: str, k, threshold) -> str | None:
    """Triton's `select` (run) against the twin's on the first rows of pre: the same code (ties exactly)."""
    rows = pre[:ROWS].detach()
    return _check_code(run(rows), select_by_rule(rows, rule, k, threshold), rows, rule, k, threshold, 0.0)


def aux_difference(
    run: Callable[[torch.Tensor], SparseCode], pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool
) -> str | None:
    """Triton's `aux_select` (run) against the twin's on the first rows of pre."""
    rows = pre[:ROWS].detach()
    twin = aux_select_twin(rows, dead, k_aux, signed)
    assert twin is not None  # kernels.aux_select returns None for k_aux < 1 before any check
    return _check_aux(run(rows), twin, rows, dead, k_aux, signed, 0.0)


def _leaves(tensors: tuple, wants: tuple) -> list:
    return [None if t is None else t.detach().requires_grad_(w) for t, w in zip(tensors, wants)]


def _grads(loss: torch.Tensor, leaves: list) -> list:
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(loss, wanted, allow_unused=True)) if wanted else iter(())
    return [next(got) if t is not None and t.requires_grad else None for t in leaves]


def _weights(like: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(like.shape, generator=g, device=like.device, dtype=torch.float32)


def encode_difference(
    run: Callable[..., tuple[SparseCode, SparseCode | None]],
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc,
    rule: str,
    k,
    threshold,
    dead,
    k_aux: int,
    b_pre,
) -> str | None:
    """Triton's `encode` (run(x, W_enc, b_enc, b_pre)) against the twin on the first rows of x: the codes (ties
    within the band rounding allows), the values, and the gradients the caller's tensors ask for (x, W_enc,
    b_enc, b_pre), against the twin's at the Triton codes' entries."""
    r = RULES[rule]
    dtype = W_enc.dtype
    band = TOL.get(dtype, 1e-3)
    tensors = (x[:ROWS], W_enc, b_enc, b_pre)
    wants = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in tensors)
    with torch.enable_grad():
        lt = _leaves(tensors, wants)
        code, aux = run(*lt)
    with torch.no_grad():
        xs, W = x[:ROWS].detach(), W_enc.detach()
        b, p = (None if t is None else t.detach() for t in (b_enc, b_pre))
        twin = encode_twin(xs, W, b, rule, k, threshold, dead, k_aux, p)
        pre = pre_activations(xs, W, b, p)
    if (aux is None) != (twin.aux is None):
        return f"AuxK code {'missing' if aux is None else 'where the twin has none'}"
    diff = _check_code(code, twin.code, pre, rule, k, threshold, band)
    if diff is None and aux is not None:
        assert twin.aux is not None  # both or neither, checked above
        diff = _check_aux(aux, twin.aux, pre, dead, k_aux, r.aux.signed, band)
    if diff is not None or not any(wants):
        return diff
    weights = [_weights(code.values, 1)] + ([_weights(aux.values, 2)] if aux is not None else [])

    def loss(enc: Encoding) -> torch.Tensor:
        parts = [enc.code] + ([enc.aux] if enc.aux is not None else [])
        return sum(((c.values.float() * w).sum() for c, w in zip(parts, weights)), weights[0].new_zeros(()))

    got = _grads(loss(Encoding(code, aux)), lt)
    with torch.enable_grad():
        lw = _leaves(tensors, wants)
        detached = Encoding(
            SparseCode(code.values.detach(), code.indices), None if aux is None else SparseCode(aux.values.detach(), aux.indices)
        )
        ref = with_gradient(
            lw[0], lw[1], lw[2], pre_activations(*lw), detached, relu=not r.signed, aux_relu=not r.aux.signed, b_pre=lw[3]
        )
        want = _grads(loss(ref), lw)
    names = ("x's gradient", "W_enc's gradient", "b_enc's gradient", "b_pre's gradient")
    return compare_tensors(dict(zip(names, zip(got, want))), dtype)


def decode_difference(run: Callable[..., torch.Tensor], code: SparseCode, W_dec: torch.Tensor, b_dec) -> str | None:
    """Triton's `decode` (run(code, W_dec, b_dec)) against the twin on the first rows of the code: x_hat and the
    gradients the caller's tensors ask for (values, W_dec, b_dec), under random output weights."""
    tensors = (code.values[:ROWS], W_dec, b_dec)
    wants = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in tensors)
    idx = code.indices[:ROWS]
    out = {}
    for name, fn in (("triton", run), ("twin", decode_twin)):
        with torch.enable_grad():
            v, W, b = _leaves(tensors, wants)
            x_hat = fn(SparseCode(v, idx), W, b)
            grads = _grads((x_hat.float() * _weights(x_hat, 3)).sum(), [v, W, b]) if any(wants) else [None] * 3
        out[name] = [x_hat] + grads
    names = ("x_hat", "the values' gradient", "W_dec's gradient", "b_dec's gradient")
    return compare_tensors(dict(zip(names, zip(out["triton"], out["twin"]))), W_dec.dtype)


def decode_sse_difference(
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]], code: SparseCode, W_dec: torch.Tensor, b_dec, target: torch.Tensor
) -> str | None:
    """Triton's `decode_sse` (run(code, W_dec, b_dec, target)) against the twin on the first rows: x_hat, the
    squared error and the gradients of the error the caller's tensors ask for (values, W_dec, b_dec, target)."""
    tensors = (code.values[:ROWS], W_dec, b_dec, target[:ROWS])
    wants = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in tensors)
    idx = code.indices[:ROWS]

    def twin(c, W, b, t):
        x_hat = decode_twin(c, W, b)
        return x_hat, (x_hat - t).float().pow(2).sum()

    out = {}
    for name, fn in (("triton", run), ("twin", twin)):
        with torch.enable_grad():
            v, W, b, t = _leaves(tensors, wants)
            x_hat, sse = fn(SparseCode(v, idx), W, b, t)
            grads = _grads(sse, [v, W, b, t]) if any(wants) else [None] * 4
        out[name] = [x_hat, sse] + grads
    names = (
        "x_hat",
        "the squared error",
        "the values' gradient",
        "W_dec's gradient",
        "b_dec's gradient",
        "the target's gradient",
    )
    return compare_tensors(dict(zip(names, zip(out["triton"], out["twin"]))), W_dec.dtype)
