"""What the live endpoints compute, away from the web layer: a text's activations, steering and ablation effects.

Every method runs the model, so the server calls them on its one model worker only. Arguments are checked here
(a `ValueError` names the bad value and becomes the 422 answer); answers are plain JSON-ready dicts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F

from activations.models import ModelAdapter
from sae.analysis.generation import generate, nearest, prompt_ids, sentence_embedding
from sae.analysis.interventions import ablate, steer
from sae.model import SparseAutoencoder
from sae.serve.limits import Limits

__all__ = ["Inspector", "reference_sentences"]

_NEIGHBOURS = 5


def reference_sentences(model: ModelAdapter, texts: Iterable[str], n: int, tokens: int = 24) -> list[str]:
    """Up to `n` distinct reference passages for nearest neighbours: the start of each text (whitespace joined) cut
    after its first `tokens` tokens, so they all embed in one batch (the adapter's forward takes no padding mask).
    Texts shorter than that are skipped."""
    if tokens < 1:
        raise ValueError(f"tokens must be positive, got {tokens}")
    tok = model.tokenizer
    out: dict[str, None] = {}
    for text in texts:
        if len(out) >= n:
            break
        head = " ".join(str(text).split())[: 40 * tokens]
        if getattr(tok, "is_fast", False):
            spans = tok(head, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if len(spans) >= tokens:
                out[head[: spans[tokens - 1][1]]] = None
        else:
            ids = tok(head, add_special_tokens=False)["input_ids"]
            if len(ids) >= tokens:
                out[tok.decode(ids[:tokens]).strip()] = None
    return list(out)


def _rounded(x: float) -> float:
    return float(f"{x:.4g}")


class Inspector:
    """A model and a dictionary at its hook, loaded once; `references` (encoders): sentences for nearest neighbours."""

    def __init__(self, model: ModelAdapter, sae: SparseAutoencoder, limits: Limits, references: Sequence[str] = ()) -> None:
        if sae.cfg.layers > 1:
            raise ValueError("a cross-layer transcoder reads every layer at once: the live server takes SAEs and transcoders")
        hook = sae.cfg.hook_name
        if not hook:
            raise ValueError("the dictionary records no hook_name: the server cannot know where to read it")
        model.check_hooks([hook])
        self.model, self.sae, self.limits, self.hook = model, sae.eval(), limits, hook
        self.references = list(references)
        self._ref_emb: torch.Tensor | None = None
        if not model.is_causal and self.references:
            self._ref_emb = sentence_embedding(model, self.references, max_tokens=64)

    def info(self) -> dict[str, Any]:
        lim = self.limits
        return {
            "model": self.model.name,
            "hook": self.hook,
            "n_latents": self.sae.cfg.latents,
            "kind": "causal" if self.model.is_causal else "encoder",
            "transcoder": self.sae.cfg.is_transcoder,
            "references": len(self.references),
            "limits": {
                "max_text_chars": lim.max_text_chars,
                "max_tokens": self.model.max_context,
                "max_latents": lim.max_latents,
                "max_new_tokens": lim.max_new_tokens,
                "max_strength": lim.max_strength,
            },
        }

    # --- argument checks --------------------------------------------------------------------------
    def _ids(self, text: Any) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("'text' must be a non-empty string")
        if len(text) > self.limits.max_text_chars:
            raise ValueError(f"'text' has {len(text)} characters, more than the limit of {self.limits.max_text_chars}")
        ids = prompt_ids(self.model, text)
        causal, bos = self.model.is_causal, self.model.bos_token_id
        whole = len(self.model.tokenizer(text, add_special_tokens=not causal)["input_ids"])
        whole += int(causal and bos is not None)
        if whole > self.model.max_context:
            raise ValueError(f"'text' has {whole} tokens, more than the model's context of {self.model.max_context}")
        return ids

    def _latents(self, latents: Any, required: bool) -> list[int]:
        if latents is None or latents == []:
            if required:
                raise ValueError("'latents' must name at least one latent")
            return []
        n = self.sae.cfg.latents
        if not isinstance(latents, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in latents):
            raise ValueError(f"'latents' must be a list of integer latent ids, got {latents!r}"[:300])
        if len(latents) > self.limits.max_latents:
            raise ValueError(f"'latents' names {len(latents)} latents, more than the limit of {self.limits.max_latents}")
        bad = [i for i in latents if not 0 <= i < n]
        if bad:
            raise ValueError(f"latents {bad[:10]} are out of range for a dictionary of {n} latents")
        return list(dict.fromkeys(latents))

    def _strengths(self, strengths: Any, count: int) -> list[float]:
        if isinstance(strengths, int | float) and not isinstance(strengths, bool):
            strengths = [strengths] * count
        ok = isinstance(strengths, list) and all(isinstance(s, int | float) and not isinstance(s, bool) for s in strengths)
        if not ok or len(strengths) != count:
            raise ValueError(f"'strengths' must be a number or a list of {count} numbers, one per latent")
        cap = self.limits.max_strength
        if not all(math.isfinite(s) and abs(s) <= cap for s in strengths):
            raise ValueError(f"each strength must be finite and at most {cap} in size")
        return [float(s) for s in strengths]

    def _int(self, value: Any, name: str, low: int, high: int, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"'{name}' must be an integer from {low} to {high}, got {value!r}")
        return value

    # --- endpoints ---------------------------------------------------------------------------------
    @torch.no_grad()
    def activations(self, text: Any, latents: Any = None) -> dict[str, Any]:
        """Tokens, each token's activation of `latents` (default: the text's top latents), and the top latents."""
        from sae.analysis.features import token_strings

        ids = self._ids(text)
        asked = self._latents(latents, required=False)
        tokens = torch.tensor([ids])
        acts = self.model.run(tokens, self.hook)[self.hook][0]
        dense = self.sae.encode_dense(acts.to(self.sae.W_dec.device)).float().cpu()  # [T, n]
        special = torch.isin(tokens[0], torch.tensor(sorted(self.model.special_token_ids), dtype=torch.long))
        ranked = dense.abs().masked_fill(special[:, None], 0)
        peak = ranked.max(0).values
        top = [int(i) for i in peak.topk(min(self.limits.top_latents, peak.numel())).indices if peak[i] > 0]
        shown = asked or top
        text_of = token_strings(self.model.tokenizer, ids)
        return {
            "tokens": [text_of[i] for i in ids],
            "special": special.tolist(),
            "top": [{"latent": i, "max": _rounded(float(peak[i]))} for i in top],
            "latents": [{"latent": i, "acts": [_rounded(a) for a in dense[:, i].tolist()]} for i in shown],
        }

    def _edited(self, stack: ExitStack, kind: str, latents: list[int], strengths: list[float]) -> None:
        if kind == "steer":
            for f, alpha in zip(latents, strengths, strict=True):
                stack.enter_context(steer(self.model, self.sae, f, alpha))
        else:
            stack.enter_context(ablate(self.model, self.sae, latents))

    def _embed(self, ids: list[int]) -> torch.Tensor:
        """The mean-pooled final hidden states [1, d] of one token sequence (as sentence_embedding pools)."""
        return self.model.forward(torch.tensor([ids])).float().mean(1).cpu()

    def _embedding_effect(self, ids: list[int], kind: str, latents: list[int], strengths: list[float]) -> dict:
        clean = self._embed(ids)
        with ExitStack() as stack:
            self._edited(stack, kind, latents, strengths)
            edited = self._embed(ids)
        out: dict[str, Any] = {"kind": "encoder", "cosine": _rounded(float(F.cosine_similarity(clean, edited).item()))}
        if self._ref_emb is not None:
            out["neighbours"] = {
                name: [{"text": self.references[i], "cosine": _rounded(c)} for i, c in nearest(e[0], self._ref_emb, _NEIGHBOURS)]
                for name, e in (("without", clean), ("with", edited))
            }
        return out

    def _continuations(self, ids: list[int], kind: str, latents, strengths, n: int, seed: int) -> dict:
        budget = self.limits.generation_timeout
        start = time.monotonic()
        timed_out = False
        out: dict[str, dict[str, str]] = {"greedy": {}, "sampled": {}}
        for edited in (False, True):
            for mode in ("greedy", "sampled"):
                left = budget - (time.monotonic() - start)
                if left <= 0:
                    timed_out = True
                    out[mode]["with" if edited else "without"] = ""
                    continue
                with ExitStack() as stack:
                    if edited:
                        self._edited(stack, kind, latents, strengths)
                    g = generate(self.model, ids, n, sample=mode == "sampled", seed=seed, top_k=50, timeout_s=left)
                timed_out |= g.timed_out
                out[mode]["with" if edited else "without"] = g.text
        return {**out, "max_new_tokens": n, "timed_out": timed_out}

    @torch.no_grad()
    def _loss(self, ids: list[int]) -> float:
        logits = self.model.forward(torch.tensor([ids]))[0, :-1].float()
        return float(F.cross_entropy(logits, torch.tensor(ids[1:], device=logits.device)))

    def steer(self, text: Any, latents: Any, strengths: Any = 4.0, max_new_tokens: Any = None, seed: Any = None) -> dict:
        """Causal LM: greedy and sampled continuations with and without the steer; encoder: the embedding's change."""
        ids = self._ids(text)
        chosen = self._latents(latents, required=True)
        alphas = self._strengths(strengths, len(chosen))
        if not self.model.is_causal:
            return {**self._embedding_effect(ids, "steer", chosen, alphas), "latents": chosen, "strengths": alphas}
        n = self._int(max_new_tokens, "max_new_tokens", 1, self.limits.max_new_tokens, min(20, self.limits.max_new_tokens))
        s = self._int(seed, "seed", 0, 2**31 - 1, 0)
        result = self._continuations(ids, "steer", chosen, alphas, n, s)
        return {"kind": "causal", **result, "latents": chosen, "strengths": alphas}

    def ablate(self, text: Any, latents: Any, max_new_tokens: Any = None) -> dict:
        """Zero-ablate `latents`: causal LM: the text's loss and greedy continuation with and without; encoder: the
        embedding's cosine with the clean one and the nearest references."""
        ids = self._ids(text)
        chosen = self._latents(latents, required=True)
        if not self.model.is_causal:
            return {**self._embedding_effect(ids, "ablate", chosen, []), "latents": chosen}
        if len(ids) < 2:
            raise ValueError("'text' needs at least two tokens for a loss")
        n = self._int(max_new_tokens, "max_new_tokens", 1, self.limits.max_new_tokens, min(20, self.limits.max_new_tokens))
        clean = self._loss(ids)
        with ExitStack() as stack:
            self._edited(stack, "ablate", chosen, [])
            edited = self._loss(ids)
        timeout = self.limits.generation_timeout / 2
        without = generate(self.model, ids, n, timeout_s=timeout)
        with ExitStack() as stack:
            self._edited(stack, "ablate", chosen, [])
            with_ = generate(self.model, ids, n, timeout_s=timeout)
        return {
            "kind": "causal",
            "loss": {"without": _rounded(clean), "with": _rounded(edited)},
            "greedy": {"without": without.text, "with": with_.text},
            "timed_out": without.timed_out or with_.timed_out,
            "latents": chosen,
        }
