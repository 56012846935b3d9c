"""A judge that answers by a stated rule from the prompt text alone: the reference for checking the scorer.

It reads the same prompts a language model gets, words split on whitespace, marks `<<...>>` removed.

- Explaining: let M be the marked words and P the words just before them. If P has fewer distinct words
  than M, the explanation is `the word after "p1", "p2", ...` (P's words, most frequent first, at most 5),
  else `the words "m1", "m2", ...` (M's, at most 8).
- Detection: an explanation's quoted words Q; `the words ...` says yes when a word of the passage is in Q,
  `the word after ...` when a word of Q is followed by another word.
- Fuzzing: yes when there is a mark and every marked word is in Q (`the words`), or every marked word
  follows a word of Q (`the word after`).

P(yes) is 1 or 0. The rule is exact on `synthetic_stats` latents, whose ground truth is written in this grammar.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from sae.analysis.autointerp.judges.base import OnReply, Reply, Request
from sae.analysis.autointerp.prompts import DETECTION_MARKER, EXPLAIN_MARKER, FUZZING_MARKER

__all__ = ["RuleJudge", "rule_answer"]

_QUOTED = re.compile(r'"([^"]+)"')
_PASSAGE = re.compile(r"^Passage \d+: (.*)$", re.M)
_NUMBERED = re.compile(r"^(\d+)\. (.*)$", re.M)


def _words(text: str) -> tuple[list[str], list[bool]]:
    words, marked = [], []
    for w in text.split():
        marked.append("<<" in w)
        words.append(w.replace("<<", "").replace(">>", ""))
    return words, marked


def _explain(user: str) -> str:
    seen: Counter[str] = Counter()
    before: Counter[str] = Counter()
    for text in _PASSAGE.findall(user):
        words, marked = _words(text)
        for j, on in enumerate(marked):
            if on:
                seen[words[j]] += 1
                if j > 0:
                    before[words[j - 1]] += 1

    def ranked(c: Counter[str], k: int) -> str:
        return ", ".join(f'"{w}"' for w, _ in sorted(c.items(), key=lambda x: (-x[1], x[0]))[:k])

    if before and len(before) < len(seen):
        return f"Explanation: the word after {ranked(before, 5)}"
    return f"Explanation: the words {ranked(seen, 8)}"


def _verdict(task: str, explanation: str, text: str) -> bool:
    quoted = set(_QUOTED.findall(explanation))
    after = "word after" in explanation.lower()
    words, marked = _words(text)
    if task == "detection":
        if after:
            return any(w in quoted for w in words[:-1])
        return any(w in quoted for w in words)
    hits = [j for j, on in enumerate(marked) if on]
    if not hits:
        return False
    if after:
        return all(j > 0 and words[j - 1] in quoted for j in hits)
    return all(words[j] in quoted for j in hits)


def rule_answer(messages: Sequence[dict[str, str]]) -> tuple[str, list[bool] | None]:
    """(answer text, verdicts or None for an explanation) for one of our prompts; ValueError for any other."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    if system.startswith(EXPLAIN_MARKER):
        return _explain(user), None
    if system.startswith(DETECTION_MARKER):
        task = "detection"
    elif system.startswith(FUZZING_MARKER):
        task = "fuzzing"
    else:
        raise ValueError("not a saekit autointerp prompt")
    head, _, body = user.partition("\n\n")
    explanation = head.removeprefix("Explanation: ")
    if body.startswith("Passage: "):
        v = _verdict(task, explanation, body.removeprefix("Passage: "))
        return ("yes" if v else "no"), [v]
    verdicts = [_verdict(task, explanation, text) for _, text in _NUMBERED.findall(body)]
    return "\n".join(f"{k}: {'yes' if v else 'no'}" for k, v in enumerate(verdicts, 1)), verdicts


class RuleJudge:
    """The rule of this module as a `Judge` (in-process, no model)."""

    name = "rule"
    identity = {"kind": "rule", "version": 1}
    parallel = 256

    def answer(self, requests: Sequence[Request], on_reply: OnReply | None = None) -> list[Reply]:
        out = []
        for i, r in enumerate(requests):
            text, verdicts = rule_answer(r.message_dicts())
            p = float(verdicts[0]) if r.probs and verdicts is not None and len(verdicts) == 1 else None
            reply = Reply(text, sum(len(c) for _, c in r.messages) // 4, len(text) // 4 + 1, p)
            if on_reply is not None:
                on_reply(i, reply)
            out.append(reply)
        return out
