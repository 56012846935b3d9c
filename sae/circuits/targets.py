"""The graph's targets: next-token logits at the prompt's last position (circuit-tracer's definitions).

By default the smallest set of top tokens whose probabilities sum to `desired_logit_prob`, at most
`max_n_logits`; or given token ids (or single-token strings). Each target's direction is its unembedding row
minus the mean row (the logit's difference from the mean logit), read at the final hidden state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Targets:
    ids: torch.Tensor  # [k] token ids
    probabilities: torch.Tensor  # [k] softmax probabilities at the last position
    vectors: torch.Tensor  # [k, d_model] demeaned unembedding rows


def target_ids(target: Any, tokenizer: Any, vocab_size: int) -> torch.Tensor | None:
    """The given targets as token ids, checked to lie in the vocabulary (None: choose by probability)."""
    if target is None:
        return None
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
    logits: torch.Tensor, unembed: torch.Tensor, ids: torch.Tensor | None, max_n_logits: int, desired_logit_prob: float
) -> Targets:
    """Targets from the last position's logits [vocab] and the unembedding [vocab, d_model]."""
    probs = torch.softmax(logits.float(), dim=-1)
    if ids is None:
        top_p, top_idx = torch.topk(probs, min(max_n_logits, probs.shape[0]))
        cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_logit_prob)) + 1
        ids = top_idx[:cutoff]
    ids = ids.to(logits.device)
    vectors = unembed[ids] - unembed.mean(dim=0, keepdim=True)
    return Targets(ids.cpu(), probs[ids].cpu(), vectors)
