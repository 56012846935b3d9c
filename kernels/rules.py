"""The selection rules' properties, in one table: the twins, the Triton paths and shard mode read it."""

from __future__ import annotations

from typing import NamedTuple

import torch

KEYS = ("value", "magnitude", "relu")


class Rule(NamedTuple):
    """What a selection rule keeps and how its code reads.

    key: what ranks the entries (top-k rules) or is compared with the threshold: "value", "magnitude" (|value|)
    or "relu" (max(value, 0)). signed: the code's values are the pre-activations as they are; otherwise ReLU'd.
    fixed_width: every row holds `k` entries; otherwise rows hold varying counts, padded with zeros to the
    widest. over: "row" (each row on its own) or "batch" (the batch as a whole). needs: the argument that sets
    how much is kept, "k" or "threshold".
    """

    name: str
    key: str
    signed: bool
    fixed_width: bool
    over: str
    needs: str

    def score(self, pre: torch.Tensor) -> torch.Tensor:
        """What ranks the entries of `pre`."""
        if self.key == "magnitude":
            return pre.abs()
        return pre.relu() if self.key == "relu" else pre

    def value(self, pre: torch.Tensor) -> torch.Tensor:
        """A selected entry's value in the code."""
        return pre if self.signed else pre.relu()

    @property
    def aux(self) -> Rule:
        """The rule of AuxK's code over the dead latents beside this rule's code: by magnitude with signs kept
        ("abs") when this rule ranks by magnitude, else "row"."""
        return aux_rule(self.key == "magnitude")

    @property
    def key_mode(self) -> int:
        """The Triton kernels' MODE for this key (order_key: 0 plain, 1 |x|, 2 relu(x))."""
        return KEYS.index(self.key)


RULES: dict[str, Rule] = {
    "row": Rule("row", key="value", signed=False, fixed_width=True, over="row", needs="k"),
    "abs": Rule("abs", key="magnitude", signed=True, fixed_width=True, over="row", needs="k"),
    "batch": Rule("batch", key="relu", signed=False, fixed_width=False, over="batch", needs="k"),
    "threshold": Rule("threshold", key="value", signed=True, fixed_width=False, over="row", needs="threshold"),
    "stat": Rule("stat", key="value", signed=True, fixed_width=False, over="row", needs="k"),
}


def aux_rule(signed: bool) -> Rule:
    """The rule of AuxK's code over the dead latents: by magnitude with signs kept ("abs") when the main code is
    signed, else "row"."""
    return RULES["abs" if signed else "row"]
