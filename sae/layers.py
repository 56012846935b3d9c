"""The pieces of a cross-layer transcoder (CLT) that differ from a one-layer dictionary.

A CLT over L layers has one encoder per layer (W_enc [L, d_in, n]) and one decoder per source layer l,
W_dec_l [n, L - l, d_out] (circuit-tracer's layout: row f, slice j writes into target layer l + j). Its code is one
SparseCode over L * n features, layer l's latent f at index l * n + f. The prediction of target layer l' sums, over
source layers l <= l', z_l W_dec_l[:, l' - l]: here each source layer is decoded once through its decoder seen as
[n, (L - l) d_out] (a contiguous view, so the kernels' gather-sum serves it unchanged) and added into layers l..L-1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

import kernels
from kernels import SparseCode

if TYPE_CHECKING:
    from sae.model import SparseAutoencoder


class LayerView:
    """Layer l of a CLT as its family sees a dictionary: that layer's encoder (W_enc [d_in, n], b_enc [n]) and its
    decoder flattened to [n, (L - l) d_out], with b_dec of the layers it writes into; a transcoder's encoder reads
    its input as it is."""

    b_pre = None

    def __init__(self, sae: SparseAutoencoder, layer: int) -> None:
        self.cfg = sae.cfg
        self.layer = layer
        self.W_enc = sae.W_enc[layer]
        self.b_enc = sae.b_enc[layer]
        W = sae.decoders()[layer]
        self.W_dec = W.view(W.shape[0], -1)
        self.b_dec = sae.b_dec[layer:].reshape(-1)
        self.family = sae.families[layer]

    def encoder_input(self, x_n: torch.Tensor) -> torch.Tensor:
        return x_n


def clt_decode(codes: Sequence[SparseCode | None], decoders: list[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
    """[B, L, d_out]: `base` plus, for each source layer l, its code (local indices) decoded by W_dec_l into
    target layers l..L-1. A None code adds nothing."""
    L = len(decoders)
    n, _, d = decoders[0].shape
    first = next(c for c in codes if c is not None)
    B = first.values.shape[0]
    out = torch.zeros(B, L, d, dtype=decoders[0].dtype, device=decoders[0].device)
    if base is not None:
        out = out + base
    for layer, (code, W) in enumerate(zip(codes, decoders)):
        if code is not None:
            out[:, layer:] += kernels.decode(code, W.view(n, -1)).view(B, L - layer, d)
    return out


def join_codes(codes: list[SparseCode], n: int) -> SparseCode:
    """One code over L * n features from each layer's code (local indices): layer l's latent f at l * n + f."""
    return SparseCode(
        torch.cat([c.values for c in codes], 1),
        torch.cat([c.indices + layer * n for layer, c in enumerate(codes)], 1),
    )


def code_of_layer(code: SparseCode, layer: int, n: int) -> SparseCode:
    """The entries of a joined code that belong to `layer`, with local indices (others: zero-valued padding)."""
    mine = (code.indices >= layer * n) & (code.indices < (layer + 1) * n)
    values = torch.where(mine, code.values, torch.zeros_like(code.values))
    return SparseCode(values, torch.where(mine, code.indices - layer * n, torch.zeros_like(code.indices)))


def layer_family_tensors(
    state: dict[str, torch.Tensor], file_name: Callable[[str], tuple[str, int | None]]
) -> dict[str, torch.Tensor]:
    """A state dict renamed by `file_name` (state name -> (file name, layer or None)): entries that carry a layer
    (a CLT's per-layer family tensors) stacked in layer order into one [L, ...] tensor."""
    out: dict[str, torch.Tensor] = {}
    layered: dict[str, list[torch.Tensor]] = {}
    for name, t in state.items():
        file, layer = file_name(name)
        if layer is None:
            out[file] = t
        else:
            layered.setdefault(file, []).append(t)
    out.update({name: torch.stack(ts) for name, ts in layered.items()})
    return out
