"""The graph's targets: what the attribution explains, read at the model's final hidden state.

Causal LMs (circuit-tracer's definitions): next-token logits at the prompt's last position. By default the
smallest set of top tokens whose probabilities sum to `desired_logit_prob`, at most `max_n_logits`; or given
token ids (or single-token strings). Each target's direction is its unembedding row minus the mean row (the
logit's difference from the mean logit); its weight in influence and pruning is its probability.

Encoders (no head): `Direction` targets, a vector `v` [d_model] read on the final hidden state `h` (the last
layer's output) at one position, `v . h[p]`, or on its mean over the prompt's tokens, `v . mean_p h[p]`. The mean
over every token ([CLS] and [SEP] included) is what sentence-transformers pools before it L2-normalises; the
projection of the unnormalised mean is linear in `h`, so the graph is exact for it (the normalised embedding's
projection `v . m / |m|` at this prompt is it divided by the constant `|m|` once that norm is frozen, as the
LayerNorm denominators are). Several directions at once: each weighs 1/k in influence and pruning (they have
no probabilities; equal weights summing to 1, as a full set of logit probabilities would). Without a target,
the pooled embedding's own unit direction, `m / |m|`, whose read-out is `|m|`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sae.circuits.graph import POOLED


@dataclass
class Targets:
    """The targets of one prompt: k rows seeded at the final hidden state."""

    ids: torch.Tensor  # [k] token ids (logits) or direction numbers 0..k-1 (directions)
    weights: torch.Tensor  # [k] weight in influence: softmax probabilities (logits), 1/k (directions)
    vectors: torch.Tensor  # [k, d_model] read at the final hidden state
    positions: torch.Tensor  # [k] the position read, POOLED for the mean over positions
    values: torch.Tensor  # [k] the read-out v . h on the prompt (logits: the demeaned logit)
    labels: list[str]  # [k] names for the JSON and summaries
    kind: str = "logit"  # "logit" or "direction"


@dataclass(frozen=True)
class Direction:
    """An encoder's target: the final hidden state's projection on `vector` [d_model], read at `position` (a
    position of the tokenised prompt, negative from the end) or, with `position=None`, on the mean over all its
    positions (the sentence embedding before its normalisation). The vector is used as given (not normalised)."""

    vector: Any  # a 1-D tensor, array or sequence of floats
    position: int | None = None
    label: str = ""


def is_direction_target(target: Any) -> bool:
    """Whether `target` is one `Direction` or a non-empty sequence of them."""
    if isinstance(target, Direction):
        return True
    return isinstance(target, Sequence) and not isinstance(target, str) and any(isinstance(t, Direction) for t in target)


def target_ids(target: Any, tokenizer: Any, vocab_size: int) -> torch.Tensor | None:
    """The given targets as token ids, checked to lie in the vocabulary (None: choose by probability)."""
    if target is None:
        return None
    if is_direction_target(target):
        raise ValueError(
            "Direction targets are for encoders: a causal LM's targets are next-token logits (token ids or single-token strings)"
        )
    if isinstance(target, str | int):
        target = [target]
    if isinstance(target, torch.Tensor):
        target = target.flatten().tolist()
    if not isinstance(target, Sequence) or len(target) == 0:
        raise ValueError(f"target must be None, a token id, a token string or a non-empty list of them; got {target!r}")
    ids = []
    for t in target:
        if isinstance(t, str):
            enc = tokenizer(t, add_special_tokens=False).input_ids
            if len(enc) != 1:
                raise ValueError(f"target {t!r} is {len(enc)} tokens ({enc}); a target must be one token")
            t = enc[0]
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise ValueError(f"target token {t!r} is outside the vocabulary: expected an id in [0, {vocab_size})")
        ids.append(t)
    return torch.tensor(ids, dtype=torch.long)


def choose_targets(
    logits: torch.Tensor,
    unembed: torch.Tensor,
    ids: torch.Tensor | None,
    max_n_logits: int,
    desired_logit_prob: float,
    n_pos: int,
) -> Targets:
    """Logit targets from the last position's logits [vocab] and the unembedding [vocab, d_model], read at the
    last of `n_pos` positions."""
    probs = torch.softmax(logits.float(), dim=-1)
    if ids is None:
        top_p, top_idx = torch.topk(probs, min(max_n_logits, probs.shape[0]))
        cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_logit_prob)) + 1
        ids = top_idx[:cutoff]
    ids = ids.to(logits.device)
    vectors = unembed[ids] - unembed.mean(dim=0, keepdim=True)
    values = (logits[ids] - logits.mean()).float()
    k = len(ids)
    return Targets(ids.cpu(), probs[ids].cpu(), vectors, torch.full((k,), n_pos - 1), values.cpu(), [""] * k)


def directions(target: Any, d_model: int, n_pos: int) -> list[Direction]:
    """The given direction targets checked against the model's width and the prompt's length: each vector 1-D,
    `d_model` wide, finite and non-zero, each position inside the prompt (normalised to 0..n_pos-1). None: []."""
    if target is None:
        return []
    if not is_direction_target(target):
        raise ValueError(
            f"an encoder's targets are Direction(vector, position=None|int) (a direction in its final hidden "
            f"state), not token ids or strings; got {_short(target)}"
        )
    items = [target] if isinstance(target, Direction) else list(target)
    out = []
    for j, d in enumerate(items):
        if not isinstance(d, Direction):
            raise ValueError(f"target {j} is {_short(d)}; expected a Direction like the others")
        v = torch.as_tensor(d.vector, dtype=torch.float32)
        if v.dim() != 1 or v.shape[0] != d_model:
            raise ValueError(f"target direction {j} has shape {tuple(v.shape)}; expected ({d_model},), the model's d_model")
        if not torch.isfinite(v).all() or not v.any():
            raise ValueError(f"target direction {j} is zero or not finite: a direction needs a finite non-zero vector")
        p = d.position
        if p is not None:
            if isinstance(p, bool) or not isinstance(p, int) or not -n_pos <= p < n_pos:
                raise ValueError(
                    f"target direction {j} reads position {p!r}, outside the {n_pos}-token prompt: expected an int in "
                    f"[{-n_pos}, {n_pos}) or None (the mean over positions)"
                )
            p %= n_pos
        out.append(Direction(v, p, d.label or f"direction {j}"))
    return out


def direction_targets(final: torch.Tensor, wanted: list[Direction]) -> Targets:
    """Direction targets on the final hidden state [P, d_model]; none given: the pooled embedding's own unit
    direction."""
    h = final.float()
    pooled = h.mean(0)
    if not wanted:
        norm = float(pooled.norm())
        if not math.isfinite(norm) or norm == 0:
            raise ValueError("the pooled embedding is zero: it has no direction to use as the default target")
        wanted = [Direction(pooled / norm, None, "pooled embedding (its own direction)")]
    vectors = torch.stack([torch.as_tensor(d.vector, dtype=torch.float32) for d in wanted]).to(final.device)
    positions = torch.tensor([POOLED if d.position is None else d.position for d in wanted], dtype=torch.long)
    read = torch.stack([pooled if d.position is None else h[d.position] for d in wanted])
    values = (read * vectors).sum(-1)
    k = len(wanted)
    return Targets(
        torch.arange(k), torch.full((k,), 1.0 / k), vectors, positions, values.cpu(), [d.label for d in wanted], "direction"
    )


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."
