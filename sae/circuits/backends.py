"""Which model circuit tracing runs on, for each backend `activations.load_model` gives.

- plain Hugging Face (`HFAdapter`): traced as it is (sae.circuits.replacement).
- transformer-lens >= 4 `TransformerBridge` (`BridgeAdapter`): the bridge computes with the Hugging Face model it
  wraps, but re-implements attention and normalisation in its own components. Tracing runs on a plain Hugging Face
  model of the same class built over the bridge's own weight tensors (shared, not copied), checked to give the
  bridge's output on a probe at each call; the hook names are the same on both (`activations.models.mlp_sites`).
- transformer-lens < 4 `HookedTransformer` (`HookedAdapter`): its own weights and code, traced with
  transformer-lens hooks (sae.circuits.replacement_tl). `validate` does not take it.
"""

from __future__ import annotations

from typing import Any

import torch

from sae.circuits.dictionaries import Transcoders
from sae.circuits.replacement import LocalReplacement

_TL_MODELS = ("TransformerBridge", "HookedTransformer", "HookedEncoder")
_VIEW = "_circuits_hf_view"  # where a bridge adapter keeps its plain Hugging Face view once built
PROBE_TOLERANCE = 1e-3  # of the largest output: the view computes the bridge's function, up to rounding


def traceable_model(model: Any, *, hooked: bool = False) -> Any:
    """`model` as the adapter circuit tracing runs on, checked: a causal LM, or an encoder traced as BERT-style.

    A string is loaded as plain Hugging Face; a `TransformerBridge` (or its adapter) becomes the plain Hugging Face
    view of its weights; a transformer-lens < 4 `HookedTransformer` is taken as it is where `hooked` (attribute)
    and refused otherwise (validate)."""
    from activations.models import BridgeAdapter, HFAdapter, HookedAdapter, load_model

    if isinstance(model, str):
        adapter = load_model(model, backend="hf")
    elif type(model).__name__ in _TL_MODELS:
        adapter = load_model(model)
    else:
        adapter = model
    if isinstance(adapter, BridgeAdapter):
        adapter = bridge_view(adapter)
    elif isinstance(adapter, HookedAdapter):
        if not hooked:
            raise TypeError(
                f"circuit validation runs on a plain Hugging Face model or a TransformerBridge, not on the transformer-lens "
                f"< 4 {type(adapter.model).__name__} {adapter.name!r}: validate on the Hugging Face model of the same weights"
            )
        from sae.circuits.replacement_tl import check_hooked

        check_hooked(adapter)
        return adapter
    elif not isinstance(adapter, HFAdapter):
        raise TypeError(
            "circuit tracing runs on a plain Hugging Face model (activations.load_model(name, backend='hf')), a "
            f"transformer-lens TransformerBridge or a HookedTransformer, got {type(adapter).__name__}"
        )
    if not adapter.is_causal:
        _check_encoder(adapter)
    return adapter


def local_replacement(adapter: Any, transcoders: Transcoders) -> LocalReplacement:
    """The local replacement model of `adapter` (from `traceable_model`) for `transcoders`."""
    from activations.models import HookedAdapter

    if isinstance(adapter, HookedAdapter):
        from sae.circuits.replacement_tl import HookedReplacement

        return HookedReplacement(adapter, transcoders)
    return LocalReplacement(adapter, transcoders)


def bridge_view(bridge_adapter: Any) -> Any:
    """A plain Hugging Face adapter over the weights of a `TransformerBridge` (built once per adapter).

    The bridge replaces the modules of the Hugging Face model it wraps by its own components (each keeping the
    original as `_original_component`), which compute attention and norms their own way; a model of the wrapped
    class is built on the meta device and given the bridge's parameter and buffer tensors by their Hugging Face
    names. Each call checks on a probe that the view still computes the bridge's function (a hook left on the
    bridge changes the bridge's, not the view's)."""
    view = bridge_adapter.__dict__.get(_VIEW)
    if view is None:
        view = _build_view(bridge_adapter)
        bridge_adapter.__dict__[_VIEW] = view
    _check_same_function(bridge_adapter, view)
    return view


def _build_view(bridge_adapter: Any) -> Any:
    from activations.models import HFAdapter

    bridge = bridge_adapter.model
    wrapped = getattr(bridge, "original_model", None)
    name = bridge_adapter.name
    if not isinstance(wrapped, torch.nn.Module) or not hasattr(wrapped, "config"):
        raise TypeError(f"the TransformerBridge {name!r} wraps no Hugging Face model (original_model): it cannot be traced")
    with torch.device("meta"):
        plain = type(wrapped)(wrapped.config)
    slots = {n: t for n, t in [*plain.named_parameters(remove_duplicate=False), *plain.named_buffers(remove_duplicate=False)]}
    found: set[str] = set()
    for key, tensor in [*wrapped.named_parameters(remove_duplicate=False), *wrapped.named_buffers(remove_duplicate=False)]:
        hf_name = key.replace("._original_component", "")
        if hf_name not in slots:
            continue  # the bridge's own aliases and split copies (attn.q, mlp.in, ln1, ...)
        owner, _, attr = hf_name.rpartition(".")
        module = plain.get_submodule(owner)
        if attr in module._parameters:
            module._parameters[attr] = tensor if isinstance(tensor, torch.nn.Parameter) else torch.nn.Parameter(tensor)
        else:
            module._buffers[attr] = tensor
        found.add(hf_name)
    missing = sorted(n for n, t in slots.items() if n not in found and t is not None)
    if missing:
        raise ValueError(
            f"the TransformerBridge {name!r} holds no tensor for {missing[:3]} of its {type(wrapped).__name__}: it cannot "
            "be traced as that Hugging Face model"
        )
    traced: Any = plain if bridge_adapter.is_causal else plain.base_model  # an encoder's masked-LM head is never read
    view = HFAdapter(traced.eval(), bridge_adapter.tokenizer, name=name)
    if view.is_causal != bridge_adapter.is_causal:
        raise ValueError(
            f"the TransformerBridge {name!r} is {'a causal LM' if bridge_adapter.is_causal else 'an encoder'}, but its "
            f"{type(wrapped).__name__} reads as {'one' if view.is_causal else 'an encoder'}: it cannot be traced"
        )
    return view


def _check_same_function(bridge_adapter: Any, view: Any) -> None:
    """The view's output (logits, or an encoder's final hidden states) is the bridge's on a short probe."""
    n, vocab = min(6, view.max_context), int(view.input_embedding().shape[0])
    probe = (torch.arange(n) * 7 + 3)[None] % vocab
    if bridge_adapter.bos_token_id is not None:
        probe[0, 0] = bridge_adapter.bos_token_id
    ours, theirs = view.forward(probe), bridge_adapter.forward(probe)
    gap = float((ours.float() - theirs.float()).abs().max())
    scale = float(theirs.float().abs().max())
    if not gap <= PROBE_TOLERANCE * max(scale, 1e-6):
        raise ValueError(
            f"the TransformerBridge {bridge_adapter.name!r} does not compute what its {type(view.model).__name__} weights "
            f"do (outputs differ by {gap:.3g} of {scale:.3g} on a probe: a hook left on the bridge?): remove its hooks, or "
            "trace the Hugging Face model"
        )


def _check_encoder(adapter: Any) -> None:
    """A model without a language-model head is traced as a BERT-style encoder: bidirectional, with [CLS]-style
    special tokens, its last layer's output the final hidden state (no norm after the layers)."""
    model, cfg = adapter.model, adapter.model.config
    final_norm = next(
        (
            name
            for name in ("ln_f", "norm", "final_layer_norm", "final_layernorm")
            if isinstance(getattr(model, name, None), torch.nn.Module)
        ),
        None,
    )
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "is_encoder_decoder", False) or final_norm is not None:
        why = f"a final norm {final_norm!r} after its layers" if final_norm else "a decoder config"
        raise ValueError(
            f"model {adapter.name!r} has no language-model head and {why}: circuit tracing takes a causal LM with its "
            "head (AutoModelForCausalLM) or a BERT-style encoder"
        )
    if getattr(adapter.tokenizer, "cls_token_id", None) is None:
        raise ValueError(
            f"model {adapter.name!r} has no language-model head and its tokenizer no [CLS] token: circuit tracing "
            "takes a causal LM with its head (AutoModelForCausalLM) or a BERT-style encoder"
        )
