"""Automated interpretability: a language model explains each latent from its feature statistics, and the
explanation is scored by how well it predicts where the latent fires (detection, fuzzing).

`explain(stats, judge)` and `score(stats, explanations, judge)` need only the statistics file that
`feature_stats` (or `python -m sae dashboard`) wrote, no forward pass of the dictionary's model;
`explain_and_score` is the whole resumable pass behind `python -m sae explain`, writing `explanations.jsonl`.
One module per job: `prompts`, `sampling`, `judges` (OpenAI-compatible HTTP, local Hugging Face, a rule),
`cache`, `scoring`, `results`, `runner`; `synthetic` builds latents of known ground truth.
"""

from sae.analysis.autointerp.cache import CACHE_FILE, RequestCache
from sae.analysis.autointerp.judges import (
    HFJudge,
    Judge,
    JudgeError,
    OpenAIJudge,
    Reply,
    Request,
    RuleJudge,
    parse_judge,
)
from sae.analysis.autointerp.prompts import PROMPT_VERSION
from sae.analysis.autointerp.results import EXPLANATIONS_FILE, load_explanations
from sae.analysis.autointerp.runner import (
    METHODS,
    Budget,
    BudgetExhausted,
    Explanation,
    RunSummary,
    explain,
    explain_and_score,
    parse_latents,
    score,
)
from sae.analysis.autointerp.sampling import SampleSettings
from sae.analysis.autointerp.scoring import Score

__all__ = [
    "CACHE_FILE",
    "EXPLANATIONS_FILE",
    "METHODS",
    "PROMPT_VERSION",
    "Budget",
    "BudgetExhausted",
    "Explanation",
    "HFJudge",
    "Judge",
    "JudgeError",
    "OpenAIJudge",
    "Reply",
    "Request",
    "RequestCache",
    "RuleJudge",
    "RunSummary",
    "SampleSettings",
    "Score",
    "explain",
    "explain_and_score",
    "load_explanations",
    "parse_judge",
    "parse_latents",
    "score",
]
