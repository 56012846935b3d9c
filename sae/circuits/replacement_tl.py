"""The local replacement model on a transformer-lens < 4 `HookedTransformer` (`activations.models.HookedAdapter`),
with transformer-lens's own hook points, as circuit-tracer's TransformerLens backend builds it.

The same replacement as sae.circuits.replacement's on a Hugging Face model: every attention pattern
(`attn.hook_pattern`) and every normalisation's denominator (`hook_scale`: `ln1`, `ln2`, `ln_final`, and the post
norms where a model has them) are detached, each MLP output is spliced at the transcoders' output hook (the skip
term linear, the rest constant), gradients end at the token embeddings (`hook_embed`; the positional embedding
is a constant), and the final hidden state is the unembedding's input (after `ln_final`).

A HookedTransformer computes with its own weights, as loaded: `from_pretrained` folds the norms' weights into the
next layer by default, which changes what `blocks.N.mlp.hook_in` reads (activations.models); transcoders
trained on the Hugging Face model read the same vectors here on a model loaded with `fold_ln=False`
(`from_pretrained_no_processing`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sae.circuits.dictionaries import Transcoders
from sae.circuits.replacement import LocalReplacement, _detach, _output_edit

FROZEN_HOOKS = ("hook_pattern", "hook_scale")  # the last part of the hook names whose outputs are detached


def check_hooked(adapter: Any) -> None:
    """Circuit tracing takes a transformer-lens < 4 causal LM; its encoders (HookedEncoder) are refused."""
    model = adapter.model
    kind = type(model).__name__
    if not adapter.is_causal or not isinstance(getattr(model, "unembed", None), nn.Module):
        raise ValueError(
            f"circuit tracing on transformer-lens < 4 takes a HookedTransformer causal LM, not the {kind} {adapter.name!r}: "
            "trace an encoder as a plain Hugging Face model (activations.load_model(name, backend='hf')) or a TransformerBridge"
        )
    if not isinstance(getattr(model, "hook_embed", None), nn.Module):
        raise ValueError(f"the {kind} {adapter.name!r} has no hook_embed: circuit tracing needs its token embeddings")


class HookedReplacement(LocalReplacement):
    """Hooks on a transformer-lens < 4 `HookedTransformer` for `Transcoders` (see the module docstring)."""

    def __init__(self, adapter: Any, transcoders: Transcoders) -> None:
        check_hooked(adapter)
        model = adapter.model
        self.adapter = adapter
        self.model = model
        self.transcoders = transcoders
        adapter._prepare(transcoders.input_hooks + transcoders.output_hooks)  # switches on hook_mlp_in where asked
        self.embedding = model.hook_embed
        self.head = None  # no Hugging Face head (validate runs on Hugging Face models only)
        self.unembed: torch.Tensor | None = model.W_U.detach().T  # [vocab, d_model]
        self.in_sites = [adapter._site(h) for h in transcoders.input_hooks]
        self.out_sites = [adapter._site(h) for h in transcoders.output_hooks]
        frozen = [m for name, m in model.hook_dict.items() if name.rpartition(".")[2] in FROZEN_HOOKS]
        self._edits = [(m, _output_edit(_detach)) for m in frozen]
        self._final_site = ("input", model.unembed)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The logits [batch, P, vocab] of token ids [batch, P]."""
        return self.model(ids)
