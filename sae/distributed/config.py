"""The distributed and multi-hook options of `python -m sae train` (a dataclass, so the CLI is generated)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MODES = ("none", "ddp", "shard", "layers")


@dataclass
class DistributedConfig:
    """How a run spreads over processes and hook points."""

    distributed: str = "none"
    """none | ddp (data parallel) | shard (latents split across ranks) | layers (hook points spread over ranks);
    launch with torchrun for more than one rank."""
    layers: str = ""
    """Train one dictionary per layer, e.g. '0-5' or '1,3,5': hook names come from hook_template."""
    hook_template: str = "blocks.{}.hook_resid_pre"
    """Hook name with {} for the layer number, used with --layers."""
    dist_timeout_s: float = 300.0
    """Seconds a collective waits for a silent rank before the job stops with an error."""

    def __post_init__(self) -> None:
        if self.distributed not in MODES:
            raise ValueError(f"--distributed {self.distributed!r}: expected one of {MODES}")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")


def parse_hooks(hooks: list[str] | None, layers: str, template: str, default: str) -> list[str]:
    """The hook points of a run: the repeated --hook values, or --layers expanded through the template."""
    if layers:
        if hooks:
            raise ValueError(f"give --hook or --layers, not both (got --hook {hooks} and --layers {layers!r})")
        if template.count("{}") != 1:
            raise ValueError(f"--hook-template {template!r} must contain exactly one '{{}}' for the layer number")
        numbers: list[int] = []
        for part in layers.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if m is None:
                raise ValueError(f"--layers {layers!r}: expected numbers and ranges such as '0-5' or '1,3,5'")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if hi < lo:
                raise ValueError(f"--layers {layers!r}: range {lo}-{hi} runs backwards")
            numbers += range(lo, hi + 1)
        hooks = [template.format(n) for n in numbers]
    hooks = list(hooks or [default])
    dup = sorted({h for h in hooks if hooks.count(h) > 1})
    if dup:
        raise ValueError(f"hook points given twice: {dup}")
    return hooks
