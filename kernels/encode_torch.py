"""Plain-torch encode: pre-activations, then the selection rule (and the AuxK selection beside it)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from kernels.code import SparseCode
from kernels.select_torch import select_abs, select_row


class Encoding(NamedTuple):
    """The main code and, when dead latents were given, the AuxK code over them."""

    code: SparseCode
    aux: SparseCode | None


def aux_select(pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool = False) -> SparseCode | None:
    """Each row's k_aux largest pre-activations among dead latents (by magnitude when signed)."""
    n_dead = int(dead.sum().item())
    if n_dead == 0 or k_aux < 1:
        return None
    k_aux = min(k_aux, n_dead)
    fill = torch.finfo(pre.dtype).min
    if signed:
        masked = torch.where(dead, pre, torch.zeros_like(pre))
        return select_abs(masked, k_aux)
    return select_row(torch.where(dead, pre, torch.full_like(pre, fill)), k_aux)
