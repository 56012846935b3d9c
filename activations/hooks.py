"""The hook points of a run: the names given, or layers expanded through a template; one dictionary each.

A transcoder reads one hook and predicts another: `targets` (or `target_template` with `layers`) pairs each
input hook `names[i]` with a target `target_names[i]`. `clt=True` makes all of `layers` one cross-layer
transcoder (CLT), which needs consecutive layers in ascending order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["CLT_TEMPLATES", "DEFAULT_HOOK", "DEFAULT_TEMPLATE", "HookPoints", "expand_layers", "parse_layers"]

DEFAULT_HOOK = "blocks.3.hook_resid_pre"
DEFAULT_TEMPLATE = "blocks.{}.hook_resid_pre"
CLT_TEMPLATES = ("blocks.{}.hook_mlp_in", "blocks.{}.hook_mlp_out")  # a CLT's default input -> target templates


@dataclass(frozen=True)
class HookPoints:
    """Hook points, in order, none twice: `names` is what `hooks` or `layers` give (`DEFAULT_HOOK` when neither);
    `target_names` their targets, one per name (empty when the run trains SAEs)."""

    hooks: tuple[str, ...] = field(default=(), metadata={"flag": "--hook"})
    """Hook point whose activations the dictionary reads. Repeat it for one dictionary per hook, each in
    OUT/<hook>/ (default: blocks.3.hook_resid_pre)."""
    layers: str = ""
    """Train one dictionary per layer, e.g. '0-5' or '1,3,5': hook names come from hook_template."""
    hook_template: str = ""
    """Hook name with {} for the layer number, used with --layers (default: blocks.{}.hook_resid_pre; with --clt
    blocks.{}.hook_mlp_in)."""
    targets: tuple[str, ...] = field(default=(), metadata={"flag": "--target-hook"})
    """Hook point a transcoder predicts from its --hook: repeat it, once per --hook, in the same order."""
    target_template: str = ""
    """Target hook name with {} for the layer number, used with --layers: one transcoder per layer (default with
    --clt: blocks.{}.hook_mlp_out)."""
    clt: bool = False
    """Train one cross-layer transcoder over all --layers (consecutive, ascending) instead of one dictionary each."""
    names: tuple[str, ...] = field(init=False)
    target_names: tuple[str, ...] = field(init=False)
    layer_numbers: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        hooks = _names("hook points", self.hooks)
        targets = _names("target hooks", self.targets)
        object.__setattr__(self, "hooks", hooks)
        object.__setattr__(self, "targets", targets)
        if self.layers:
            if hooks:
                raise ValueError(f"give --hook or --layers, not both (got --hook {list(hooks)} and --layers {self.layers!r})")
            if targets:
                raise ValueError(f"--target-hook pairs with --hook; with --layers give --target-template (got {list(targets)})")
            numbers = parse_layers(self.layers)
            names = _expand(numbers, self.input_template, "--hook-template")
            target_names = _expand(numbers, self.output_template, "--target-template") if self.output_template else []
        else:
            if self.clt:
                raise ValueError("--clt trains one dictionary over --layers: give --layers, e.g. '0-5'")
            if self.target_template:
                raise ValueError(f"--target-template {self.target_template!r} needs --layers; with --hook give --target-hook")
            numbers = []
            names = list(hooks or (DEFAULT_HOOK,))
            target_names = list(targets)
            if targets and len(targets) != len(hooks):
                raise ValueError(
                    f"--target-hook pairs 1:1 with --hook: got {len(hooks)} hook(s) {list(hooks)} and "
                    f"{len(targets)} target(s) {list(targets)}"
                )
        dup = sorted({h for h in names if names.count(h) > 1})
        if dup:
            raise ValueError(f"hook points given twice: {dup}")
        for name, target in zip(names, target_names):
            if name == target:
                raise ValueError(f"target hook {target!r} is its own input hook: that is an SAE; leave the target out")
        if self.clt:
            if len(numbers) < 2:
                raise ValueError(f"--clt needs at least two layers, got --layers {self.layers!r}; one layer is a transcoder")
            if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
                raise ValueError(f"--clt needs consecutive layers in ascending order, e.g. '2-5'; got --layers {self.layers!r}")
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "target_names", tuple(target_names))
        object.__setattr__(self, "layer_numbers", tuple(numbers))

    @property
    def input_template(self) -> str:
        """The template `layers` expand through: the one given, else the default (the MLP's input for a CLT)."""
        return self.hook_template or (CLT_TEMPLATES[0] if self.clt else DEFAULT_TEMPLATE)

    @property
    def output_template(self) -> str:
        """The target template: the one given, else the MLP's output for a CLT, else '' (no targets)."""
        return self.target_template or (CLT_TEMPLATES[1] if self.clt else "")

    @property
    def paired(self) -> bool:
        """True when the hooks have targets (transcoders or a CLT)."""
        return bool(self.target_names)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(input hook, target hook) for each transcoder, in order (empty for SAEs)."""
        return list(zip(self.names, self.target_names))

    @property
    def first_layer(self) -> int:
        """The first of `layers` (0 without them): where a CLT starts."""
        return self.layer_numbers[0] if self.layer_numbers else 0

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _names(what: str, value: object) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value or ())  # type: ignore[arg-type]
    if not all(isinstance(h, str) and h for h in names):
        raise ValueError(f"{what} must be non-empty names, got {list(names)!r}")
    return names


def parse_layers(layers: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5], in the order given."""
    numbers: list[int] = []
    for part in layers.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise ValueError(f"--layers {layers!r}: expected numbers and ranges such as '0-5' or '1,3,5'")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise ValueError(f"--layers {layers!r}: range {lo}-{hi} runs backwards")
        numbers += range(lo, hi + 1)
    return numbers


def _expand(numbers: list[int], template: str, flag: str) -> list[str]:
    if template.count("{}") != 1:
        raise ValueError(f"{flag} {template!r} must contain exactly one '{{}}' for the layer number")
    return [template.format(n) for n in numbers]


def expand_layers(layers: str, template: str) -> list[str]:
    """'0-2,5' through 'blocks.{}.hook_resid_pre' -> the four hook names, in the order given."""
    return _expand(parse_layers(layers), template, "--hook-template")
