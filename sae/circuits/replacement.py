"""The local replacement model of one prompt on a plain Hugging Face causal LM or encoder (Ameisen et al. 2025,
§2.2).

Under these hooks the forward computes exactly the model's values, while gradients see a model that is linear
in the residual stream: attention patterns are frozen (the queries and keys are detached, so only the values
carry gradient), every normalisation's denominator is frozen (LayerNorm keeps its centring, as in
transformer-lens, whose `hook_scale` circuit-tracer detaches), and each MLP's output is replaced, for
gradients, by the transcoder's linear skip term (nothing without one): what the MLP adds beyond it is a
constant (the features' and the error's contributions, which are graph nodes). Token embeddings (the output of
`get_input_embeddings()`) are where gradients end; positional and token-type embeddings are constants.

The final hidden state is the unembedding's input for a causal LM, and the last layer's output for an encoder
(BERT-style, no head: a post-LayerNorm layer's output is its last LayerNorm's, frozen like the others); the
batched forward stops there (`ReachedHead`). A TransformerBridge is traced here through a plain view of the Hugging
Face model it wraps (sae.circuits.backends); a transformer-lens < 4 HookedTransformer by sae.circuits.replacement_tl.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sae.circuits.dictionaries import Transcoders


@dataclass
class Record:
    """The tensors of one forward: the token embeddings, each layer's transcoder input and (spliced) MLP output,
    and the final hidden state the unembedding reads."""

    embed: torch.Tensor | None = None
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    final: torch.Tensor | None = None


class LocalReplacement:
    """Hooks on a Hugging Face causal LM or encoder (`activations.models.HFAdapter`) for `Transcoders`.

    What a backend sets (sae.circuits.replacement_tl sets them for transformer-lens < 4): `embedding`, the module
    whose output is the token embeddings; `unembed`, the unembedding [vocab, d_model] (None for an encoder);
    `_final_site`, where the final hidden state is read; `_edits`, the forward hooks that freeze the attention
    patterns and the normalisations; and `forward`."""

    def __init__(self, adapter: Any, transcoders: Transcoders) -> None:
        self.adapter = adapter
        self.model: Any = adapter.model  # a transformers PreTrainedModel
        self.transcoders = transcoders
        self.embedding: Any = self.model.get_input_embeddings()
        self.head: Any = None
        if adapter.is_causal:
            self.head = self.model.get_output_embeddings()
            if self.head is None:
                raise ValueError(f"{type(self.model).__name__} has no language-model head: load it with AutoModelForCausalLM")
        self.unembed: torch.Tensor | None = self.head.weight.detach() if self.head is not None else None
        self.in_sites = [adapter._site(h) for h in transcoders.input_hooks]
        self.out_sites = [adapter._site(h) for h in transcoders.output_hooks]
        attention = [pair for i, layer in enumerate(adapter._layers) for pair in _attention_freezers(layer, i)]
        norms = [(m, _norm_freezer(m)) for m in self.model.modules() if _is_norm(m)]
        self._edits: list[tuple[nn.Module, Callable[..., Any]]] = [
            *((m, _output_edit(edit)) for m, edit in attention),
            *((m, _recompute(norm)) for m, norm in norms),
        ]
        last: tuple[str, nn.Module] = ("output", adapter._layers[-1])  # an encoder's final hidden state
        self._final_site = ("input", self.head) if self.head is not None else last

    @property
    def vocab(self) -> int:
        """The number of token ids the model reads (the unembedding's rows, or the token embedding's)."""
        return int(self.unembed.shape[0] if self.unembed is not None else self.embedding.weight.shape[0])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The model on token ids [batch, P]: a causal LM's logits, an encoder's final hidden state."""
        if self.adapter.is_causal:
            return self.model(input_ids=ids, use_cache=False).logits
        out = self.model(input_ids=ids)
        hidden = getattr(out, "last_hidden_state", None)
        return hidden if hidden is not None else out[0] if isinstance(out, tuple | list) else out

    @contextmanager
    def capture(self) -> Iterator[Record]:
        """The plain model, recording the token embeddings and each layer's transcoder input and true MLP output."""
        rec = Record()
        with ExitStack() as stack:
            stack.enter_context(hooked(self.embedding.register_forward_hook(_embed_keeper(rec))))
            for layer, site in enumerate(self.in_sites):
                stack.enter_context(_on_site(site, _keeper(rec.inputs, layer)))
            for layer, site in enumerate(self.out_sites):
                stack.enter_context(_on_site(site, _keeper(rec.outputs, layer)))
            yield rec

    @contextmanager
    def frozen(self) -> Iterator[Record]:
        """The local replacement model (see the module docstring), recording the tensors gradients are read at; the
        forward stops at the final hidden state (the unembedding's input, an encoder's last layer output),
        raising `ReachedHead`."""
        rec = Record()
        with ExitStack() as stack:
            stack.enter_context(hooked(self.embedding.register_forward_hook(_grad_leaf(rec))))
            for module, hook in self._edits:
                stack.enter_context(hooked(module.register_forward_hook(hook)))
            for layer, site in enumerate(self.in_sites):
                stack.enter_context(_on_site(site, _keeper(rec.inputs, layer)))
            for layer, (kind, module) in enumerate(self.out_sites):
                if kind != "output":
                    raise ValueError(f"the MLP output hook {self.transcoders.output_hooks[layer]!r} is not a module's output")
                stack.enter_context(hooked(module.register_forward_hook(self._splice(rec, layer))))
            kind, module = self._final_site
            if kind == "input":
                stack.enter_context(hooked(module.register_forward_pre_hook(_final(rec))))
            else:
                stack.enter_context(hooked(module.register_forward_hook(_final_output(rec))))
            yield rec

    def _splice(self, rec: Record, layer: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            y = output[0] if isinstance(output, tuple | list) else output
            skip = self.transcoders.skip_term(layer, rec.inputs[layer])
            new = y.detach().requires_grad_(True) if skip is None else skip + (y - skip).detach()
            rec.outputs[layer] = new
            return type(output)([new, *output[1:]]) if isinstance(output, tuple | list) else new

        return hook


@contextmanager
def hooked(handle: Any) -> Iterator[None]:
    """A hook handle removed when the block ends, however it ends."""
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _on_site(site: tuple[str, nn.Module], keep: Callable[[torch.Tensor], None]) -> Iterator[None]:
    kind, module = site
    if kind == "input":

        def pre(m: nn.Module, args: Any, kwargs: Any) -> None:
            keep(args[0] if args else kwargs.get("hidden_states", next(v for v in kwargs.values() if torch.is_tensor(v))))

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        handle = module.register_forward_hook(lambda m, a, out: keep(out[0] if isinstance(out, tuple | list) else out))
    with hooked(handle):
        yield


def _keeper(store: dict[int, torch.Tensor], layer: int) -> Callable[[torch.Tensor], None]:
    def keep(t: torch.Tensor) -> None:
        store[layer] = t

    return keep


def _embed_keeper(rec: Record) -> Callable[..., None]:
    """Forward hook on the embedding: its output is the token embeddings."""

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        rec.embed = out

    return hook


def _grad_leaf(rec: Record) -> Callable[..., torch.Tensor]:
    """Forward hook on the embedding: its output becomes the leaf where gradients end."""

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        rec.embed = out.detach().requires_grad_(True)
        return rec.embed

    return hook


class ReachedHead(Exception):
    """Raised once the final hidden state is recorded (from the unembedding's pre-hook, or an encoder's last layer):
    no logits are needed from the batched forward, and at a large vocabulary they would be its largest tensor."""


def _final(rec: Record) -> Callable[..., None]:
    """Forward pre-hook on the unembedding: its input is the final hidden state."""

    def hook(module: nn.Module, args: Any) -> None:
        rec.final = args[0]
        raise ReachedHead

    return hook


def _final_output(rec: Record) -> Callable[..., None]:
    """Forward hook on an encoder's last layer: its output is the final hidden state."""

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        rec.final = out[0] if isinstance(out, tuple | list) else out
        raise ReachedHead

    return hook


Edit = Callable[[torch.Tensor], torch.Tensor]
Norm = Callable[[Any, torch.Tensor], torch.Tensor]


def _output_edit(edit: Edit) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return edit(out)

    return hook


def _recompute(norm: Norm) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return norm(module, args[0])

    return hook


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def _attention_freezers(layer: nn.Module, index: int) -> list[tuple[Any, Edit]]:
    """(module, output edit) pairs that detach the queries and keys of one layer's self-attention."""
    attn: Any = next(
        (m for name in ("self_attn", "attn", "attention") if isinstance(m := getattr(layer, name, None), nn.Module)), None
    )
    if attn is not None and all(isinstance(getattr(attn, p, None), nn.Module) for p in ("q_proj", "k_proj")):
        return [(attn.q_proj, _detach), (attn.k_proj, _detach)]
    inner = getattr(attn, "self", None)  # BERT-style: BertAttention.self is BertSelfAttention (query, key, value)
    if isinstance(inner, nn.Module) and all(isinstance(getattr(inner, p, None), nn.Linear) for p in ("query", "key")):
        if isinstance(getattr(layer, "crossattention", None), nn.Module):
            raise ValueError(f"layer {index} has cross-attention: circuit tracing knows self-attention only")
        return [(inner.query, _detach), (inner.key, _detach)]
    if (
        attn is not None
        and isinstance(getattr(attn, "c_attn", None), nn.Module)
        and not getattr(attn, "is_cross_attention", False)
    ):
        split = int(attn.split_size)
        return [(attn.c_attn, lambda out: torch.cat([out[..., : 2 * split].detach(), out[..., 2 * split :]], -1))]
    found = type(attn).__name__ if attn is not None else "none"
    raise ValueError(
        f"cannot freeze the attention pattern of layer {index} (attention module: {found}): circuit tracing knows "
        "attention with q_proj/k_proj (Llama, Qwen, Mistral, Gemma), GPT-2's c_attn or BERT's query/key"
    )


def _is_norm(m: nn.Module) -> bool:
    name = type(m).__name__
    return isinstance(m, nn.LayerNorm) or name.endswith(("RMSNorm", "LayerNorm"))


def _norm_freezer(m: nn.Module) -> Norm:
    """A forward hook recomputing a normalisation from its input with the denominator detached."""
    name = type(m).__name__
    if isinstance(m, nn.LayerNorm):
        return _frozen_layer_norm
    if name.endswith("RMSNorm") and hasattr(m, "variance_epsilon") and "Gemma" not in name:
        return _frozen_llama_rms
    if name.endswith("RMSNorm") and "Gemma" in name and hasattr(m, "eps"):
        return _frozen_gemma_rms
    raise ValueError(
        f"cannot freeze the normalisation {name}: circuit tracing knows torch LayerNorm and Llama- and Gemma-style RMSNorm"
    )


def _frozen_layer_norm(m: Any, x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + m.eps).sqrt().detach()
    out = centred / scale
    if m.weight is not None:
        out = out * m.weight
    if m.bias is not None:
        out = out + m.bias
    return out


def _frozen_llama_rms(m: Any, x: torch.Tensor) -> torch.Tensor:
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True).detach()
    return m.weight * (h * torch.rsqrt(variance + m.variance_epsilon)).to(x.dtype)


def _frozen_gemma_rms(m: Any, x: torch.Tensor) -> torch.Tensor:
    h = x.float()
    out = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True).detach() + m.eps)
    return (out * (1.0 + m.weight.float())).type_as(x)
