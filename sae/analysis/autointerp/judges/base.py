"""What every judge is: it answers chat requests, one reply each, and says who it is without any secret."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Judge", "JudgeError", "Reply", "Request", "OnReply"]


class JudgeError(RuntimeError):
    """The judge cannot answer: unreachable, refusing, or answering outside the protocol after every retry."""


@dataclass(frozen=True)
class Request:
    """One chat completion: `messages` ({"role", "content"} dicts), at most `max_tokens` of answer;
    `probs` asks for the probability of 'yes' against 'no' as the answer's first token, where the judge has it."""

    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    probs: bool = False

    @classmethod
    def chat(cls, messages: Sequence[dict[str, str]], max_tokens: int, probs: bool = False) -> Request:
        return cls(tuple((m["role"], m["content"]) for m in messages), max_tokens, probs)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def content(self) -> dict[str, Any]:
        """What identifies the request (its cache key holds this and the judge's identity)."""
        return {"messages": self.message_dicts(), "max_tokens": self.max_tokens, "probs": self.probs}


@dataclass(frozen=True)
class Reply:
    """The judge's answer text, the tokens it cost, and P(yes) where asked for and available."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    p_yes: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "p_yes": self.p_yes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Reply:
        return cls(str(d["text"]), int(d["prompt_tokens"]), int(d["completion_tokens"]), d.get("p_yes"))


OnReply = Callable[[int, Reply], None]


@runtime_checkable
class Judge(Protocol):
    """A language model (or a rule) that answers requests.

    `name` is shown in results and logs, `identity` is what its answers depend on besides the request
    (model, endpoint, decoding settings: part of every cache key); neither may hold a secret. `parallel`
    is how many requests are worth sending at once. `answer` returns one reply per request, in order, and
    calls `on_reply(index, reply)` as each one arrives (so a cache keeps what came back before a kill).
    """

    name: str
    identity: dict[str, Any]
    parallel: int

    def answer(self, requests: Sequence[Request], on_reply: OnReply | None = None) -> list[Reply]: ...
