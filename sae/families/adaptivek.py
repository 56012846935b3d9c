"""AdaptiveK (Yao & Du 2025; code: hiyukie/adaptiveK): k per token from a linear complexity probe.

Probe c(x) = clamp(w.x + b, 0, 10), s = c / 10,
    k(x) = round(k_min + (k_max - k_min) * sigmoid(6 (s - 0.5) + delta)),
then per-row top-k(x) of ReLU(a) as a batched top-k_max plus a mask. k is not differentiable, so no
SAE gradient reaches the probe (its weights are buffers). Loss: FVU + AuxK + l1_coef * mean|z|_1 / mean|x|_2.

What we add so the mean L0 equals the target k (the paper leaves it uncontrolled): in training the
shift delta is solved per batch (bisection) so the mean of the continuous k(x) is the target, and the
integer k's are rounded by largest remainders so they sum to exactly k*B. An EMA of delta is saved
(`k_shift`) and used at inference, so one token's k does not depend on its batch.

Probe training (the paper's phase 1 is ridge regression on LLM-annotated complexity, lambda by 5-fold
CV): `fit_probe(sae, x, scores)` does that where labels exist. Without labels (default,
probe_target="self") the probe is fitted during training: until `probe_fit_at` of the run every token
uses the target k; over the second half of that warm-up we accumulate ridge statistics of each
token's reconstruction error at that fixed k (scaled so the mean token scores 5), and fit at
`probe_fit_at`. The paper's phase 3 (joint probe fine-tuning with labels) and its gradient clipping
are not implemented.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

import kernels
from kernels import Encoding, SparseCode
from sae.families.base import DEFAULT_K_AUX, Family, TrainStep, regather

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

LAMBDAS = tuple(10.0**p for p in range(-3, 5))
FOLDS = 5


def ridge_cv(xtx: torch.Tensor, xty: torch.Tensor, yty: torch.Tensor, lambdas=LAMBDAS) -> tuple[torch.Tensor, float]:
    """Ridge weights from per-fold sufficient statistics [F, p, p], [F, p], [F] (last column = bias,
    not penalised); lambda by F-fold cross-validation. Returns (weights [p], lambda)."""
    F, p = xty.shape
    pen = torch.eye(p, dtype=xtx.dtype, device=xtx.device)
    pen[-1, -1] = 0
    best, best_err = lambdas[0], math.inf
    for lam in lambdas:
        err = 0.0
        for f in range(F):
            A = xtx.sum(0) - xtx[f] + lam * pen
            w = torch.linalg.solve(A, xty.sum(0) - xty[f])
            err += (yty[f] - 2 * w @ xty[f] + w @ xtx[f] @ w).item()
        if err < best_err:
            best, best_err = lam, err
    w = torch.linalg.solve(xtx.sum(0) + best * pen, xty.sum(0))
    return w, best


class AdaptiveK(Family):
    """Per-token k from a complexity probe; mean k held to cfg.k."""

    name = "adaptivek"
    saelens_unsupported = "its per-token k comes from a learned probe, which SAELens has no place for"
    transcoder_unsupported = (
        "its self-supervised probe regresses each token's reconstruction error on the very vector it reconstructs "
        "(both x_n in its loss), which a transcoder's input and target split"
    )
    option_names = ("k_min", "k_max", "probe_target", "probe_fit_at", "l1_coef", "shift_beta")
    probe_w: torch.Tensor  # buffers: [d], [], [], [] bool
    probe_b: torch.Tensor
    k_shift: torch.Tensor
    probe_fitted: torch.Tensor
    _xtx: torch.Tensor  # ridge statistics per fold: [F, d+1, d+1], [F, d+1], [F]
    _xty: torch.Tensor
    _yty: torch.Tensor

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        o, d = cfg.options, cfg.d_in
        self.k_min, self.k_max = self.k_range(cfg)
        self.probe_target = o.get("probe_target", "self")
        self.probe_fit_at = float(o.get("probe_fit_at", 0.1))
        self.l1_coef = float(o.get("l1_coef", 0.005))
        self.shift_beta = float(o.get("shift_beta", 0.99))
        self.register_buffer("probe_w", torch.zeros(d, dtype=torch.float32))
        self.register_buffer("probe_b", torch.full((), 5.0, dtype=torch.float32))  # s = 0.5 for every token
        self.register_buffer("k_shift", torch.tensor(self._logit_for_mean(), dtype=torch.float32))
        self.register_buffer("probe_fitted", torch.zeros((), dtype=torch.bool))
        # ridge statistics for the self-supervised target (training state only, not saved)
        self.register_buffer("_xtx", torch.zeros(FOLDS, d + 1, d + 1, dtype=torch.float64), persistent=False)
        self.register_buffer("_xty", torch.zeros(FOLDS, d + 1, dtype=torch.float64), persistent=False)
        self.register_buffer("_yty", torch.zeros(FOLDS, dtype=torch.float64), persistent=False)
        self._seen = 0
        self._err_sum = 0.0
        self._delta: torch.Tensor | None = None
        self._reset_shift = False  # right after a fit, k_shift restarts from the next batch's delta

    @staticmethod
    def k_range(cfg: SAEConfig) -> tuple[int, int]:
        k = cfg.k or 1
        return int(cfg.options.get("k_min", max(1, k // 4))), int(cfg.options.get("k_max", min(cfg.latents, 4 * k)))

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        k_min, k_max = cls.k_range(cfg)
        assert cfg.k is not None  # Family.validate refused a missing k
        if not 1 <= k_min <= cfg.k <= k_max <= cfg.latents or k_min == k_max and k_min != cfg.k:
            raise ValueError(
                f"family 'adaptivek': need 1 <= k_min <= k <= k_max <= n_latents, got k_min={k_min}, k={cfg.k}, "
                f"k_max={k_max}, n_latents={cfg.n_latents}"
            )
        target = cfg.options.get("probe_target", "self")
        if target not in ("self", "labels"):
            raise ValueError(f"family 'adaptivek': probe_target={target!r}; expected 'self' or 'labels'")
        at = cfg.options.get("probe_fit_at", 0.1)
        if not isinstance(at, (int, float)) or not 0 < at < 1:
            raise ValueError(f"family 'adaptivek': probe_fit_at={at!r}; expected a fraction of training in (0, 1)")

    # --- k per token ----------------------------------------------------------------------
    def _logit_for_mean(self) -> float:
        """delta that gives every token k = target when all probe outputs are equal (s = 0.5)."""
        span = self.k_max - self.k_min
        if span == 0:
            return 0.0
        p = min(max((self.k - self.k_min) / span, 1e-6), 1 - 1e-6)
        return math.log(p / (1 - p))

    def complexity(self, x_n: torch.Tensor) -> torch.Tensor:
        """The probe's score c(x) in [0, 10], [B]."""
        return (x_n.detach().float() @ self.probe_w + self.probe_b).clamp(0, 10)

    def k_per_token(self, x_n: torch.Tensor, exact_mean: bool | None = None) -> torch.Tensor:
        """Integer k for each token [B]; in training (exact_mean) they average exactly to cfg.k."""
        exact_mean = self.training if exact_mean is None else exact_mean
        logit = 6 * (self.complexity(x_n) / 10 - 0.5)
        lo, span = self.k_min, self.k_max - self.k_min
        if not exact_mean:
            return (lo + span * torch.sigmoid(logit + self.k_shift)).round().long().clamp(self.k_min, self.k_max)
        target = float(self.k)
        a, b = logit.new_tensor(-40.0), logit.new_tensor(40.0)
        for _ in range(40):  # mean k is increasing in delta; no host sync inside the loop
            mid = (a + b) / 2
            low = (lo + span * torch.sigmoid(logit + mid)).mean() < target
            a, b = torch.where(low, mid, a), torch.where(low, b, mid)
        delta = (a + b) / 2
        self._delta = delta
        kc = lo + span * torch.sigmoid(logit + delta)
        k = kc.floor()
        short = int(round(target * len(kc) - k.sum().item()))  # largest remainders take the missing units
        if short > 0:
            k[(kc - k).topk(short).indices] += 1
        elif short < 0:
            k[(kc - k).topk(-short, largest=False).indices] -= 1
        return k.long().clamp(self.k_min, self.k_max)

    # --- the forward -------------------------------------------------------------------------
    def encode(
        self,
        sae: SparseAutoencoder,
        x_n: torch.Tensor,
        dead: torch.Tensor | None = None,
        k: int | None = None,
        k_aux: int = DEFAULT_K_AUX,
    ) -> Encoding:
        pre = self.pre(sae, x_n)
        if k is not None:
            return Encoding(regather(pre, kernels.select(pre.detach(), "row", k=k)), None)
        k_row = self.k_per_token(x_n)
        top = kernels.select(pre.detach(), "row", k=self.k_max)
        vals, order = top.values.sort(dim=1, descending=True)
        idx = top.indices.gather(1, order)
        keep = torch.arange(self.k_max, device=pre.device)[None, :] < k_row[:, None].to(pre.device)
        code = regather(pre, SparseCode(torch.where(keep, vals, torch.zeros_like(vals)), idx))
        aux = kernels.aux_select(pre, dead, k_aux) if dead is not None else None
        return Encoding(code, aux)

    def extra_losses(
        self, sae: SparseAutoencoder, x_n: torch.Tensor, enc: Encoding, x_hat_n: torch.Tensor, step: TrainStep
    ) -> dict[str, torch.Tensor]:
        if self.training and self.probe_target == "self" and not bool(self.probe_fitted):
            if step.progress >= self.probe_fit_at / 2:
                self._accumulate(x_n, x_hat_n)
        if self.l1_coef == 0:
            return {}
        l1 = enc.code.values.float().abs().sum(1).mean() / x_n.float().norm(dim=1).mean().clamp_min(1e-12)
        return {"l1_loss": self.l1_coef * l1}

    # --- the probe -----------------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate(self, x_n: torch.Tensor, x_hat_n: torch.Tensor) -> None:
        """Ridge statistics of the token's error at the (still fixed) target k."""
        err = (x_n - x_hat_n).double().pow(2).sum(1)
        X = torch.cat([x_n.double(), torch.ones_like(err)[:, None]], 1)
        f = self._seen % FOLDS
        self._xtx[f] += X.T @ X
        self._xty[f] += X.T @ err
        self._yty[f] += err.pow(2).sum()
        self._seen += 1
        self._err_sum += err.sum().item()

    @torch.no_grad()
    def set_probe(self, w: torch.Tensor, b: float) -> None:
        self.probe_w.copy_(w.float())
        self.probe_b.fill_(float(b))
        self.probe_fitted.fill_(True)

    @torch.no_grad()
    def fit_self_supervised(self) -> bool:
        """Fit the probe on the accumulated errors (mean token -> score 5); False when none were seen."""
        if self._seen < FOLDS:
            return False
        count = self._xtx[:, -1, -1].sum().item()
        scale = 5.0 / max(self._err_sum / count, 1e-12)
        w, _ = ridge_cv(self._xtx, self._xty * scale, self._yty * scale**2)
        self.set_probe(w[:-1], w[-1].item())
        return True

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder, enc: Encoding, step: TrainStep) -> None:
        if self._delta is not None:
            # before the fit all tokens share k: no averaging needed
            beta = self.shift_beta if bool(self.probe_fitted) and not self._reset_shift else 0.0
            self.k_shift.mul_(beta).add_((1 - beta) * self._delta)
            self._delta, self._reset_shift = None, False
        if self.probe_target == "self" and not bool(self.probe_fitted) and step.progress >= self.probe_fit_at:
            if self.fit_self_supervised():
                self._reset_shift = True

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        self.probe_w.mul_(scale)  # the probe reads x_n = s x

    @torch.no_grad()
    def k_stats(self, sae: SparseAutoencoder, x: torch.Tensor) -> dict[str, float]:
        """Spread of the inference k over raw activations x: mean, std, min, quartiles, max."""
        x_n, _ = sae._prepare(x)
        k = self.k_per_token(x_n, exact_mean=False).float()
        q = torch.quantile(k, torch.tensor([0.25, 0.5, 0.75], device=k.device))
        return {
            "k_mean": k.mean().item(),
            "k_std": k.std().item(),
            "k_min": k.min().item(),
            "k_q25": q[0].item(),
            "k_median": q[1].item(),
            "k_q75": q[2].item(),
            "k_max": k.max().item(),
        }


@torch.no_grad()
def fit_probe(sae: SparseAutoencoder, x: torch.Tensor, scores: torch.Tensor, lambdas=LAMBDAS) -> float:
    """Phase 1 of the paper: ridge regression of complexity scores (0-10) on raw activations x [N, d],
    lambda by 5-fold CV; sets the probe and returns lambda."""
    family = sae.family
    if not isinstance(family, AdaptiveK):
        raise TypeError(f"fit_probe needs an adaptivek dictionary, got family {sae.cfg.family!r}")
    if scores.shape != (x.shape[0],):
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not fit x {tuple(x.shape)}: expected [{x.shape[0]}]")
    x_n, _ = sae._prepare(x)
    X = torch.cat([x_n.double(), torch.ones(x.shape[0], 1, dtype=torch.float64, device=x_n.device)], 1)
    y = scores.double().to(X.device)
    fold = torch.arange(x.shape[0], device=X.device) % FOLDS
    xtx = torch.stack([X[fold == f].T @ X[fold == f] for f in range(FOLDS)])
    xty = torch.stack([X[fold == f].T @ y[fold == f] for f in range(FOLDS)])
    yty = torch.stack([y[fold == f].pow(2).sum() for f in range(FOLDS)])
    w, lam = ridge_cv(xtx, xty, yty, lambdas)
    family.set_probe(w[:-1], w[-1].item())
    family.k_shift.fill_(0.0)
    family._reset_shift = True
    return lam
