"""Try your own text: per-token activations of the latents that respond most to it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TextExplanation", "explain_text"]


@dataclass
class TextExplanation:
    """`acts[t, j]` is latent `latents[j]`'s activation on token `tokens[t]`; latents ordered by their peak."""

    tokens: list[str]
    latents: list[int]
    acts: torch.Tensor  # [T, L]

    def _repr_html_(self) -> str:
        from sae.analysis.show import text_html

        return text_html(self)


def explain_text(sae, model, text: str, top: int = 8) -> TextExplanation:
    """Run `text` through the model, encode it at the dictionary's hook, keep the `top` latents by peak activation.

    Special tokens (CLS/BOS/SEP) are left out of the ranking, as in `feature_stats`.
    """
    from activations import load_model
    from sae.analysis.features import token_strings

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    model = load_model(model)
    hook = sae.cfg.hook_name
    if hook is None:
        raise ValueError("the dictionary records no hook_name: set sae.cfg.hook_name to the hook it was trained on")
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ([model.bos_token_id] if model.bos_token_id is not None else []) + ids
    ids = ids[: model.max_context]
    tokens = torch.tensor([ids])
    acts = model.run(tokens, hook)[hook][0]
    with torch.no_grad():
        dense = sae.encode_dense(acts.to(sae.W_dec.device)).abs().float().cpu()  # [T, n]
    special = torch.isin(tokens[0], torch.tensor(sorted(model.special_token_ids), dtype=torch.long))
    dense[special] = 0
    peak = dense.max(0).values
    chosen = [int(i) for i in peak.topk(min(top, peak.numel())).indices if peak[i] > 0]
    text_of = token_strings(model.tokenizer, ids)
    return TextExplanation([text_of[i] for i in ids], chosen, dense[:, chosen])
