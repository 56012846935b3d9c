"""The judge's prompts and the parsing of its answers; `PROMPT_VERSION` names them in every result.

Passages are the token windows of the feature statistics, tokens joined as the text they came from.
Tokens where the latent is active are marked `<<like this>>` (the mark goes after a token's leading
space, so words stay words); the explanation prompt also lists each marked token with its activation
on a 1-9 scale of the latent's maximum. Detection shows unmarked passages and asks whether the latent
is active anywhere in them; fuzzing shows marked passages and asks whether the marks are right.
With `per_prompt` > 1 passages are numbered and the answer is one `N: yes|no` line per passage.
An answer that is not one of these is unparsed (None), never read as a yes or a no.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sae.analysis.autointerp.sampling import Example

__all__ = [
    "PROMPT_VERSION",
    "EXPLAIN_MARKER",
    "DETECTION_MARKER",
    "FUZZING_MARKER",
    "passage",
    "explain_messages",
    "detection_messages",
    "fuzzing_messages",
    "parse_explanation",
    "parse_verdicts",
]

PROMPT_VERSION = "saekit-autointerp-1"
MAX_EXPLANATION_CHARS = 300
# first words of each task's system message (how a rule-following judge tells the tasks apart)
EXPLAIN_MARKER = "You are studying one feature of a neural network."
DETECTION_MARKER = "Decide whether a feature of a neural network is active in text."
FUZZING_MARKER = "Decide whether marks on text show where a feature of a neural network is active."

_EXPLAIN_SYSTEM = (
    EXPLAIN_MARKER + " It is active on some tokens of a text and silent on the rest.\n"
    "Below are passages where it is active: its strongest examples first, then examples across its range. "
    "In each passage the tokens where it is active are marked <<like this>>, and the line after the passage "
    "lists them with the activation on a scale from 1 (weak) to 9 (strongest).\n"
    "Describe in one short phrase (at most 15 words) what the feature responds to: particular words, a kind of "
    "word, a pattern or a context. Put exact words in double quotes.\n"
    "Answer with a single line: Explanation: <your phrase>"
)
_DETECTION_SYSTEM = (
    DETECTION_MARKER + " You get an explanation of what the feature responds to and {what}. "
    "Going by the explanation alone, say whether the feature is active on any token of {which}.\n{answer}"
)
_FUZZING_SYSTEM = (
    FUZZING_MARKER + " You get an explanation of what the feature responds to and {what} in which some tokens are "
    "marked <<like this>> as the tokens where the feature is active. Going by the explanation alone, say whether "
    "the marks of {which} are right: whether the marked tokens are ones the explanation says the feature "
    "responds to, there.\n{answer}"
)
_ONE = {"what": "one passage of text", "which": "the passage", "answer": "Answer with one word: yes or no."}
_MANY = {
    "what": "numbered passages of text",
    "which": "each passage",
    "answer": 'Answer with one line per passage, in order: its number, a colon and yes or no (for example "1: no").',
}


def _clean(text: str) -> str:
    return text.replace("\r", "").replace("\n", "\u21b5")  # one passage, one line


def passage(example: Example, token_text: Sequence[str], marks: Sequence[bool] | None = None) -> str:
    """The window's text, `marks[j]` tokens wrapped in << >> (after their leading space)."""
    out = []
    for j, t in enumerate(token_text):
        t = _clean(t)
        if marks is not None and marks[j]:
            body = t.lstrip()
            out.append(f"{t[: len(t) - len(body)]}<<{body}>>")
        else:
            out.append(t)
    return "".join(out).strip()


def explain_messages(examples: Sequence[Example], texts: Sequence[Sequence[str]], max_act: float) -> list[dict[str, str]]:
    """Chat messages asking for an explanation of the latent active in `examples`."""
    blocks = []
    for k, (ex, toks) in enumerate(zip(examples, texts, strict=True), 1):
        marks = [a > 0 for a in ex.acts]
        active = ", ".join(
            f"{_clean(t).strip()} ({max(1, min(9, round(9 * a / max_act))) if max_act > 0 else 1})"
            for t, a in zip(toks, ex.acts, strict=True)
            if a > 0
        )
        blocks.append(f"Passage {k}: {passage(ex, toks, marks)}\nActive: {active}")
    return [{"role": "system", "content": _EXPLAIN_SYSTEM}, {"role": "user", "content": "\n\n".join(blocks)}]


def _scoring_user(explanation: str, shown: Sequence[str]) -> str:
    if len(shown) == 1:
        return f"Explanation: {explanation}\n\nPassage: {shown[0]}"
    body = "\n".join(f"{k}. {s}" for k, s in enumerate(shown, 1))
    return f"Explanation: {explanation}\n\nPassages:\n{body}"


def detection_messages(explanation: str, passages: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking whether the latent is active in each of `passages` (unmarked)."""
    system = _DETECTION_SYSTEM.format(**(_ONE if len(passages) == 1 else _MANY))
    return [{"role": "system", "content": system}, {"role": "user", "content": _scoring_user(explanation, passages)}]


def fuzzing_messages(explanation: str, passages: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking whether the marks on each of `passages` are right."""
    system = _FUZZING_SYSTEM.format(**(_ONE if len(passages) == 1 else _MANY))
    return [{"role": "system", "content": system}, {"role": "user", "content": _scoring_user(explanation, passages)}]


_EXPLANATION_RE = re.compile(r"explanation\s*:\s*(.*)", re.I)
_YES_NO_RE = re.compile(r"[A-Za-z]+")
_LINE_RE = re.compile(r"^\W*(\d+)\s*[:.)\-]\s*\W*(yes|no)\b", re.I)


def _strip(text: str) -> str:
    """Markdown emphasis off the ends; surrounding quotes only when they wrap the whole text."""
    text = text.strip().strip("*_`").strip()
    for q in ('"', "'"):
        if len(text) >= 2 and text[0] == text[-1] == q and q not in text[1:-1]:
            text = text[1:-1].strip()
    return text


def parse_explanation(answer: str) -> str | None:
    """The explanation in an answer: after 'Explanation:', else a lone short line; None when neither."""
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        m = _EXPLANATION_RE.search(line)
        if m:
            text = _strip(m.group(1)) or (_strip(lines[i + 1]) if i + 1 < len(lines) else "")
            return text[:MAX_EXPLANATION_CHARS] or None
    if len(lines) == 1 and len(lines[0]) <= MAX_EXPLANATION_CHARS:
        return _strip(lines[0]) or None
    return None


def parse_verdicts(answer: str, n: int) -> list[bool | None]:
    """Yes/no per passage: a lone yes or no for one passage, `N: yes|no` lines for several; None where unclear."""
    if n == 1:
        said = {w.lower() for w in _YES_NO_RE.findall(answer)} & {"yes", "no"}
        return [said == {"yes"}] if len(said) == 1 else [None]
    found: dict[int, set[bool]] = {}
    for line in answer.splitlines():
        m = _LINE_RE.match(line)
        if m:
            found.setdefault(int(m.group(1)), set()).add(m.group(2).lower() == "yes")
    return [next(iter(found[k])) if len(found.get(k, ())) == 1 else None for k in range(1, n + 1)]
