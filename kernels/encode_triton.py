"""Encode on Triton: pre-activations and the selection in one forward; a backward only at the selected entries.

The forward computes `pre` (with the sub-block maxima beside it where the rule's exact path reads them:
encode_matmul_triton), selects the main code and AuxK's, and keeps no dense [B, n] tensor for the backward. The
backward turns the codes' gradients into x's (a gather-sum over W_enc's selected columns, decode_triton), and
W_enc's, b_enc's and b_pre's (written once per latent from the latent-sorted pairs, weight_grad_triton).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels import encode_matmul_triton as matmul
from kernels.batch_select_triton import select_batch
from kernels.blocks import batch_prune_fits, submax_width, tile_select_fits
from kernels.code import SparseCode
from kernels.decode_triton import gather_sum
from kernels.rules import RULES, Rule
from kernels.select_triton import aux_select, select
from kernels.submax_select_triton import topk_from_submax
from kernels.weight_grad_triton import sorted_pairs

FUSED_FP32 = False  # tests set this: the fused matmul + selection for fp32 too (on a GPU it serves 16-bit dtypes)


def _grad_mask(values: torch.Tensor, rule: Rule) -> torch.Tensor:
    """d value / d pre at each code entry: ReLU'd rules pass where the value is positive; signed fixed-width rules
    everywhere; the other signed rules everywhere but padding (value 0)."""
    if not rule.signed:
        return values > 0
    if rule.fixed_width:
        return torch.ones_like(values, dtype=torch.bool)
    return values != 0


def fused_applies(x: torch.Tensor, rule: str, k: int | None, n: int) -> bool:
    """The matmul with the sub-block maxima in its epilogue serves the row rules and BatchTopK in 16-bit dtypes
    (fp32 keeps torch's matmul, whose precision the user set), where their pruned selection fits."""
    if rule == "threshold":
        return False
    assert k is not None  # kernels.encode checked it: every other rule takes k
    fits = tile_select_fits(n, k) if rule in ("row", "abs") else rule == "batch" and batch_prune_fits(n, k)
    if not fits:
        return False
    return x.dtype in (torch.bfloat16, torch.float16) or FUSED_FP32


def _encode_forward(x, W_enc, b_enc, rule, k, threshold, dead, k_aux, route=None):
    """(code, aux) of x (already shifted by b_pre) with no autograd; `route` to the fused pre-activations as in
    encode_matmul_triton."""
    n = W_enc.shape[1]
    r = RULES[rule]
    if fused_applies(x, rule, k, n):
        mode = int(r.key == "magnitude")  # BatchTopK: the maxima of the raw values (ReLU'd where they are read)
        pre, smax = matmul.matmul_with_maxima(x, W_enc, b_enc, mode, submax_width(n, k), route)
        if rule == "batch":
            code = select_batch(pre, k, smax)
        else:
            idx, raw = topk_from_submax(pre, k, mode, smax)
            code = SparseCode(r.value(raw), idx)
    else:
        # the bias rides in cuBLAS's epilogue: no extra read + write of [B, n]
        pre = torch.addmm(b_enc, x, W_enc) if b_enc is not None else x @ W_enc
        code = select(pre, rule, k, threshold)
    aux = aux_select(pre, dead, k_aux, r.aux.signed) if dead is not None and k_aux >= 1 else None
    return code, aux


class EncodeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_pre, rule, k, threshold, dead, k_aux, route):
        x = x.contiguous()
        if b_pre is not None:
            x = (x - b_pre).contiguous()
        if 1 not in W_enc.stride():  # row- or column-major both feed the matmul and the gathers as they are
            W_enc = W_enc.contiguous()
        with torch.no_grad():
            code, aux = _encode_forward(x, W_enc, b_enc, rule, k, threshold, dead, k_aux, route)
        w = code.values.shape[1]
        if aux is not None:
            idx_all = torch.cat([code.indices, aux.indices], 1).contiguous()
            # AuxK's padding (past the dead count) is a constant: no gradient, also for "abs" entries
            live = torch.arange(aux.values.shape[1], device=x.device) < dead.sum()
            aux_mask = _grad_mask(aux.values, RULES[rule].aux) & live
            mask_all = torch.cat([_grad_mask(code.values, RULES[rule]), aux_mask], 1)
            aux_vals, aux_idx = aux.values, aux.indices
        else:
            idx_all = code.indices
            mask_all = _grad_mask(code.values, RULES[rule])
            aux_vals = code.values.new_zeros(code.values.shape[0], 0)
            aux_idx = code.indices.new_zeros(code.indices.shape[0], 0)
        ctx.save_for_backward(x, W_enc, idx_all, mask_all)
        ctx.w = w
        ctx.has_b = b_enc is not None
        ctx.mark_non_differentiable(code.indices, aux_idx)
        return code.values, code.indices, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, _gi, g_aux, _gai):
        x, W_enc, idx_all, mask_all = ctx.saved_tensors  # x: the input shifted by b_pre
        want_x, want_w, want_b, want_pre = ctx.needs_input_grad[:4]
        B = x.shape[0]
        if g_vals is None:
            g_vals = torch.zeros(B, ctx.w, dtype=x.dtype, device=x.device)
        gs = g_vals.float()
        if idx_all.shape[1] > ctx.w:
            ga = g_aux.float() if g_aux is not None else torch.zeros(B, idx_all.shape[1] - ctx.w, device=x.device)
            gs = torch.cat([gs, ga], 1)
        gs = torch.where(mask_all, gs, torch.zeros_like(gs)).contiguous()
        d, n = W_enc.shape
        gx = gW = gb = g_pre = None
        if want_x:  # grad_x[b] = sum_j gs[b, j] * W_enc[:, idx[b, j]]: a gather-sum over W_enc's columns
            if W_enc.stride(0) == 1:  # columns contiguous (W_enc is an [n, d] tensor's transpose): no copy
                gx = gather_sum(gs, idx_all, W_enc, W_enc.stride(1), 1, d, x.dtype)
            else:  # [d, n] row-major: columns strided by n would each touch their own sector; one copy
                W_t = W_enc.t().contiguous()
                gx = gather_sum(gs, idx_all, W_t, d, 1, d, x.dtype)
                del W_t
        # the latent sums of gs are b_enc's gradient, and (through W_enc) b_pre's: keep them in fp32
        want_sums = (want_b and ctx.has_b) or (want_pre and not want_x)
        wt_sums = None
        if want_w or want_sums:  # each latent's column written once, in W_enc's layout
            gW = torch.empty_like(W_enc)
            sums = torch.empty(n, dtype=torch.float32, device=x.device) if want_sums else None
            # b_pre's gradient without x's is -W_enc @ sums: the same launch reads W_enc's tiles for it (gW, an
            # empty_like of the dense W_enc, has its strides)
            fold = want_pre and not want_x
            wt_sums = sorted_pairs(idx_all, n).grad(gs, x, gW.t(), sums, W_enc.t() if fold else None)
            gW = gW if want_w else None
            if want_b and ctx.has_b:
                assert sums is not None  # want_sums
                gb = sums.to(W_enc.dtype)
        if want_pre:  # x - b_pre: b_pre's gradient is minus the input gradient summed over the batch
            summed = gx.float().sum(0) if gx is not None else wt_sums
            assert summed is not None  # without x's gradient, the launch above returned W_enc^T sums
            g_pre = (-summed).to(W_enc.dtype)
        return gx, gW, gb, g_pre, None, None, None, None, None, None


def encode(x, W_enc, b_enc, rule, k, threshold, dead, k_aux, b_pre=None, route=None) -> tuple[SparseCode, SparseCode | None]:
    """(code, AuxK code or None) of the pre-activations (x - b_pre) @ W_enc + b_enc; backward at those entries.
    `route`: forces a route to the fused pre-activations (encode_matmul_triton.ROUTES)."""
    vals, idx, aux_vals, aux_idx = EncodeFn.apply(x, W_enc, b_enc, b_pre, rule, k, threshold, dead, k_aux, route)
    aux = SparseCode(aux_vals, aux_idx) if aux_idx.shape[1] > 0 else None
    return SparseCode(vals, idx), aux


def difference_on_every_route(
    difference: Callable[[Callable], str | None], rule: str, k, threshold, dead, k_aux: int, fused: bool
) -> str | None:
    """The first-use check of `encode`: difference(run) (what differs from the twin, or None) with `run` the Triton
    encode on each route to the pre-activations the process may take: both where the fused matmul applies and
    no route is forced (the faster is chosen later, by timing the whole batch). A route that raises is left to
    that choice, which drops it with a warning, as long as another one agrees with the twin."""
    routes = list(matmul.ROUTES) if fused and matmul.ROUTE == "auto" else [None]
    errors = []
    for route in routes:

        def run(x, W, b, p, route=route):
            return encode(x, W, b, rule, k, threshold, dead, k_aux, p, route)

        try:
            diff = difference(run)
        except Exception as exc:  # noqa: BLE001  one failing route is the chooser's to drop
            if len(routes) == 1:
                raise
            errors.append(f"the {route} route raised {type(exc).__name__}: {exc}")
            continue
        if diff is not None:
            return diff if route is None else f"the {route} route: {diff}"
    return "; ".join(errors) if len(errors) == len(routes) else None
