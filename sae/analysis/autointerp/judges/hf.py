"""A judge that is a local Hugging Face causal LM, through `transformers`: batched greedy generation, CPU or GPU.

Prompts go through the tokenizer's chat template when it has one, else a plain "System: / User: /
Assistant:" layout. Batches (of prompts of similar length) are left-padded so every prompt ends where its
answer starts; P(yes) is read off the first generated position's logits (the 'yes' tokens' mass against
the 'no' tokens').
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sae.analysis.autointerp.judges.base import OnReply, Reply, Request

__all__ = ["HFJudge"]

_YES = ("yes", "Yes", " yes", " Yes", "YES")
_NO = ("no", "No", " no", " No", "NO")


def _single_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    ids = set()
    for w in words:
        enc = tokenizer.encode(w, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(enc[0])
    return sorted(ids)


class HFJudge:
    """`HFJudge("path/to/model")` or `HFJudge(model, tokenizer)`: a causal LM answering on `device`, `batch_size`
    prompts per `generate` call. `name` and the cache identity hold the model's path (or name_or_path)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        dtype: torch.dtype | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, str):
            path = model
            try:
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            except OSError as e:
                raise ValueError(f"cannot load a causal LM and its tokenizer from {path!r}: {e}") from None
        else:
            path = str(getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__)
            if tokenizer is None:
                raise ValueError("HFJudge(model) needs its tokenizer: HFJudge(model, tokenizer)")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self._yes, self._no = _single_ids(tokenizer, _YES), _single_ids(tokenizer, _NO)
        self.name = f"hf:{path}"
        revision = getattr(getattr(model, "config", None), "_commit_hash", None)  # the hub snapshot, when from one
        self.identity = {"kind": "hf", "model": path, "revision": revision, "decoding": "greedy"}
        self.parallel = batch_size

    def __repr__(self) -> str:
        return f"HFJudge({self.identity['model']!r}, device={str(self.device)!r}, batch_size={self.batch_size})"

    def prompt(self, req: Request) -> str:
        """The text the model continues."""
        messages = req.message_dicts()
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"

    def _p_yes(self, logits: torch.Tensor) -> float | None:
        if not self._yes or not self._no:
            return None
        lp = torch.log_softmax(logits.float(), -1)
        yes, no = torch.logsumexp(lp[self._yes], 0), torch.logsumexp(lp[self._no], 0)
        return float(torch.sigmoid(yes - no))

    def _batch(self, reqs: Sequence[Request]) -> list[Reply]:
        texts = [self.prompt(r) for r in reqs]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        longest = max(r.max_tokens for r in reqs)
        eos = self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=longest,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=eos,
                return_dict_in_generate=True,
                output_scores=True,
            )
        new = out.sequences[:, enc["input_ids"].shape[1] :].cpu()
        first = out.scores[0].cpu()
        replies = []
        for b, r in enumerate(reqs):
            ids = new[b, : r.max_tokens].tolist()
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            prompt_tokens = int(enc["attention_mask"][b].sum())
            replies.append(Reply(text, prompt_tokens, len(ids), self._p_yes(first[b]) if r.probs else None))
        return replies

    def answer(self, requests: Sequence[Request], on_reply: OnReply | None = None) -> list[Reply]:
        """Replies in request order; batches are formed from prompts of similar length (less padding)."""
        order = sorted(range(len(requests)), key=lambda i: len(self.prompt(requests[i])))
        out: list[Reply | None] = [None] * len(requests)
        for s in range(0, len(order), self.batch_size):
            batch = order[s : s + self.batch_size]
            for i, reply in zip(batch, self._batch([requests[i] for i in batch]), strict=True):
                out[i] = reply
                if on_reply is not None:
                    on_reply(i, reply)
        return [r for r in out if r is not None]
