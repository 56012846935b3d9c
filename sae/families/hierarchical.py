"""HierarchicalTopK (Balagansky et al. 2025): one dictionary usable at every k <= k_max.

Take the top K = k_max latents sorted by value (decreasing), and train on the reconstruction
error of every prefix with equal weight:
    L = sum_b sum_{t=1..K} |x_b - x_hat_{b,t}|^2,   x_hat_{b,t} = b_dec + sum_{i<=t} v_{b,i} W_dec[idx_{b,i}]
normalised here like the other families' FVU (by K times the batch's total variance).
The prefix errors are streamed (flexsae's fused schedule): the forward keeps only the running
error, the backward walks t = K..1 with the suffix sum of the errors; nothing per prefix is stored.
At inference `sae.encode(x, k=...)` keeps the top k, which is the prefix of the top k_max.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kernels import Encoding, SparseCode
from sae.families.base import DEFAULT_K_AUX, Family

if TYPE_CHECKING:
    from sae.model import SparseAutoencoder


class PrefixSquaredError(torch.autograd.Function):
    """Per row: sum over t of |r - sum_{i<=t} v_i W[idx_i]|^2, [B]; O(B*d) memory whatever K is."""

    @staticmethod
    def forward(ctx, r: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        e = r.clone()  # running error r - x_hat_t, [B, d]
        total = torch.zeros(r.shape[0], dtype=torch.float32 if r.dtype != torch.float64 else r.dtype, device=r.device)
        for t in range(v.shape[1]):
            e -= v[:, t, None] * W[idx[:, t]]
            total += e.pow(2).sum(1).to(total.dtype)
        ctx.save_for_backward(v, idx, W, e)
        return total

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        v, idx, W, e = ctx.saved_tensors
        g2 = (2 * g).to(v.dtype)[:, None]  # d total / d e_t = 2 e_t
        suffix = torch.zeros_like(e)  # sum_{t >= i} e_t
        grad_v = torch.zeros_like(v)
        grad_W = torch.zeros_like(W)
        for t in range(v.shape[1] - 1, -1, -1):
            suffix += e
            w = W[idx[:, t]]
            grad_v[:, t] = -(g2 * suffix * w).sum(1)
            grad_W.index_add_(0, idx[:, t], -(g2 * v[:, t, None]) * suffix)
            e = e + v[:, t, None] * w  # e_{t-1}
        return g2 * suffix, grad_v, None, grad_W


def prefix_squared_error(r: torch.Tensor, code: SparseCode, W_dec: torch.Tensor) -> torch.Tensor:
    """Sum over prefixes t = 1..K of each row's squared error, [B]; `code` sorted by value, decreasing."""
    return PrefixSquaredError.apply(r, code.values, code.indices, W_dec)


def sort_code(code: SparseCode) -> SparseCode:
    """Order each row's entries by value, decreasing (kernels need not return them sorted)."""
    values, order = code.values.sort(dim=1, descending=True)
    return SparseCode(values, code.indices.gather(1, order))


class HierarchicalTopK(Family):
    """Top-k_max sorted; loss = mean over prefixes t <= k_max of the prefix FVU; any k <= k_max at inference."""

    name = "hierarchicaltopk"
    saelens_architecture = "topk"
    sparsify_export = True  # at its k_max: the top-k code of every prefix

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        if k is not None and not 1 <= k <= self.k:
            raise ValueError(f"hierarchicaltopk: k={k} out of range; this dictionary serves 1 <= k <= k_max={self.cfg.k}")
        enc = super().encode(sae, x_n, dead=dead, k=k, k_aux=k_aux)
        return Encoding(sort_code(enc.code), enc.aux)

    def recon_loss(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        enc: Encoding,
        x_hat_n: torch.Tensor,
        sse: torch.Tensor | None = None,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        per_row = prefix_squared_error(x_n - (sae.b_dec if base is None else base), enc.code, sae.W_dec)
        var = (x_n - x_n.mean(0, keepdim=True)).float().pow(2).sum().clamp_min(1e-12)
        return per_row.float().sum() / (enc.code.values.shape[1] * var)

    def prefix_fvu(self, sae: SparseAutoencoder, x: torch.Tensor, ks: list[int]) -> dict[int, float]:
        """FVU of raw activations x at each k in ks with this one dictionary (the curve over k)."""
        with torch.no_grad():
            out = {}
            for k in ks:
                x_hat = sae.decode(sae.encode(x, k=k))
                out[k] = ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
        return out
