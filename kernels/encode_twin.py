"""Plain-torch encode: pre-activations, then the selection rule (and the AuxK selection beside it).

The backward is sparse, as the Triton kernel's: the dense [B, n] pre-activations are computed without
autograd, and only the selected entries (main and AuxK codes) carry gradient back to x, W_enc and b_enc.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels.code import SparseCode
from kernels.decode_twin import decode_twin
from kernels.rules import RULES, aux_rule
from kernels.select_twin import select_by_rule

# rank-one rows materialised at once by the W_enc gradient's index-add (bounds its memory to ~32 MB in fp32)
_INDEX_ADD_ELEMENTS = 1 << 23


class Encoding(NamedTuple):
    """The main code and, when dead latents were given, the AuxK code over them."""

    code: SparseCode
    aux: SparseCode | None


def aux_select(pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool = False) -> SparseCode | None:
    """AuxK's code: each row's min(k_aux, n) largest entries among the dead latents (by magnitude when signed),
    ordered; past the dead count, zero-valued padding at index 0. Fixed width, so the dead count never reaches
    the host (the Triton path returns the same). None when k_aux < 1."""
    if k_aux < 1:
        return None
    rule = aux_rule(signed)
    width = min(k_aux, pre.shape[1])
    score = rule.score(pre).masked_fill(~dead, float("-inf"))
    indices = score.topk(width, dim=-1, sorted=True).indices
    live = torch.arange(width, device=pre.device) < dead.sum()  # [width]: the first min(dead, width) are real
    indices = torch.where(live, indices, torch.zeros_like(indices))
    values = rule.value(pre.gather(1, indices))
    return SparseCode(torch.where(live, values, torch.zeros_like(values)), indices)


def _scatter_rows(idx: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    """out[i] = sum over (b, j) with idx[b, j] = i of grad[b, j] * x[b]: the index-add of B*m rank-one rows, [n, d].

    On CPU in float32/64 the entries are sorted by latent and each latent's rows gathered and summed by
    embedding_bag (a segmented gather-sum, no B*m*d temporary); otherwise chunked index-adds."""
    B, m = idx.shape
    flat = idx.flatten()
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        order = flat.to(torch.int32 if n < 2**31 else torch.int64).argsort()  # int32 keys sort faster
        offsets = torch.searchsorted(flat[order], torch.arange(n, device=flat.device))
        return F.embedding_bag(order // m, x, offsets, per_sample_weights=grad.flatten()[order], mode="sum")
    out = x.new_zeros(n, x.shape[1])
    rows = max(1, _INDEX_ADD_ELEMENTS // max(1, m * x.shape[1]))
    for g_c, i_c, x_c in zip(grad.split(rows), idx.split(rows), x.split(rows)):
        out.index_add_(0, i_c.flatten(), (g_c[:, :, None] * x_c[:, None, :]).flatten(0, 1))
    return out


_TRANSPOSE_BLOCK = 512  # source rows per block: a [512, d] slab stays in cache while it is written out


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """t.T as a contiguous tensor. A tall CPU tensor ([n, d], n > d) is copied in blocks of source rows:
    torch's one-pass transposed copy strides across the whole output and was measured at 132 ms against 81 ms
    for [24576, 768] (fresh output each time). For a wide one the blocks measured slower than torch's copy."""
    rows, cols = t.shape
    if t.device.type != "cpu" or rows < cols or rows <= _TRANSPOSE_BLOCK:
        return t.t().contiguous()
    out = t.new_empty(cols, rows)
    for start in range(0, rows, _TRANSPOSE_BLOCK):
        out[:, start : start + _TRANSPOSE_BLOCK].copy_(t[start : start + _TRANSPOSE_BLOCK].t())
    return out


class _GatherPre(torch.autograd.Function):
    """pre[b, idx[b, j]] of pre = (x - b_pre) @ W_enc (+ b_enc), given pre; the backward reads only those
    entries: grad x = gather-sum of W_enc's selected columns, grad W_enc = index-add of B*m rank-one rows,
    grad b_enc = index-add of the entries' gradients, grad b_pre = -W_enc @ that index-add (or minus grad x
    summed over the batch when x needs its own). B*m*d work where autograd of the dense pre would do two
    B*n*d matmuls."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_pre, pre, indices):  # noqa: ANN001, ANN205 - autograd signature
        x_in = x.detach() - b_pre.detach() if b_pre is not None else x.detach()
        ctx.save_for_backward(x_in, W_enc, indices)
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x_in, W_enc, idx = ctx.saved_tensors
        n = W_enc.shape[1]
        grad = grad.contiguous()
        want_x, want_w, want_b, want_pre = ctx.needs_input_grad[:4]
        gx = gW = gb = gp = None
        if want_x:
            gx = decode_twin(SparseCode(grad, idx), W_enc.t().contiguous())
        if want_w:
            gW = _transposed(_scatter_rows(idx, grad, x_in, n))  # W_enc's own layout: no copy when accumulated
        if want_b or (want_pre and gx is None):
            sums = W_enc.new_zeros(n).index_add_(0, idx.flatten(), grad.flatten())
            gb = sums if want_b else None
        if want_pre:
            gp = -(gx.sum(0) if gx is not None else W_enc @ sums)
        return gx, gW, gb, gp, None, None


def _regathered(vals: torch.Tensor, code: SparseCode, relu: bool) -> SparseCode:
    """The code with values read from `vals` (which carry gradient); padding (value 0) stays 0."""
    vals = vals.relu() if relu else vals
    return SparseCode(torch.where(code.values != 0, vals, torch.zeros_like(vals)), code.indices)


def pre_activations(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor | None, b_pre: torch.Tensor | None = None
) -> torch.Tensor:
    """(x - b_pre) @ W_enc (+ b_enc), [B, n], computed without autograd (gradients go through `with_gradient`)."""
    with torch.no_grad():
        pre = (x - b_pre if b_pre is not None else x) @ W_enc
        if b_enc is not None:
            pre += b_enc
    return pre


def with_gradient(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    pre: torch.Tensor,
    enc: Encoding,
    relu: bool,
    aux_relu: bool,
    b_pre: torch.Tensor | None = None,
) -> Encoding:
    """The codes of `enc` (selected on `pre`) with their values re-read through one `_GatherPre`, so that
    gradients reach x, W_enc, b_enc and b_pre only at the main and AuxK entries."""
    code, aux = enc
    idx = code.indices if aux is None else torch.cat([code.indices, aux.indices], dim=1)
    vals = _GatherPre.apply(x, W_enc, b_enc, b_pre, pre, idx)
    w = code.indices.shape[1]
    return Encoding(_regathered(vals[:, :w], code, relu), None if aux is None else _regathered(vals[:, w:], aux, aux_relu))


def encode_twin(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    rule: str,
    k: int | None,
    threshold: torch.Tensor | float | None,
    dead: torch.Tensor | None,
    k_aux: int,
    b_pre: torch.Tensor | None = None,
) -> Encoding:
    """Select on pre-activations computed without autograd, then re-read the selected values through
    `_GatherPre` so gradients reach x, W_enc, b_enc and b_pre only at the main and AuxK entries."""
    pre = pre_activations(x, W_enc, b_enc, b_pre)
    code = select_by_rule(pre, rule, k, threshold)
    main = RULES[rule]
    aux = aux_select(pre, dead, k_aux, signed=main.aux.signed) if dead is not None else None
    params = [t for t in (x, W_enc, b_enc, b_pre) if t is not None]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in params)):
        return Encoding(code, aux)
    return with_gradient(
        x, W_enc, b_enc, pre, Encoding(code, aux), relu=not main.signed, aux_relu=not main.aux.signed, b_pre=b_pre
    )
