"""The distributed options of `python -m sae train` (a dataclass, so the CLI is generated).

Which hook points a run trains (`--hook`, `--layers`, `--hook-template`) is `activations.HookPoints`."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("none", "ddp", "shard", "layers")


@dataclass
class DistributedConfig:
    """How a run spreads over processes."""

    distributed: str = "none"
    """none | ddp (data parallel) | shard (latents split across ranks) | layers (hook points spread over ranks);
    launch with torchrun for more than one rank."""
    dist_timeout_s: float = 300.0
    """Seconds a collective waits for a silent rank before the job stops with an error."""

    def __post_init__(self) -> None:
        if self.distributed not in MODES:
            raise ValueError(f"--distributed {self.distributed!r}: expected one of {MODES}")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")
