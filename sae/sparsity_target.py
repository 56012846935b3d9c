"""The sparsity coefficient of the penalty families (jumprelu, gated, standard) over a run: warm-up and target L0.

A penalty family sets its L0 through a coefficient, not a k. The trainer multiplies the family's coefficient by
`SparsityController.scale`, which is

- a linear warm-up from 0 to 1 over the first `sparsity_warmup_frac` of the steps (the papers' and SAELens's
  `l1_warm_up_steps` / `l0_warm_up_steps`: early steps fit the reconstruction before the penalty bites), times
- with `target_l0`, an adaptive factor m + p, from 1: after each step, with e = log(L0_batch) - log(target),
  m += g_i * e * (1 + |m|) and p = g_p * e * (1 + |m|), so the coefficient grows about multiplicatively while the
  batch's L0 is above the target and shrinks while it is below (a proportional-integral controller on log L0).
  For an L1 penalty m stays above 0; for an L0 penalty (`signed`) it may fall below 0: a penalty near zero does
  not raise L0 within a short run (the encoder's drift lowers it), and a reward for firing does, as a Lagrange
  multiplier of the constraint L0 = target would. The update starts once the warm-up is over and stops for the
  last `TARGET_FREEZE_FRAC` of the run, where the coefficient is held so the dictionary settles under a fixed loss
  (the learning rate is near 0 there).

The gains depend on the penalty, because the two answer at different speeds. An L1 penalty's gradient reaches the
encoder's bias through every firing code, so L0 answers within a few steps, and larger gains make it oscillate
(gated swung between L0 20 and 43 around a target of 32 at (1, 2), docs/results/frontier.md). JumpReLU's step
penalty reaches only the thresholds, and only through the codes within half a bandwidth of them, so L0 answers
over tens of steps and the coefficient it needs ends far from 1 (about 30 for L0 64 on MiniLM): at (0.1, 1) the
factor could not get there within a 200-step run and L0 ended 14% above the target on the training batches.
The factor is bounded, for an L0 penalty at TARGET_MAX_SCALE_L0 (100): started above a low target, JumpReLU's
lagging L0 let the factor wind up to the L1 bound (1e5) before it crossed, and then held L0 12% under 8.

The state (m, p) is a device tensor, so no step waits on the host; it is saved in the trainer's checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sae.families.base import Family

# (g_i, g_p) by penalty: the integral gain (change of the factor per step per unit of log(L0 / target), times
# (1 + |m|)) and the proportional gain (the factor's immediate answer to this step's log(L0 / target))
TARGET_GAINS = {"l1": (0.1, 1.0), "l0": (1.0, 2.0)}
TARGET_FREEZE_FRAC = 0.05  # the last fraction of the run with the coefficient held
TARGET_MAX_SCALE = 1e5  # the factor's upper bound for an L1 penalty, and the bound of a reward's size
# an L0 penalty's upper bound: JumpReLU's L0 lags its penalty by tens of steps, and a start above a low target let
# the factor wind up to 1e5 before L0 crossed it, then held L0 12% under 8 while it unwound (docs/results/
# frontier.md); at 100x the default coefficient one firing latent costs 0.1, about a whole FVU. At 16-64 the
# factor stays below it (those rows unchanged)
TARGET_MAX_SCALE_L0 = 1e2
TARGET_MIN_SCALE = 1e-5  # its lower bound for an L1 penalty (an L0 penalty's is -TARGET_MAX_SCALE)


def check_target_l0(family: type[Family], target_l0: float | None, n_latents: int | None) -> None:
    """Refuse a target L0 that the family or the dictionary cannot meet, with one line naming the value."""
    if target_l0 is None:
        return
    if not family.penalty:
        raise ValueError(
            f"target_l0={target_l0!r}: family {family.name!r} sets its L0 by k, not by a sparsity penalty; "
            "a target L0 is for jumprelu, gated and standard (give this family --k instead)"
        )
    if n_latents is not None and target_l0 > n_latents:
        raise ValueError(f"target_l0={target_l0!r} is above n_latents={n_latents}; expected 0 < target_l0 <= n_latents")


def check_coefficient(name: str, value: float | None) -> None:
    """Refuse a coefficient that is not a finite float >= 0 (None: the default)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r}; expected a finite float >= 0")


class SparsityController:
    """The factor on a penalty family's coefficient at each step: warm-up times the target-L0 adaptation."""

    def __init__(
        self,
        steps: int,
        warmup_frac: float,
        target_l0: float | None,
        device: torch.device | str = "cpu",
        signed: bool = False,
    ) -> None:
        self.steps = steps
        self.warmup_steps = int(warmup_frac * steps)
        self.target_l0 = target_l0
        self.freeze_at = steps - int(TARGET_FREEZE_FRAC * steps)
        self.lowest = -TARGET_MAX_SCALE if signed else TARGET_MIN_SCALE
        self.highest = TARGET_MAX_SCALE_L0 if signed else TARGET_MAX_SCALE
        self.gains = TARGET_GAINS["l0" if signed else "l1"]
        self.factor = torch.ones((), dtype=torch.float32, device=device)  # the integral part m
        self.push = torch.zeros((), dtype=torch.float32, device=device)  # the proportional part, from the last step

    def warmup(self, index: int) -> float:
        """Linear warm-up factor at optimiser step `index` (0-based): (index + 1) / warm-up steps, then 1."""
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (index + 1) / self.warmup_steps)

    def scale(self, index: int) -> torch.Tensor:
        """The factor on the family's coefficient at step `index` (a 0-d device tensor)."""
        return (self.factor + self.push).clamp(self.lowest, self.highest) * self.warmup(index)

    def adapting(self, index: int) -> bool:
        """Whether step `index` updates the coefficient: a target is set, the warm-up is over, the freeze not begun."""
        return self.target_l0 is not None and self.warmup_steps <= index < self.freeze_at

    @torch.no_grad()
    def update(self, index: int, l0: torch.Tensor) -> None:
        """After step `index`, whose batch had mean L0 `l0` (a 0-d tensor): move log(coefficient) toward the target."""
        if not self.adapting(index):
            self.push.zero_()  # frozen (or not begun): the integral part only
            return
        assert self.target_l0 is not None
        error = l0.float().clamp_min(1e-3).log() - math.log(self.target_l0)
        # no reward for firing while L0 is above the target (the integral's wind-up, undone at once)
        self.factor.copy_(torch.where((error > 0) & (self.factor < 0), torch.zeros_like(self.factor), self.factor))
        integral, proportional = self.gains
        self.factor.add_(integral * error * (1 + self.factor.abs())).clamp_(self.lowest, self.highest)
        self.push = proportional * error * (1 + self.factor.abs())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"factor": self.factor.detach().cpu(), "push": self.push.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.factor = state["factor"].to(device=self.factor.device, dtype=torch.float32).clone()
        self.push = state["push"].to(device=self.factor.device, dtype=torch.float32).clone()
