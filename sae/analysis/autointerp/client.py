"""Requests to a judge through the request cache, under a token or cost budget.

Every request is looked up in the cache first; only misses reach the judge (identical requests once), and
each reply is cached as it arrives. With a budget, requests go out in slices of a few times the judge's
parallelism and no slice starts once the budget is spent: a run stops cleanly, overshooting by at most
one slice, and a rerun with a larger budget continues from the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sae.analysis.autointerp.cache import RequestCache, request_key
from sae.analysis.autointerp.judges import Judge, Reply, Request

__all__ = ["Budget", "BudgetExhausted", "Client"]


class BudgetExhausted(RuntimeError):
    """The token or cost budget was spent before every request was sent."""


@dataclass
class Budget:
    """A cap on tokens (prompt + completion) and/or cost of the requests sent (cache hits are free).

    Cost is `prompt_tokens * price_in + completion_tokens * price_out`, prices per million tokens.
    """

    max_tokens: int | None = None
    max_cost: float | None = None
    price_in: float = 0.0
    price_out: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise ValueError(f"max_tokens must be a positive integer or None, got {self.max_tokens!r}")
        for name in ("max_cost", "price_in", "price_out"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.max_cost is not None and self.price_in == 0 and self.price_out == 0:
            raise ValueError("max_cost needs price_in and/or price_out (USD per million prompt / completion tokens)")

    @property
    def limited(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float:
        return (self.prompt_tokens * self.price_in + self.completion_tokens * self.price_out) / 1e6

    @property
    def exhausted(self) -> bool:
        return (self.max_tokens is not None and self.tokens >= self.max_tokens) or (
            self.max_cost is not None and self.cost >= self.max_cost
        )

    def add(self, reply: Reply) -> None:
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens

    def describe(self) -> str:
        caps = []
        if self.max_tokens is not None:
            caps.append(f"{self.tokens} of {self.max_tokens} tokens")
        if self.max_cost is not None:
            caps.append(f"${self.cost:.4f} of ${self.max_cost:g}")
        return ", ".join(caps) or f"{self.tokens} tokens"


class Client:
    """Requests through the cache to the judge, counting what was sent and what came from the cache."""

    def __init__(self, judge: Judge, cache: RequestCache | None, budget: Budget) -> None:
        self.judge, self.cache, self.budget = judge, cache, budget
        self.sent = 0
        self.from_cache = 0

    def ask(self, requests: Sequence[Request]) -> list[Reply]:
        out: list[Reply | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            key = request_key(self.judge.identity, r)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[i] = hit
                self.from_cache += 1
            else:
                todo.setdefault(key, []).append(i)
        unique = [(k, requests[ix[0]]) for k, ix in todo.items()]
        step = 4 * max(1, self.judge.parallel) if self.budget.limited else max(1, len(unique))
        for s in range(0, len(unique), step):
            if self.budget.exhausted:
                raise BudgetExhausted(f"budget spent ({self.budget.describe()})")
            part = unique[s : s + step]

            def took(j: int, reply: Reply, part=part) -> None:
                key, req = part[j]
                if out[todo[key][0]] is not None:
                    return
                if self.cache is not None:
                    self.cache.put(key, self.judge.name, req, reply)
                for i in todo[key]:
                    out[i] = reply
                self.sent += 1
                self.budget.add(reply)

            replies = self.judge.answer([r for _, r in part], took)
            if len(replies) != len(part):
                raise RuntimeError(f"judge {self.judge.name} gave {len(replies)} replies to {len(part)} requests")
            for j, reply in enumerate(replies):  # a judge that does not call on_reply
                took(j, reply)
        return [r for r in out if r is not None]
