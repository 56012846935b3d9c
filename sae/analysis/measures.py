"""The registry of evaluation measures: what `evaluate` computes after its pass over the held-out tokens.

A measure is a function of one `HeldOut` (the dictionary, the model, the hook, the scored contexts and
what the pass gathered) that returns entries for metrics.json; tensors per latent or per token it adds to
`held_out.distributions` (eval/latents.safetensors). `evaluate` runs every registered measure, in the
order registered, after the reconstruction metrics. docs/extending.md has the recipe for a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from activations.models import ModelAdapter
from sae.analysis.interventions import HookFit
from sae.model import SparseAutoencoder

__all__ = ["MEASURES", "HeldOut", "Measure", "register_measure"]


@dataclass
class HeldOut:
    """What a measure reads: the evaluation's inputs and what its pass over the held-out tokens gathered."""

    sae: SparseAutoencoder
    model: ModelAdapter
    hook: str
    """The hook the dictionary reads (a transcoder's input hook; a CLT's first layer's)."""
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    """(contexts [B, T], scored [B, T] bool) as `held_out_contexts` yields them."""
    mean: torch.Tensor
    """Mean activation [d] over the scored tokens at the hook the dictionary's output replaces (an SAE: its hook;
    a transcoder: its target hook; a CLT: [L, d], per target layer)."""
    sample: torch.Tensor
    """The first scored activations the dictionary reads [N, d_in] (a CLT: [N, L, d_in]; at most 4096), on the
    dictionary's device."""
    metrics: dict[str, Any]
    """The entries so far: the reconstruction metrics, then those of the measures before this one."""
    distributions: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-latent and per-token tensors (eval/latents.safetensors); a measure may add its own."""
    progress: bool = True
    """Show progress bars."""
    fit: HookFit | None = None
    """Every hook the dictionary reads and replaces (`fit_hooks`); None: `hook`, for both."""

    @property
    def hooks(self) -> HookFit:
        """The dictionary's input and target hooks (an SAE's: its one hook, both)."""
        return self.fit if self.fit is not None else HookFit((self.hook,), (self.hook,))


Measure = Callable[[HeldOut], dict[str, Any]]

MEASURES: dict[str, Measure] = {}


def register_measure(name: str, measure: Measure) -> Measure:
    """Add `measure` under `name`: `evaluate` computes it (unless `skip` names it) and merges what it returns."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a measure needs a non-empty name, got {name!r}")
    if name in MEASURES:
        raise ValueError(f"measure {name!r} is already registered")
    if not callable(measure):
        raise ValueError(f"measure {name!r} must be a function of a HeldOut, got {type(measure).__name__}")
    MEASURES[name] = measure
    return measure
