"""How the harvested hooks of one token batch become what a stream yields, shared by the live stream and the cache.

One hook: a `[B, d]` tensor. Several: `{hook: [B, d]}`. A transcoder pair: `(x [B, d_in], y [B, d_out])`.
Several pairs: `{input hook: (x, y)}`. A CLT (`stack`): `(x [B, L, d_in], y [B, L, d_out])` over its L pairs.
Statistics take the same shape as the batches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from activations.models import check_pair_order

__all__ = ["BatchLayout"]


@dataclass(frozen=True)
class BatchLayout:
    """The input hooks, their targets (1:1, or none), and how a batch is packed."""

    inputs: tuple[str, ...]
    targets: tuple[str, ...] = ()
    multi: bool = False
    """Several hooks (or pairs) as dicts keyed by the input hook."""
    stack: bool = False
    """The pairs as one CLT stack `[B, L, d]`."""

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("no hook point given")
        if self.targets and len(self.targets) != len(self.inputs):
            raise ValueError(
                f"target hooks pair 1:1 with input hooks: got {len(self.inputs)} input(s) {list(self.inputs)} and "
                f"{len(self.targets)} target(s) {list(self.targets)}"
            )
        if len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"hook points repeated in {list(self.inputs)}")
        for h, t in zip(self.inputs, self.targets):
            if h == t:
                raise ValueError(f"target hook {t!r} is its own input hook: that is an SAE; leave the target out")
        if self.stack:
            if not self.targets:
                raise ValueError("stack=True stacks transcoder pairs into a CLT batch: give the target hooks too")
            if len(set(self.targets)) != len(self.targets):
                raise ValueError(f"a CLT's target hooks must differ, got {list(self.targets)}")

    @classmethod
    def from_args(cls, hook: str | Sequence[str], target: str | Sequence[str] | None = None, stack: bool = False):
        """A name (and a target name) gives one tensor (a pair); a list (and a list of targets) gives dicts."""
        if target is not None and isinstance(hook, str) != isinstance(target, str):
            raise ValueError(f"target mirrors hook: a name for a name, a list for a list; got hook={hook!r}, target={target!r}")
        inputs = (hook,) if isinstance(hook, str) else tuple(hook)
        targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        return cls(inputs, targets, multi=not isinstance(hook, str), stack=stack)

    @property
    def paired(self) -> bool:
        return bool(self.targets)

    @property
    def harvested(self) -> list[str]:
        """Every hook a batch needs, each once: the inputs, then the targets that are not inputs."""
        out = list(self.inputs)
        out += [t for t in dict.fromkeys(self.targets) if t not in out]
        return out

    def record(self) -> dict[str, Any]:
        """What a cache manifest records of the pairs (nothing for plain hooks)."""
        return {"pairs": [list(p) for p in zip(self.inputs, self.targets)], "stack": self.stack} if self.paired else {}

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> BatchLayout:
        """The layout a cache was harvested for: its pairs when it has them, else all its hooks."""
        pairs = m.get("pairs")
        if pairs:
            return cls(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), len(pairs) > 1, bool(m.get("stack")))
        return cls(tuple(m["hooks"]), multi=len(m["hooks"]) > 1)

    def check_widths(self, widths: dict[str, int]) -> None:
        """A CLT stack needs one input width and one target width over its layers."""
        if not self.stack:
            return
        for what, hooks in (("input", self.inputs), ("target", self.targets)):
            got = {h: widths[h] for h in hooks}
            if len(set(got.values())) > 1:
                raise ValueError(f"a CLT stacks its layers, so its {what} hooks need one width; got {got}")

    def check_order(self, order: Sequence[str], model: str) -> None:
        """Refuse a target that fires before its input in `order` (the model's order of hooks), and a CLT whose
        layers are not consecutive and ascending."""
        pairs = list(zip(self.inputs, self.targets))
        check_pair_order(pairs, order, model)
        if not self.stack:
            return
        pos = {h: i for i, h in enumerate(order)}
        for hooks in (self.inputs, self.targets):
            for a, b in zip(hooks, hooks[1:]):
                if pos[b] < pos[a]:
                    raise ValueError(f"a CLT's layers run in order, but {b!r} runs before {a!r} in the forward of {model!r}")
        numbers = [re.match(r"blocks\.(\d+)\.", h) for h in self.inputs]
        if all(numbers):
            layers = [int(m[1]) for m in numbers if m]
            if layers != list(range(layers[0], layers[0] + len(layers))):
                raise ValueError(f"a CLT reads consecutive layers in ascending order, got layers {layers} ({list(self.inputs)})")

    def pack(self, acts: dict[str, Any]) -> Any:
        """The batch (or statistics) for one set of per-hook values."""
        if not self.paired:
            return {h: acts[h] for h in self.inputs} if self.multi else acts[self.inputs[0]]
        if self.stack:
            return _stack([acts[h] for h in self.inputs]), _stack([acts[t] for t in self.targets])
        pairs = {h: (acts[h], acts[t]) for h, t in zip(self.inputs, self.targets)}
        return pairs if self.multi else pairs[self.inputs[0]]


def _stack(parts: list[Any]) -> Any:
    """Tensors `[B, d]` -> `[B, L, d]`; statistics dicts -> one dict with a layer axis (`mean` `[L, d]`,
    `mean_sq_norm` `[L]` float64, `tokens`)."""
    if isinstance(parts[0], torch.Tensor):
        return torch.stack(parts, 1)
    return {
        "mean_sq_norm": torch.tensor([p["mean_sq_norm"] for p in parts], dtype=torch.float64),
        "mean": torch.stack([p["mean"] for p in parts]),
        "tokens": parts[0]["tokens"],
    }
