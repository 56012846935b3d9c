"""Data-dependent initialisation: input scale and b_dec at the geometric median (Gao et al.); a transcoder's two
scales, its input offset, b_dec from its target and, on request, W_skip from a least-squares fit."""

from __future__ import annotations

import math

import torch

import kernels
from sae.model import SparseAutoencoder
from sae.normalize import normalize


def geometric_median(x: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm from the mean: reweight points by 1 / |x - m| until m moves < tol."""
    x = x.double()
    m = x.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() < tol * max(m.norm().item(), 1.0):
            return new
        m = new
    return m


@torch.no_grad()
def init_from_sample(
    sae: SparseAutoencoder, sample: torch.Tensor, target: torch.Tensor | None = None, skip_init: str = "zero"
) -> None:
    """Set the dataset input scale (E|s x|^2 = d_in) and b_dec from a sample of raw activations.

    A transcoder also takes the sample's targets: the target scale (E|t y|^2 = d_out), a centred transcoder's
    input offset (the normalised sample's mean, `SparseAutoencoder.centres_input`; the input scale stays that of
    the raw sample), b_dec at the geometric median of the normalised targets, and W_skip zero or
    (skip_init="lstsq") the least-squares fit of y_n on x_n, b_dec then the median of what the fit leaves. A CLT
    does each per layer."""
    sample = sample.to(device=sae.W_enc.device, dtype=torch.float64)
    if not sae.cfg.is_transcoder:
        if sae.cfg.normalize == "dataset_scalar":
            mean_sq = sample.pow(2).sum(1).mean().item()
            if not math.isfinite(mean_sq) or mean_sq <= 0:
                raise ValueError(f"cannot set the input scale: mean squared norm of the sample is {mean_sq}")
            sae.input_scale.fill_(math.sqrt(sae.cfg.d_in / mean_sq))
        x_n, _ = normalize(sample, sae.cfg.normalize, sae.input_scale.double())
        sae.b_dec.copy_(geometric_median(x_n).to(sae.b_dec.dtype))
        return
    if target is None:
        raise ValueError("a transcoder initialises from (x, y) pairs: the sample's targets are missing")
    target = target.to(device=sae.W_enc.device, dtype=torch.float64)
    if sae.cfg.normalize == "dataset_scalar":
        # of the raw input even where it is centred: on MiniLM's MLP the centred input's scale (1.14x) trained worse
        sae.input_scale.copy_(_scale(sample, "input"))
        sae.target_scale.copy_(_scale(target, "target"))
    clt = sae.cfg.is_clt
    s = sae.input_scale.double()[:, None] if clt else sae.input_scale.double()
    t = sae.target_scale.double()[:, None] if clt else sae.target_scale.double()
    x_n, y_n = sample * s, target * t
    if sae.centres_input:  # the encoder (and skip term) read x_n minus its mean over the sample
        sae.input_offset.copy_(x_n.mean(0).to(sae.input_offset.dtype))
        x_n = x_n - sae.input_offset.double()
    per_layer = [(x_n[:, i], y_n[:, i]) for i in range(sae.cfg.layers)] if clt else [(x_n, y_n)]
    for i, (x_l, y_l) in enumerate(per_layer):
        residual = y_l
        if sae.cfg.skip:
            W_skip = least_squares(x_l, y_l) if skip_init == "lstsq" else torch.zeros(y_l.shape[1], x_l.shape[1])
            W_skip = W_skip.to(y_l)
            (sae.W_skip[i] if clt else sae.W_skip).copy_(W_skip.to(sae.W_skip.dtype))
            residual = y_l - x_l @ W_skip.T
        (sae.b_dec[i] if clt else sae.b_dec).copy_(geometric_median(residual).to(sae.b_dec.dtype))


def _scale(sample: torch.Tensor, what: str) -> torch.Tensor:
    """sqrt(d / E|v|^2) of a sample [N, d] (a CLT's [N, L, d]: per layer, [L]), fp32."""
    mean_sq = sample.pow(2).sum(-1).mean(0)
    if not bool(torch.isfinite(mean_sq).all()) or bool((mean_sq <= 0).any()):
        raise ValueError(f"cannot set the {what} scale: mean squared norm of the sample is {mean_sq.tolist()}")
    return (sample.shape[-1] / mean_sq).sqrt().float()


def least_squares(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """W [d_out, d_in] minimising sum |(y - mean y) - (x - mean x) W^T|^2 (float64), with a ridge of `ridge` times
    the mean variance of x so a sample smaller than d_in, or collinear inputs, still give one answer."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    gram = xc.T @ xc
    gram += ridge * max(gram.diagonal().mean().item(), 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, xc.T @ yc).T


@torch.no_grad()
def fit_code_scale(sae: SparseAutoencoder, x_n: torch.Tensor) -> float | None:
    """Scale a penalty family's starting code by least squares when it reconstructs the sample worse than b_dec
    alone (FVU > 1), and return the scale (None: left as it is).

    A start near dense L0 (a target close to n) sums hundreds of tied-init codes, each reading its direction's
    share of x, so the reconstruction overshoots x about n / d times: FVU 99 at L0 3023 of 3072 on MiniLM
    (d = 384), which 100 steps at the default lr did not undo. A sparse start (FVU 0.76-0.80 at L0 24-96 of 768)
    is left as it is. Which latents fire does not change. An SAE's only: a transcoder's code reconstructs
    another vector than its input."""
    if sae.cfg.is_transcoder:
        return None
    sae.eval()
    try:
        code = sae.family.encode(sae, x_n).code
    finally:
        sae.train()
    contribution = kernels.decode(code, sae.W_dec, torch.zeros_like(sae.b_dec)).double()
    residual = x_n.double() - sae.b_dec.double()
    variance = (x_n.double() - x_n.double().mean(0)).pow(2).sum()
    if (residual - contribution).pow(2).sum() <= variance:
        return None
    s = float((residual * contribution).sum() / contribution.pow(2).sum().clamp_min(1e-30))
    if not math.isfinite(s) or s <= 0:
        return None
    sae.family.scale_code(sae, s)
    return s
