"""Judges behind one interface (`Judge`): an OpenAI-compatible endpoint, a local Hugging Face causal LM, or a rule."""

from __future__ import annotations

import re
from typing import Any

from sae.analysis.autointerp.judges.base import Judge, JudgeError, OnReply, Reply, Request
from sae.analysis.autointerp.judges.hf import HFJudge
from sae.analysis.autointerp.judges.openai_compat import OpenAIJudge
from sae.analysis.autointerp.judges.rule import RuleJudge, rule_answer

__all__ = [
    "HFJudge",
    "Judge",
    "JudgeError",
    "OnReply",
    "OpenAIJudge",
    "Reply",
    "Request",
    "RuleJudge",
    "parse_judge",
    "rule_answer",
]

# scheme://host[:port] then a path without ':' (optional), then ':' and the model (which may hold ':')
_OPENAI = re.compile(r"^(https?://[^/\s]+(?:/[^:\s]*)?):(\S+)$")


def parse_judge(spec: str | Judge, **options: Any) -> Judge:
    """A judge from `openai:URL:MODEL` (URL with its path, e.g. http://127.0.0.1:8000/v1), `hf:PATH` or `rule`.

    `options` go to the judge's constructor (OpenAIJudge: api_key_env, concurrency, timeout, retries,
    logprobs...; HFJudge: device, batch_size); an existing judge is returned as it is.
    """
    if not isinstance(spec, str):
        if isinstance(spec, Judge):
            return spec
        raise TypeError(f"a judge is a spec string or a Judge (name, identity, parallel, answer), got {type(spec).__name__}")
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        m = _OPENAI.match(rest)
        if not m:
            raise ValueError(
                f"judge {spec!r}: expected openai:URL:MODEL, e.g. openai:http://127.0.0.1:8000/v1:my-model "
                "(the URL with its path when the model name holds ':')"
            )
        return OpenAIJudge(m.group(1), m.group(2), **options)
    if kind == "hf" and rest:
        return HFJudge(rest, **options)
    if spec == "rule":
        return RuleJudge()
    raise ValueError(f"judge {spec!r}: expected openai:URL:MODEL, hf:PATH or rule")
