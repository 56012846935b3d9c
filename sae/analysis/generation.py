"""Generation and sentence embeddings through a `ModelAdapter`, so interventions can be watched on outputs.

    with steer(model, sae, 7, alpha=4.0):
        out = generate(model, "The cat", max_new_tokens=20)            # greedy; sample=True, seed=... to sample
    print(out.text)

`generate` runs every forward through the adapter, so the edits of `steer` / `ablate` / `splice` (and any
`model.edit`) apply at each new token, and nothing is left behind once the block ends: a plain Hugging Face model
through its own `generate` (its key-value cache; the edits are per position, so the cached positions hold what
they held when edited), a transformer-lens model by a loop of full forwards (`model.forward` on the growing
context; quadratic in length, meant for short continuations). Masks (`mask=` of the interventions) fit one
batch shape and do not apply to generation.

An encoder (the embedded MiniLM) does not generate: `sentence_embedding` gives its mean-pooled final hidden
states (the sentence-transformers pooling of all-MiniLM-L6-v2), and `nearest` the closest reference embeddings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from activations.models import ModelAdapter

__all__ = ["Generation", "generate", "nearest", "prompt_ids", "sentence_embedding"]


@dataclass
class Generation:
    """A prompt and its continuation: `ids` holds both, the first `prompt_len` are the prompt."""

    ids: list[int]
    prompt_len: int
    text: str
    """The continuation, decoded."""
    timed_out: bool = False
    """The continuation stopped at `timeout_s`, before `max_new_tokens`."""

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.prompt_len :]


def prompt_ids(model: ModelAdapter, text: str) -> list[int]:
    """`text`'s token ids as the model reads a context: BOS first for a causal LM that takes one, CLS ... SEP for an
    encoder; cut to the model's maximum context."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if model.is_causal:
        ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = ([model.bos_token_id] if model.bos_token_id is not None else []) + ids
    else:
        ids = list(model.tokenizer(text, add_special_tokens=True)["input_ids"])
    return ids[: model.max_context]


def _as_ids(model: ModelAdapter, tokens_or_text: str | Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(tokens_or_text, str):
        return prompt_ids(model, tokens_or_text)
    ids = torch.as_tensor(tokens_or_text, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"tokens must be a non-empty [pos] or [1, pos] sequence, got shape {tuple(ids.shape)}")
    return [int(i) for i in ids]


def _pick(logits: torch.Tensor, sample: bool, temperature: float, top_k: int, gen: torch.Generator) -> int:
    if not sample:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if 0 < top_k < logits.numel():
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(F.softmax(logits, -1), 1, generator=gen))


def _loop(
    model: ModelAdapter, ids: list[int], n: int, sample: bool, temperature: float, top_k: int, seed: int, eos, deadline
) -> tuple[list[int], bool]:
    gen = torch.Generator().manual_seed(seed)
    out = list(ids)
    for _ in range(n):
        if deadline is not None and time.monotonic() > deadline:
            return out, True
        logits = model.forward(torch.tensor([out]))[0, -1].cpu()
        nxt = _pick(logits, sample, temperature, top_k, gen)
        out.append(nxt)
        if nxt == eos:
            break
    return out, False


def _hf_generate(
    model: ModelAdapter, ids: list[int], n: int, sample: bool, temperature: float, top_k: int, seed: int, eos, timeout_s
) -> tuple[list[int], bool]:
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    x = torch.tensor([ids], device=model.device)
    options: dict = {"do_sample": sample, "max_new_tokens": n, "pad_token_id": pad, "eos_token_id": eos}
    if sample:
        options.update(temperature=temperature, top_k=top_k)
    else:  # the model's generation config may hold sampling settings; greedy ignores them, say so to transformers
        options.update(temperature=None, top_k=None, top_p=None)
    if timeout_s is not None:
        options["max_time"] = timeout_s
    start = time.monotonic()
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.model.generate(x, attention_mask=torch.ones_like(x), **options)[0].tolist()
    new = out[len(ids) :]
    stopped = len(new) < n and (not new or new[-1] != eos)
    return out, bool(stopped and timeout_s is not None and time.monotonic() - start >= timeout_s)


def generate(
    model: ModelAdapter,
    tokens_or_text: str | Sequence[int] | torch.Tensor,
    max_new_tokens: int = 32,
    *,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    timeout_s: float | None = None,
    stop_at_eos: bool = True,
) -> Generation:
    """Continue a prompt (text, or token ids as the model reads them) by up to `max_new_tokens` tokens.

    Greedy by default; `sample=True` draws from softmax(logits / temperature), over the `top_k` most likely tokens
    when top_k > 0, reproducibly for a given `seed` (the global random state is left as it was). The continuation
    stops at the tokenizer's EOS (`stop_at_eos`), at the model's maximum context, and after `timeout_s` seconds
    (`timed_out`). Any active edit of the model (`steer`, `ablate`, `splice`) applies to every forward.
    """
    if not model.is_causal:
        raise ValueError(
            f"model {model.name!r} is an encoder: it does not generate text; compare sentence_embedding() "
            "with and without the edit instead"
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0: the whole vocabulary), got {top_k!r}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds or None, got {timeout_s!r}")
    ids = _as_ids(model, tokens_or_text)
    room = model.max_context - len(ids)
    if room < 1:
        raise ValueError(f"the prompt of {len(ids)} tokens leaves no room in the context of {model.max_context} tokens")
    n = min(max_new_tokens, room)
    eos = model.tokenizer.eos_token_id if stop_at_eos else None
    if model.backend == "hf" and hasattr(model.model, "generate"):
        out, timed_out = _hf_generate(model, ids, n, sample, temperature, top_k, seed, eos, timeout_s)
    else:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        out, timed_out = _loop(model, ids, n, sample, temperature, top_k, seed, eos, deadline)
    text = model.tokenizer.decode(out[len(ids) :], skip_special_tokens=True)
    return Generation(out, len(ids), text, timed_out)


@torch.no_grad()
def sentence_embedding(model: ModelAdapter, texts: str | Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
    """Mean-pooled final hidden states `[n, d_model]` (float32, CPU) of each text, read as `prompt_ids` gives it.

    Texts are run in groups of equal length (the adapter's forward takes no padding mask); `max_tokens` cuts
    each text first. Active edits of the model apply.
    """
    if model.is_causal:
        raise ValueError(f"model {model.name!r} is a causal LM: its forward gives logits, not a sentence embedding")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no text given")
    ids = [prompt_ids(model, t)[:max_tokens] for t in texts]
    out = torch.empty(len(ids), model.d_model)
    by_len: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        by_len.setdefault(len(row), []).append(i)
    for rows in by_len.values():
        for k in range(0, len(rows), 64):
            chunk = rows[k : k + 64]
            hidden = model.forward(torch.tensor([ids[i] for i in chunk]))
            out[chunk] = hidden.float().mean(1).cpu()
    return out


def nearest(query: torch.Tensor, references: torch.Tensor, k: int = 5) -> list[tuple[int, float]]:
    """The `k` rows of `references` `[n, d]` closest to `query` `[d]` by cosine, as (row, cosine), closest first."""
    if references.dim() != 2 or query.shape != references.shape[1:]:
        raise ValueError(f"query [d] and references [n, d] expected, got {tuple(query.shape)} and {tuple(references.shape)}")
    cos = F.cosine_similarity(references.float(), query.float()[None], dim=-1)
    top = cos.topk(min(k, cos.numel()))
    return [(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)]
