"""Interventions through a dictionary at its hooks: splice, ablate latents, steer.

Each is a context manager over a `ModelAdapter` (transformer-lens `TransformerBridge`,
`HookedTransformer` / `HookedEncoder`, or plain Hugging Face): inside the block every forward of
the model (`model.forward`, `model.run`) sees the edited activation; several can be active at
once (they apply in the order entered); leaving the block restores the model exactly.

    with splice(model, sae):                    # the hook's activation replaced by the reconstruction
        logits = model.forward(tokens)
    with splice(model, transcoder):             # the target hook's activation replaced by the prediction
        ...                                     # from the input hook, both of the same forward
    with splice(model, clt):                    # every layer's target replaced at once: the replacement model
        ...
    with ablate(model, sae, [12, 40]), steer(model, sae, 7, alpha=4.0):
        ...

A transcoder is spliced by two edits of one forward: at its input hook the activation is read (left unchanged),
at its target hook it is replaced by the prediction from what was read. A CLT reads each layer's input as the
model runs (so, spliced without error terms, a layer's input already carries the earlier layers' replaced
outputs) and replaces each layer's target by the sum of the decoded features of that layer and every earlier one.

`error_term=True` adds the dictionary's error on each token, `a - prediction`, held constant: the model's output
is then exactly the clean one (computed as `a + (prediction - prediction)`, so no rounding enters), while a
gradient through the edit flows through the dictionary, as in the replacement models of circuit tracing.

`mask` (`[batch, pos]` bool, optional) limits an edit to some positions of the next batch, e.g.
leaving BOS/CLS/SEP positions untouched as SAEBench does. `splice_edits` returns the bare activation
edits (`{hook: [batch, pos, d] -> [batch, pos, d]}`) for `model.forward(tokens, edits=...)`; `splice_edit`,
`ablate_edit` and `steer_edit` the one edit of an SAE.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

import kernels
from activations.models import Edit, ModelAdapter, check_pair_order
from kernels import SparseCode
from sae.layers import LayerView
from sae.model import SparseAutoencoder
from sae.normalize import normalize
from sae.pretrained.compat import check_compatible

__all__ = [
    "HookFit",
    "ablate",
    "ablate_edit",
    "check_fit",
    "fit_hooks",
    "input_hooks",
    "reconstruct",
    "splice",
    "splice_edit",
    "splice_edits",
    "steer",
    "steer_edit",
]


@dataclass(frozen=True)
class HookFit:
    """Where a dictionary meets a model: the hooks it reads and the hooks its output replaces, layer by layer (an
    SAE: one hook, both; a transcoder: its input and target hooks; a CLT: one of each per layer)."""

    inputs: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def hook(self) -> str:
        """The (first) hook the dictionary reads."""
        return self.inputs[0]

    @property
    def harvested(self) -> list[str]:
        """Every hook a pass over the model must read, each once: the inputs, then the targets."""
        return list(dict.fromkeys(self.inputs + self.targets))

    @property
    def paired(self) -> bool:
        """Whether the dictionary predicts other hooks than it reads (a transcoder or a CLT)."""
        return self.targets != self.inputs


def check_fit(model: ModelAdapter, sae: SparseAutoencoder, hook: str | None = None) -> str:
    """The hook the dictionary reads (default: the one it records; a transcoder's input hook), checked to exist
    and to match d_in; a CLT, which reads one hook per layer, is refused here (`fit_hooks` gives its hooks, and
    checks a transcoder's target too).

    An explicit `hook` other than the recorded one is the caller's choice (sae.check_compatible's force)."""
    if sae.cfg.is_clt:
        raise ValueError(
            f"a CLT reads one hook per layer ({sae.cfg.hook_name!r} over {sae.cfg.layers} layers), not one hook: "
            "use fit_hooks(model, clt) for its hooks"
        )
    hook = hook or sae.cfg.hook_name
    if not hook:
        raise ValueError("the dictionary records no hook_name: pass hook=... (e.g. 'blocks.3.hook_resid_pre')")
    check_compatible(sae, model, hook, force=True)  # raises, with close names, for a hook the model lacks
    return hook


def _layer_hooks(model: ModelAdapter, sae: SparseAutoencoder, template: str, name: str) -> tuple[str, ...]:
    """A CLT's hook names from its template, one per layer, refused when the model lacks one of its layers."""
    cfg = sae.cfg
    first, last = cfg.first_layer, cfg.first_layer + cfg.layers - 1
    if last >= model.n_layers:
        raise ValueError(
            f"the CLT reads layers {first}-{last} ({cfg.hook_name!r} -> {cfg.target_hook!r}) but model {model.name!r} "
            f"has {model.n_layers} layers (0-{model.n_layers - 1})"
        )
    if template.count("{}") != 1:
        raise ValueError(f"a CLT's {name} is a template with one {{}} for the layer number, got {template!r}")
    return tuple(template.format(layer) for layer in range(first, last + 1))


def input_hooks(model: ModelAdapter, sae: SparseAutoencoder, hook: str | None = None) -> tuple[str, ...]:
    """The hooks the dictionary reads (one; a CLT: one per layer, from its template), each checked to exist and
    to have width d_in (both values named when not); `hook` replaces the recorded one (a CLT's: a template).
    An SAE's hook is only checked to exist (its statistics need no more; a model may name hooks it cannot probe)."""
    if not sae.cfg.is_transcoder:
        hook = hook or sae.cfg.hook_name
        if not hook:
            raise ValueError("the dictionary records no hook_name: set sae.cfg.hook_name to the hook it was trained on")
        model.check_hooks(hook)
        return (hook,)
    if not sae.cfg.is_clt:
        return (check_fit(model, sae, hook),)
    hook = hook or sae.cfg.hook_name
    if not hook:
        raise ValueError("the CLT records no hook_name (its input template): pass hook=..., e.g. 'blocks.{}.hook_mlp_in'")
    hooks = _layer_hooks(model, sae, hook, "hook")
    widths = model.hook_dims(list(hooks))
    _check_widths(model, sae, hooks, widths, sae.cfg.d_in, "reads d_in")
    return hooks


def _check_widths(
    model: ModelAdapter, sae: SparseAutoencoder, hooks: Sequence[str], widths: Mapping[str, int], width: int, what: str
) -> None:
    kind = "CLT" if sae.cfg.is_clt else "transcoder" if sae.cfg.is_transcoder else "dictionary"
    for h in hooks:
        if widths[h] != width:
            raise ValueError(
                f"the {kind} {what}={width} but hook {h!r} has width {widths[h]} (model {model.name!r}): they cannot be joined"
            )


def fit_hooks(model: ModelAdapter, sae: SparseAutoencoder, hook: str | None = None, target_hook: str | None = None) -> HookFit:
    """The hooks a dictionary reads and replaces in `model`, each checked to exist and to have the width the
    dictionary expects (both values named when not), a transcoder's target to fire after its input (a CLT's:
    after the inputs of its layer and every earlier one), and a CLT's layers to exist in the model.

    `hook` / `target_hook` replace the recorded ones (a CLT's: templates with one {} for the layer number)."""
    cfg = sae.cfg
    if not cfg.is_transcoder:
        hook = check_fit(model, sae, hook)
        return HookFit((hook,), (hook,))
    kind = "CLT" if cfg.is_clt else "transcoder"
    hook, target = hook or cfg.hook_name, target_hook or cfg.target_hook
    if not hook:
        raise ValueError(f"the {kind} records no hook_name (its input hook): pass hook=..., e.g. 'blocks.3.hook_mlp_in'")
    if not target:
        raise ValueError(f"the {kind} records no target_hook: pass target_hook=..., e.g. 'blocks.3.hook_mlp_out'")
    if cfg.is_clt:
        inputs, targets = _layer_hooks(model, sae, hook, "hook"), _layer_hooks(model, sae, target, "target_hook")
    else:
        inputs, targets = (hook,), (target,)
    for h, t in zip(inputs, targets):
        if h == t:
            raise ValueError(f"the {kind}'s target hook {t!r} is its own input hook: a transcoder predicts another hook")
    fit = HookFit(inputs, targets)
    widths = model.probe(fit.harvested)  # in the order the hooks fire
    _check_widths(model, sae, inputs, widths, cfg.d_in, "reads d_in")
    _check_widths(model, sae, targets, widths, cfg.out_width, "predicts d_out")
    # a target is predicted from its own layer's input and (a CLT) every earlier layer's: all must fire before it
    check_pair_order([(i, t) for j, t in enumerate(targets) for i in inputs[: j + 1]], list(widths), model.name)
    return fit


@torch.no_grad()
def reconstruct(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The dictionary's output for raw activations `[..., d_in]`, in raw space and x's dtype: an SAE's
    reconstruction, a transcoder's prediction (`[..., d_out]`; a CLT: `[..., L, d_in]` -> `[..., L, d_out]`)."""
    lead = x.shape[:-2] if sae.cfg.is_clt else x.shape[:-1]
    flat = x.reshape(-1, *x.shape[len(lead) :]).to(sae.W_enc.device)
    out = sae.predict(flat) if sae.cfg.is_transcoder else sae(flat).x_hat
    return out.to(x.dtype).reshape(*lead, *out.shape[1:]).to(x.device)


def _with_error(a: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """pred + (a - pred) with the error held constant: exactly a, with pred's gradient."""
    return a.detach() + (pred - pred.detach())


def _latent_delta(sae: SparseAutoencoder, x: torch.Tensor, dz: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Raw-space change of the output [N, d] when the codes of `latents` change by dz [N, m] (x: the input)."""
    W = sae.W_dec[latents]  # [m, d]
    delta = dz.to(W.dtype) @ W
    if sae.cfg.normalize in ("layer_norm", "unit_norm"):  # codes live in the per-token normalised space
        _, stats = normalize(x.to(W.dtype), sae.cfg.normalize, sae.input_scale.to(W.dtype))
        assert stats is not None  # the per-token modes return (mean, sd)
        delta = delta * stats[1]
    return delta


def _masked(fn: Edit, mask: torch.Tensor | None) -> Edit:
    if mask is None:
        return fn

    def edit(a: torch.Tensor) -> torch.Tensor:
        if mask.shape != a.shape[:2]:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not fit the activation's [batch, pos] = {tuple(a.shape[:2])}"
            )
        return torch.where(mask.to(a.device)[..., None], fn(a), a)

    return edit


def splice_edit(sae: SparseAutoencoder, error_term: bool = False, mask: torch.Tensor | None = None) -> Edit:
    """An SAE's one edit: x -> x_hat (or, with `error_term`, x_hat plus its error held constant: exactly x).
    A transcoder reads one hook and replaces another: `splice_edits`."""
    if sae.cfg.is_transcoder:
        raise ValueError("a transcoder is spliced by edits at its input and target hooks: use splice_edits(sae, fit)")

    def edit(a: torch.Tensor) -> torch.Tensor:
        x_hat = reconstruct(sae, a)
        return _with_error(a, x_hat) if error_term else x_hat

    return _masked(edit, mask)


class TranscoderReplacement:
    """What one forward shares between a transcoder's input hooks (read as they fire) and its target hooks
    (replaced by the prediction from what was read). A CLT encodes each layer's input when it fires and decodes
    it at once into the layers it writes to, so a target sums exactly the layers before it."""

    def __init__(self, sae: SparseAutoencoder, fit: HookFit) -> None:
        self.sae, self.fit, self.cfg = sae, fit, sae.cfg
        self.x: torch.Tensor | None = None  # a transcoder: the raw input of this forward
        self.acc: torch.Tensor | None = None  # a CLT: the normalised prediction [N, L, d_out] so far
        self.shape: torch.Size | None = None  # [batch, pos] of this forward

    def read(self, layer: int) -> Edit:
        def edit(a: torch.Tensor) -> torch.Tensor:
            x = a.reshape(-1, a.shape[-1]).to(self.sae.W_enc.device)
            if layer == 0:
                self.x, self.acc, self.shape = None, None, a.shape[:2]
            elif self.shape != a.shape[:2]:
                raise RuntimeError(self._missing(layer, "input"))
            if self.cfg.is_clt:
                self._add_layer(layer, x)
            else:
                self.x = x
            return a

        return edit

    def _add_layer(self, layer: int, x: torch.Tensor) -> None:
        """Encode layer `layer`'s raw input, decode it into every layer it writes to (normalised space)."""
        sae, cfg, L = self.sae, self.cfg, self.cfg.layers
        x = x.to(sae.W_enc.dtype)
        x_n, _ = normalize(x, cfg.normalize, sae.input_scale[layer].to(x.dtype))
        view = LayerView(sae, layer)
        code = sae.families[layer].encode(view, x_n).code  # type: ignore[arg-type]  # duck-types what families read
        decoded = kernels.decode(SparseCode(code.values, code.indices), view.W_dec).view(x.shape[0], L - layer, -1)
        if self.acc is None:
            self.acc = sae.b_dec.expand(x.shape[0], -1, -1).clone()
        if cfg.skip:
            self.acc[:, layer] += x_n @ sae.W_skip[layer].T
        self.acc[:, layer:] += decoded

    def prediction(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        """The raw prediction of target `layer` [batch, pos, d_out] from what this forward read."""
        if self.shape != a.shape[:2] or (self.x if not self.cfg.is_clt else self.acc) is None:
            raise RuntimeError(self._missing(layer, "target"))
        if self.acc is None:
            assert self.x is not None
            pred = self.sae.predict(self.x)
        else:
            t = self.sae.target_scale[layer] if self.cfg.normalize == "dataset_scalar" else torch.ones(())
            pred = self.acc[:, layer] / t.to(self.acc.device, self.acc.dtype)
        return pred.reshape(a.shape).to(device=a.device, dtype=a.dtype)

    def write(self, layer: int, error_term: bool) -> Edit:
        def edit(a: torch.Tensor) -> torch.Tensor:
            pred = self.prediction(layer, a)
            return _with_error(a, pred) if error_term else pred

        return edit

    def _missing(self, layer: int, where: str) -> str:
        hook = (self.fit.inputs if where == "input" else self.fit.targets)[layer]
        return (
            f"splice: the {where} hook {hook!r} fired without the input hooks before it "
            f"({list(self.fit.inputs[: layer + 1])}) in the same forward"
        )


def splice_edits(
    sae: SparseAutoencoder, fit: HookFit, error_term: bool = False, mask: torch.Tensor | None = None
) -> dict[str, Edit]:
    """The edits that splice `sae` in at `fit`'s hooks (`fit_hooks(model, sae)`), for `model.forward(tokens,
    edits=...)`: an SAE's one edit, or a transcoder's (a CLT's) reads at its input hooks and replacements at its
    target hooks. `mask` limits the replacements to its positions (the inputs are read everywhere)."""
    if not sae.cfg.is_transcoder:
        return {fit.hook: splice_edit(sae, error_term, mask)}
    state = TranscoderReplacement(sae, fit)
    edits: dict[str, Edit] = {h: state.read(i) for i, h in enumerate(fit.inputs)}
    for i, t in enumerate(fit.targets):
        if t in edits:
            raise ValueError(f"hook {t!r} is both an input and a target of this {type(sae).__name__}'s layers")
        edits[t] = _masked(state.write(i, error_term), mask)
    return edits


def _latent_index(sae: SparseAutoencoder, latents: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    idx = torch.as_tensor([latents] if isinstance(latents, int) else latents, dtype=torch.long).flatten()
    n = sae.cfg.latents
    if idx.numel() == 0:
        raise ValueError("no latent given")
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.numel():
        raise ValueError(f"latents {bad.tolist()} out of range for a dictionary of {n} latents")
    return idx.to(sae.W_dec.device)


def _no_clt(sae: SparseAutoencoder, what: str) -> None:
    if sae.cfg.is_clt:
        raise ValueError(
            f"{what} edits one dictionary's latents at one hook; a CLT's features write to several layers: splice "
            "the CLT and edit its features' decoded contributions yourself, or use a transcoder"
        )


def _ablation_target(sae: SparseAutoencoder, idx: torch.Tensor, mode: str, means: torch.Tensor | None) -> torch.Tensor:
    if mode not in ("zero", "mean"):
        raise ValueError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    if mode == "mean":
        if means is None or means.shape != (sae.cfg.latents,):
            got = None if means is None else tuple(means.shape)
            raise ValueError(
                f"mode='mean' needs means=[n_latents={sae.cfg.n_latents}] (each latent's mean "
                f"activation, e.g. evaluate()'s eval/latents.safetensors), got {got}"
            )
        return means.to(sae.W_dec.device, sae.W_dec.dtype)[idx]
    return torch.zeros(idx.numel(), dtype=sae.W_dec.dtype, device=sae.W_dec.device)


def ablate_edit(
    sae: SparseAutoencoder,
    latents: int | Sequence[int] | torch.Tensor,
    mode: str = "zero",
    means: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> Edit:
    """An SAE's edit setting the codes of `latents` to 0 (`zero`) or to their mean activation `means[latent]` (`mean`).

    The rest of the activation (other latents and the reconstruction error) is kept:
    x -> x + sum_f (new_f - z_f) W_dec[f]. (A transcoder's: `ablate`, which reads its input hook.)
    """
    if sae.cfg.is_transcoder:
        raise ValueError("a transcoder's latents are read at its input hook and act at its target: use ablate(model, ...)")
    idx = _latent_index(sae, latents)
    target = _ablation_target(sae, idx, mode, means)

    def edit(a: torch.Tensor) -> torch.Tensor:
        x = a.reshape(-1, a.shape[-1]).to(sae.W_dec.device)
        z = sae.encode_dense(x)[:, idx]
        return a + _latent_delta(sae, x, target - z, idx).to(a.dtype).reshape(a.shape)

    return _masked(edit, mask)


def _transcoder_ablation(
    sae: SparseAutoencoder, fit: HookFit, idx: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> dict[str, Edit]:
    """A transcoder's ablation: the codes read at its input hook, the change of its prediction added at its target."""
    seen: dict[str, Any] = {}

    def read(a: torch.Tensor) -> torch.Tensor:
        seen["x"], seen["shape"] = a.reshape(-1, a.shape[-1]).to(sae.W_dec.device), a.shape[:2]
        return a

    def write(a: torch.Tensor) -> torch.Tensor:
        if seen.get("shape") != a.shape[:2]:
            raise RuntimeError(f"ablate: the target hook {fit.targets[0]!r} fired without its input hook in the same forward")
        z = sae.encode_dense(seen["x"])[:, idx]
        delta = (target - z).to(sae.W_dec.dtype) @ sae.W_dec[idx]
        return a + delta.to(a.device, a.dtype).reshape(a.shape)

    return {fit.inputs[0]: read, fit.targets[0]: _masked(write, mask)}


def steer_edit(sae: SparseAutoencoder, latent: int, alpha: float, mask: torch.Tensor | None = None) -> Edit:
    """x -> x + alpha * |x| * W_dec[latent] (per token: alpha is relative to the activation's norm); for a
    transcoder, at its target hook (where its decoder writes)."""
    _no_clt(sae, "steer")
    (f,) = _latent_index(sae, latent).tolist()
    direction = sae.W_dec[f].detach()

    def edit(a: torch.Tensor) -> torch.Tensor:
        return a + alpha * a.norm(dim=-1, keepdim=True) * direction.to(a.device, a.dtype)

    return _masked(edit, mask)


@contextmanager
def _intervene(sae: SparseAutoencoder, model: ModelAdapter, edits: Mapping[str, Edit]) -> Iterator[None]:
    was_training = sae.training
    sae.eval()  # inference behaviour (thresholds, posterior means), restored after
    try:
        with ExitStack() as stack:
            for hook, fn in edits.items():
                stack.enter_context(model.edit(hook, fn))
            yield
    finally:
        sae.train(was_training)


def splice(
    model: ModelAdapter,
    sae: SparseAutoencoder,
    error_term: bool = False,
    *,
    hook: str | None = None,
    target_hook: str | None = None,
    mask: torch.Tensor | None = None,
):
    """Inside the block the dictionary's output replaces the activation at its hook (an SAE: the reconstruction
    of that hook; a transcoder: the prediction of its target hook from its input hook; a CLT: every layer's target
    at once), plus its error with `error_term` (the model's output then exactly the clean one).

    A dictionary whose hooks the model lacks, whose widths differ from the hooks' or whose target fires before its
    input is refused (`fit_hooks`), naming both values; `hook` / `target_hook` replace the recorded ones."""
    fit = fit_hooks(model, sae, hook, target_hook)
    return _intervene(sae, model, splice_edits(sae, fit, error_term, mask))


def ablate(
    model: ModelAdapter,
    sae: SparseAutoencoder,
    latents: int | Sequence[int] | torch.Tensor,
    mode: str = "zero",
    *,
    means: torch.Tensor | None = None,
    hook: str | None = None,
    mask: torch.Tensor | None = None,
):
    """Inside the block `latents` are zero- or mean-ablated, everything else kept: at an SAE's hook, or for a
    transcoder in its prediction (codes read at its input hook, the change added at its target hook)."""
    _no_clt(sae, "ablate")
    if not sae.cfg.is_transcoder:
        edit = ablate_edit(sae, latents, mode, means, mask)
        return _intervene(sae, model, {check_fit(model, sae, hook): edit})
    fit = fit_hooks(model, sae, hook)
    idx = _latent_index(sae, latents)
    return _intervene(sae, model, _transcoder_ablation(sae, fit, idx, _ablation_target(sae, idx, mode, means), mask))


def steer(
    model: ModelAdapter,
    sae: SparseAutoencoder,
    latent: int,
    alpha: float,
    *,
    hook: str | None = None,
    mask: torch.Tensor | None = None,
):
    """Inside the block alpha * |x| * W_dec[latent] is added at the hook (a transcoder's: its target hook)."""
    edit = steer_edit(sae, latent, alpha, mask)
    return _intervene(sae, model, {fit_hooks(model, sae, hook).targets[0]: edit})
