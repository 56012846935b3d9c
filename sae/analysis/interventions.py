"""Interventions through a dictionary at its hook: splice, ablate latents, steer.

Each is a context manager over a `ModelAdapter` (transformer-lens `TransformerBridge`,
`HookedTransformer` / `HookedEncoder`, or plain Hugging Face): inside the block every forward of
the model (`model.forward`, `model.run`) sees the edited activation; several can be active at
once (they apply in the order entered); leaving the block restores the model exactly.

    with splice(model, sae):                    # the hook's activation replaced by the reconstruction
        logits = model.forward(tokens)
    with ablate(model, sae, [12, 40]), steer(model, sae, 7, alpha=4.0):
        ...

`mask` (`[batch, pos]` bool, optional) limits an edit to some positions of the next batch, e.g.
leaving BOS/CLS/SEP positions untouched as SAEBench does. The `*_edit` functions return the bare
activation edit (`[batch, pos, d] -> [batch, pos, d]`) for `model.forward(tokens, edits=...)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from activations.models import Edit, ModelAdapter
from sae.model import SparseAutoencoder
from sae.normalize import normalize
from sae.pretrained.compat import check_compatible

__all__ = ["ablate", "ablate_edit", "check_fit", "reconstruct", "splice", "splice_edit", "steer", "steer_edit"]


def check_fit(model: ModelAdapter, sae: SparseAutoencoder, hook: str | None = None) -> str:
    """The hook to edit (default: the one the dictionary records), checked to exist and to match d_in.

    An explicit `hook` other than the recorded one is the caller's choice (sae.check_compatible's force)."""
    hook = hook or sae.cfg.hook_name
    if not hook:
        raise ValueError("the dictionary records no hook_name: pass hook=... (e.g. 'blocks.3.hook_resid_pre')")
    check_compatible(sae, model, hook, force=True)  # raises, with close names, for a hook the model lacks
    return hook


@torch.no_grad()
def reconstruct(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The dictionary's reconstruction of raw activations `[..., d]` (in raw space, x's dtype)."""
    flat = x.reshape(-1, x.shape[-1])
    return sae(flat).x_hat.to(x.dtype).reshape(x.shape)


def _latent_delta(sae: SparseAutoencoder, x: torch.Tensor, dz: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Raw-space change of x [N, d] when the codes of `latents` change by dz [N, m]."""
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
    """x -> x_hat (or x_hat + (x - x_hat), which equals x up to rounding, with `error_term`)."""

    def edit(a: torch.Tensor) -> torch.Tensor:
        x_hat = reconstruct(sae, a)
        return x_hat + (a - x_hat) if error_term else x_hat

    return _masked(edit, mask)


def _latent_index(sae: SparseAutoencoder, latents: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    idx = torch.as_tensor([latents] if isinstance(latents, int) else latents, dtype=torch.long).flatten()
    n = sae.cfg.latents
    if idx.numel() == 0:
        raise ValueError("no latent given")
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.numel():
        raise ValueError(f"latents {bad.tolist()} out of range for a dictionary of {n} latents")
    return idx.to(sae.W_dec.device)


def ablate_edit(
    sae: SparseAutoencoder,
    latents: int | Sequence[int] | torch.Tensor,
    mode: str = "zero",
    means: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> Edit:
    """Set the codes of `latents` to 0 (`zero`) or to their mean activation `means[latent]` (`mean`).

    The rest of the activation (other latents and the reconstruction error) is kept:
    x -> x + sum_f (new_f - z_f) W_dec[f].
    """
    idx = _latent_index(sae, latents)
    if mode not in ("zero", "mean"):
        raise ValueError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    if mode == "mean":
        if means is None or means.shape != (sae.cfg.latents,):
            got = None if means is None else tuple(means.shape)
            raise ValueError(
                f"mode='mean' needs means=[n_latents={sae.cfg.n_latents}] (each latent's mean "
                f"activation, e.g. evaluate()'s eval/latents.safetensors), got {got}"
            )
        target = means.to(sae.W_dec.device, sae.W_dec.dtype)[idx]
    else:
        target = torch.zeros(idx.numel(), dtype=sae.W_dec.dtype, device=sae.W_dec.device)

    def edit(a: torch.Tensor) -> torch.Tensor:
        x = a.reshape(-1, a.shape[-1]).to(sae.W_dec.device)
        z = sae.encode_dense(x)[:, idx]
        return a + _latent_delta(sae, x, target - z, idx).to(a.dtype).reshape(a.shape)

    return _masked(edit, mask)


def steer_edit(sae: SparseAutoencoder, latent: int, alpha: float, mask: torch.Tensor | None = None) -> Edit:
    """x -> x + alpha * |x| * W_dec[latent] (per token: alpha is relative to the activation's norm)."""
    (f,) = _latent_index(sae, latent).tolist()
    direction = sae.W_dec[f].detach()

    def edit(a: torch.Tensor) -> torch.Tensor:
        return a + alpha * a.norm(dim=-1, keepdim=True) * direction.to(a.device, a.dtype)

    return _masked(edit, mask)


@contextmanager
def _intervene(model: ModelAdapter, sae: SparseAutoencoder, hook: str | None, fn: Edit) -> Iterator[None]:
    hook = check_fit(model, sae, hook)
    was_training = sae.training
    sae.eval()  # inference behaviour (thresholds, posterior means), restored after
    try:
        with model.edit(hook, fn):
            yield
    finally:
        sae.train(was_training)


def splice(
    model: ModelAdapter,
    sae: SparseAutoencoder,
    error_term: bool = False,
    *,
    hook: str | None = None,
    mask: torch.Tensor | None = None,
):
    """Inside the block the hook's activation is the dictionary's reconstruction (+ its error with `error_term`)."""
    return _intervene(model, sae, hook, splice_edit(sae, error_term, mask))


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
    """Inside the block `latents` are zero- or mean-ablated at the hook, everything else kept."""
    return _intervene(model, sae, hook, ablate_edit(sae, latents, mode, means, mask))


def steer(
    model: ModelAdapter,
    sae: SparseAutoencoder,
    latent: int,
    alpha: float,
    *,
    hook: str | None = None,
    mask: torch.Tensor | None = None,
):
    """Inside the block alpha * |x| * W_dec[latent] is added at the hook."""
    return _intervene(model, sae, hook, steer_edit(sae, latent, alpha, mask))
