"""JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"): per-latent thresholds trained through straight-through
estimators; loads Gemma Scope, dictionary_learning and SAELens JumpReLU files.

z_i = a_i * H(a_i - theta_i), a the pre-activations, H the step function, theta [n] a learned per-latent threshold
(the `threshold` parameter, fp32). Gemma Scope's encoder reads x itself (`apply_b_dec_to_input` false); SAELens's
default subtracts b_dec first.

Training. H has no gradient, so the backward pass uses the paper's pseudo-derivatives with a rectangle kernel
K(u) = 1[|u| < 1/2] of bandwidth eps (option `bandwidth`):
    dz/dtheta = -(theta / eps) K((a - theta) / eps),    dH/dtheta = -(1 / eps) K((a - theta) / eps),
and dz/da = H(a - theta). Two sparsity penalties (option `sparsity_loss`), both dimensionless like the FVU:
- "step" (DeepMind's): lambda * E_b[sum_i H(a_i - theta_i)], the L0 itself, its gradient reaching theta only
  through dH/dtheta (and the encoder too with `ste_to_input`);
- "tanh" (Anthropic's January 2025 update, as SAELens 6.54 implements it): lambda * E_b[sum_i tanh(c z_i |W_dec_i|)]
  with c = `tanh_scale` (4), a smooth count of the firing latents; `ste_to_input` defaults to true with it, as in
  Anthropic's set-up, so the threshold's pseudo-derivative also reaches the pre-activations.
lambda is TrainConfig.sparsity_coef (default `default_coef`), warmed up and, with a target L0, adapted by the
trainer (sae.sparsity_target).

The threshold is trained as it is, not as log(theta) as in the paper: SAELens 6.54 made the same change (Adam moves
a log-parameter multiplicatively, so a small initial threshold barely moves within a short run's lr * steps) and
projects theta to >= 0 before each step, as here (after each). Only entries within half a bandwidth of their
threshold or above it have a gradient, so the training code holds those (the ones below theta with value 0) and
stays sparse.

Decoder norms: our trainer keeps each decoder row at unit norm, so |W_dec_i| = 1 in the tanh penalty and a saved
file needs no folding; SAELens's trainer leaves the norms free (initialised at 0.1) and its `fold_W_dec_norm`
moves them into W_enc, b_enc and theta, which a unit-norm file leaves as they are. Saved in SAELens's layout
(`jumprelu`: W_enc, b_enc, W_dec, b_dec, threshold).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import kernels
from kernels import Encoding, SparseCode
from sae.families.base import DEFAULT_K_AUX, SAELENS_TENSORS, Family, TrainStep, firing_quantile, regather

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

DEFAULT_BANDWIDTH = 0.05  # the rectangle kernel's width, in the normalised pre-activations' units
DEFAULT_INIT_THRESHOLD = 0.1  # theta before training sets it from the data (`init_from_sample`), normalised units
DEFAULT_L0_COEF = 1e-3  # lambda of the step penalty, per latent firing per token, against an FVU of order 0.1
DEFAULT_TANH_SCALE = 4.0  # Anthropic's c
SPARSITY_LOSSES = ("step", "tanh")


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """a * H(a - theta); backward: H to a (plus the threshold's pseudo-derivative with ste_to_input), and
    -(theta / eps) K((a - theta) / eps) to theta."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, theta: torch.Tensor, eps: float, ste_to_input: bool) -> torch.Tensor:
        ctx.save_for_backward(a, theta)
        ctx.eps, ctx.ste_to_input = eps, ste_to_input
        return a * (a > theta).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        a, theta = ctx.saved_tensors
        ste = (theta / ctx.eps) * _rectangle((a - theta) / ctx.eps) * grad
        grad_a = (a > theta).to(a.dtype) * grad
        if ctx.ste_to_input:
            grad_a = grad_a + ste
        return grad_a, -ste, None, None


class _Step(torch.autograd.Function):
    """H(a - theta); backward: -(1 / eps) K((a - theta) / eps) to theta (and its negation to a with ste_to_input)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, theta: torch.Tensor, eps: float, ste_to_input: bool) -> torch.Tensor:
        ctx.save_for_backward(a, theta)
        ctx.eps, ctx.ste_to_input = eps, ste_to_input
        return (a > theta).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        a, theta = ctx.saved_tensors
        ste = (1.0 / ctx.eps) * _rectangle((a - theta) / ctx.eps) * grad
        return (ste if ctx.ste_to_input else None), -ste, None, None


class JumpReLU(Family):
    """Per-latent threshold on the pre-activations, trained by straight-through estimators; k is not used."""

    name = "jumprelu"
    rule = "threshold"
    uses_k = False
    penalty = "l0"
    default_coef = DEFAULT_L0_COEF
    saelens_architecture = "jumprelu"
    saelens_tensors = SAELENS_TENSORS | {"threshold"}
    option_names = ("apply_b_dec_to_input", "bandwidth", "init_threshold", "sparsity_loss", "tanh_scale", "ste_to_input")
    threshold: nn.Parameter  # [n], fp32

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        o = cfg.options
        self.apply_b_dec = bool(o.get("apply_b_dec_to_input", True))
        self.bandwidth = float(o.get("bandwidth", DEFAULT_BANDWIDTH))
        self.sparsity_loss = str(o.get("sparsity_loss", "step"))
        self.tanh_scale = float(o.get("tanh_scale", DEFAULT_TANH_SCALE))
        self.ste_to_input = bool(o.get("ste_to_input", self.sparsity_loss == "tanh"))
        init = float(o.get("init_threshold", DEFAULT_INIT_THRESHOLD))
        self.threshold = nn.Parameter(torch.full((cfg.latents,), init, dtype=torch.float32))
        self._window: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # training: (a, theta, real)

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        for name in ("apply_b_dec_to_input", "ste_to_input"):
            cls.check_flag(cfg, name)
        o = cfg.options
        for name, default in (("bandwidth", DEFAULT_BANDWIDTH), ("tanh_scale", DEFAULT_TANH_SCALE)):
            v = o.get(name, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"family {cls.name!r}: {name}={v!r}; expected a finite float > 0")
        v = o.get("init_threshold", DEFAULT_INIT_THRESHOLD)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise ValueError(f"family {cls.name!r}: init_threshold={v!r}; expected a finite float >= 0")
        if o.get("sparsity_loss", "step") not in SPARSITY_LOSSES:
            raise ValueError(f"family {cls.name!r}: sparsity_loss={o['sparsity_loss']!r}; expected one of {SPARSITY_LOSSES}")

    def pre(self, sae: SparseAutoencoder, x_n: torch.Tensor) -> torch.Tensor:
        x_in = sae.encoder_input(x_n) if self.apply_b_dec else x_n
        return x_in @ sae.W_enc + sae.b_enc

    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        pre = self.pre(sae, x_n)
        if not (self.training and torch.is_grad_enabled()):
            code = kernels.select(pre, "threshold", threshold=self.threshold.detach().to(pre.dtype))
            return Encoding(regather(pre, code, relu=False), None)
        return Encoding(self._training_code(pre), None)

    def _training_code(self, pre: torch.Tensor) -> SparseCode:
        """The code with its straight-through gradients: every entry above theta - eps/2 (those below theta hold
        0 and carry theta's gradient); stashes the entries for the sparsity penalty of this forward."""
        theta = self.threshold.to(pre.dtype)
        window = kernels.select(pre.detach(), "threshold", threshold=(theta.detach() - self.bandwidth / 2))
        real = window.values != 0  # padding holds 0
        a = pre.gather(1, window.indices)
        theta_at = theta[window.indices]
        values = _JumpReLU.apply(a, theta_at, self.bandwidth, self.ste_to_input)
        values = torch.where(real, values, torch.zeros_like(values))
        self._window = (a, theta_at, real)
        return SparseCode(values, window.indices)

    def extra_losses(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, enc: Encoding, x_hat_n: torch.Tensor, step: TrainStep
    ) -> dict[str, torch.Tensor]:
        window, self._window = self._window, None
        if window is None:  # not a training forward: no straight-through entries to penalise
            return {}
        a, theta_at, real = window
        if self.sparsity_loss == "step":
            fired = _Step.apply(a, theta_at, self.bandwidth, self.ste_to_input)
            per_token = torch.where(real, fired, torch.zeros_like(fired)).float().sum(1)
        else:
            code = enc.code
            norms = sae.W_dec.norm(dim=1).to(code.values.dtype)[code.indices]
            per_token = torch.tanh(self.tanh_scale * code.values * norms).float().sum(1)
        return {"l0_loss": self.sparsity_coefficient(step) * per_token.mean()}

    @torch.no_grad()
    def init_from_sample(self, sae: SparseAutoencoder, x_n: torch.Tensor, l0: float) -> None:
        """Each latent i fires on l0 / n of the sample, unless `init_threshold` is given: Adam moves theta by about lr
        a step, which a short run's budget cannot spend on reaching the right scale from a constant. theta_i is the
        value its pre-activation exceeds there, q_i, when q_i is at least one bandwidth; otherwise theta_i is one
        bandwidth and b_enc_i rises by theta_i - q_i. A theta at 0 could not fall further, so a latent that must fire
        on more tokens than its pre-activation is positive on (a target L0 near n) could not get there; the
        bandwidth leaves theta room to move both ways."""
        if "init_threshold" in self.cfg.options:
            return
        q = firing_quantile(self.pre(sae, x_n), l0)
        theta = q.clamp_min(self.bandwidth)
        sae.b_enc.add_((theta - q).to(sae.b_enc.dtype))
        self.threshold.copy_(theta)

    @classmethod
    def has_own_loss(cls) -> bool:
        """False: the penalty is a training term of one dictionary; a CLT (which trains no penalty and refuses a
        target L0) reads JumpReLU as a selection rule, as circuit-tracer's JumpReLU CLTs are loaded."""
        return False

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder, enc: Encoding, step: TrainStep) -> None:
        """Keep theta >= 0 (below 0 the gate would pass negative pre-activations), as SAELens 6.54 projects it."""
        self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        self.threshold.div_(scale)

    @torch.no_grad()
    def scale_code(self, sae: SparseAutoencoder, s: float) -> None:
        """z(s a; s theta) = s z(a; theta): the encoder and the thresholds scale together."""
        super().scale_code(sae, s)
        self.threshold.mul_(s)

    def saelens_cfg(self) -> dict[str, Any]:
        return {"architecture": "jumprelu", "apply_b_dec_to_input": self.apply_b_dec}
