"""The hook points of a run: the names given, or layers expanded through a template; one dictionary each.

Room for transcoders: a transcoder reads one hook and predicts another. Its target hooks belong here, as
fields beside these (`target_hook`, a target template) expanded and checked the same way into pairs
`names[i] -> targets[i]`, so that every reader of a run's hooks gets them from this one type.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["DEFAULT_HOOK", "HookPoints", "expand_layers"]

DEFAULT_HOOK = "blocks.3.hook_resid_pre"


@dataclass(frozen=True)
class HookPoints:
    """Hook points, in order, none twice: `names` is what `hooks` or `layers` give (`DEFAULT_HOOK` when neither)."""

    hooks: tuple[str, ...] = field(default=(), metadata={"flag": "--hook"})
    """Hook point whose activations the dictionary reads. Repeat it for one dictionary per hook, each in
    OUT/<hook>/ (default: blocks.3.hook_resid_pre)."""
    layers: str = ""
    """Train one dictionary per layer, e.g. '0-5' or '1,3,5': hook names come from hook_template."""
    hook_template: str = "blocks.{}.hook_resid_pre"
    """Hook name with {} for the layer number, used with --layers."""
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks or ())
        if not all(isinstance(h, str) and h for h in hooks):
            raise ValueError(f"hook points must be non-empty names, got {list(hooks)!r}")
        object.__setattr__(self, "hooks", hooks)
        if self.layers:
            if hooks:
                raise ValueError(f"give --hook or --layers, not both (got --hook {list(hooks)} and --layers {self.layers!r})")
            names = expand_layers(self.layers, self.hook_template)
        else:
            names = list(hooks or (DEFAULT_HOOK,))
        dup = sorted({h for h in names if names.count(h) > 1})
        if dup:
            raise ValueError(f"hook points given twice: {dup}")
        object.__setattr__(self, "names", tuple(names))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def expand_layers(layers: str, template: str) -> list[str]:
    """'0-2,5' through 'blocks.{}.hook_resid_pre' -> the four hook names, in the order given."""
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
    return [template.format(n) for n in numbers]
