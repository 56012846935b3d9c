"""explain, score, and the whole pass over a dictionary's latents, with progress and resume.

Latents are processed in chunks (their prompts sent together, through `Client`: cache and budget);
`explain_and_score` appends each finished chunk's lines to `explanations.jsonl` and skips latents whose
line was made with the same judge, prompt version, seed, settings and dictionary.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae.analysis.autointerp.cache import CACHE_FILE, RequestCache
from sae.analysis.autointerp.client import Budget, BudgetExhausted, Client
from sae.analysis.autointerp.judges import Judge, Request, parse_judge
from sae.analysis.autointerp.prompts import (
    PROMPT_VERSION,
    detection_messages,
    explain_messages,
    fuzzing_messages,
    parse_explanation,
    parse_verdicts,
    passage,
)
from sae.analysis.autointerp.results import append_lines, compact, explanations_path, load_explanations
from sae.analysis.autointerp.sampling import (
    LatentSamples,
    SampleSettings,
    ScoringItem,
    detection_items,
    fuzzing_items,
    latent_samples,
)
from sae.analysis.autointerp.scoring import Score, score_verdicts
from sae.analysis.features import STATS_FILE, FeatureStats

__all__ = [
    "METHODS",
    "Budget",
    "BudgetExhausted",
    "Explanation",
    "RunSummary",
    "explain",
    "explain_and_score",
    "parse_latents",
    "score",
]

METHODS = ("detection", "fuzzing")
EXPLAIN_MAX_TOKENS = 80
VERDICT_MAX_TOKENS = 8  # per passage
_RAW_KEPT = 300


@dataclass
class Explanation:
    """A latent's explanation (None: the answer could not be read, kept in `answer`; or `skipped`)."""

    latent: int
    text: str | None
    judge: str
    prompt_version: str = PROMPT_VERSION
    n_top: int = 0
    n_quantile: int = 0
    answer: str | None = None
    skipped: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class RunSummary:
    """What `explain_and_score` did."""

    out: Path | None
    latents: int
    done: int
    already_done: int
    unparsed_explanations: int
    unparsed_verdicts: int
    requests_sent: int
    from_cache: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    stopped: str | None = None
    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        text = (
            f"{self.done} latents explained this run ({self.already_done} already done, {self.latents} asked); "
            f"{self.requests_sent} requests sent, {self.from_cache} answered from the cache; "
            f"{self.prompt_tokens + self.completion_tokens} tokens ({self.prompt_tokens} prompt, "
            f"{self.completion_tokens} completion)"
        )
        if self.cost:
            text += f", ${self.cost:.4f}"
        text += f"; unparsed: {self.unparsed_explanations} explanations, {self.unparsed_verdicts} verdicts"
        if self.stopped:
            text += f"; stopped: {self.stopped}"
        return text


# --- inputs ---------------------------------------------------------------------------------------


def parse_latents(spec: str | Iterable[int] | None, n: int) -> list[int]:
    """Latent ids from None (all), an iterable, or text like '0-99', '3,7,10-12' or 'all'; sorted, checked."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return list(range(n))
    ids: set[int] = set()
    if isinstance(spec, str):
        for part in spec.split(","):
            part = part.strip()
            lo, sep, hi = part.partition("-")
            try:
                a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
            except ValueError:
                raise ValueError(f"latents {spec!r}: expected ids and ranges like '0-99,120', got {part!r}") from None
            if a > b:
                raise ValueError(f"latents {spec!r}: range {part!r} runs backwards")
            ids.update(range(a, b + 1))
    else:
        for x in spec:
            if isinstance(x, bool) or not isinstance(x, int):
                raise ValueError(f"latents must be integers, got {x!r}")
            ids.add(int(x))
    bad = sorted(i for i in ids if not 0 <= i < n)
    if bad:
        raise ValueError(f"latents {bad[:5]} out of range: this dictionary has {n} latents (0-{n - 1})")
    return sorted(ids)


def _stats(stats: FeatureStats | str | Path) -> tuple[FeatureStats, Path | None]:
    if isinstance(stats, FeatureStats):
        return stats, None
    path = Path(stats)
    path = path / STATS_FILE if path.is_dir() else path
    return FeatureStats.load(path), path


def _judge(judge: Judge | str) -> Judge:
    return parse_judge(judge)


@contextmanager
def _opened(cache: RequestCache | str | Path | None) -> Iterator[RequestCache | None]:
    """The cache given, or the one at the path given, closed again when this call opened it."""
    if cache is None or isinstance(cache, RequestCache):
        yield cache
        return
    opened = RequestCache(cache)
    try:
        yield opened
    finally:
        opened.close()


def _methods(methods: Iterable[str]) -> tuple[str, ...]:
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or len(set(methods)) != len(methods):
        raise ValueError(f"score methods {list(methods)}: expected distinct names from {list(METHODS)}")
    return methods


def _per_prompt(per_prompt: int) -> int:
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
        raise ValueError(f"per_prompt must be an integer >= 1, got {per_prompt!r}")
    return per_prompt


def _panels(stats: FeatureStats, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Panels of `ids`, read in runs of consecutive latents."""
    out: dict[int, dict[str, Any]] = {}
    s = 0
    while s < len(ids):
        e = s
        while e + 1 < len(ids) and ids[e + 1] == ids[e] + 1:
            e += 1
        for p in stats.latents(ids[s], ids[e] + 1):
            out[p["id"]] = p
        s = e + 1
    return out


def _explanation_text(x: Any) -> str | None:
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, Explanation):
        return x.text
    if isinstance(x, Mapping):
        return x.get("explanation")
    raise TypeError(f"an explanation is text, an Explanation or an explanations.jsonl line, got {type(x).__name__}")


# --- the two steps, on one chunk of latents ---------------------------------------------------------


def _explain_chunk(
    stats: FeatureStats, ids: list[int], panels: dict[int, dict[str, Any]], samples: dict[int, LatentSamples], asker: Client
) -> dict[int, Explanation]:
    out: dict[int, Explanation] = {}
    reqs, order = [], []
    for i in ids:
        s = samples[i]
        if panels[i]["count"] == 0 or not s.explain:
            out[i] = Explanation(i, None, asker.judge.name, skipped="never active")
            continue
        texts = [stats.text(e.ids) for e in s.explain]
        reqs.append(Request.chat(explain_messages(s.explain, texts, float(panels[i]["max"])), EXPLAIN_MAX_TOKENS))
        order.append(i)
    for i, reply in zip(order, asker.ask(reqs), strict=True):
        text = parse_explanation(reply.text)
        s = samples[i]
        out[i] = Explanation(
            latent=i,
            text=text,
            judge=asker.judge.name,
            n_top=sum(e.source == "top" for e in s.explain),
            n_quantile=sum(e.source == "quantile" for e in s.explain),
            answer=None if text is not None else reply.text[:_RAW_KEPT],
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
        )
    return out


def _items(method: str, s: LatentSamples, seed: int) -> list[ScoringItem]:
    return detection_items(s, seed) if method == "detection" else fuzzing_items(s, seed)


def _score_chunk(
    stats: FeatureStats,
    samples: dict[int, LatentSamples],
    texts: Mapping[int, str | None],
    methods: tuple[str, ...],
    per_prompt: int,
    seed: int,
    asker: Client,
) -> tuple[dict[int, dict[str, Score]], dict[int, dict[str, int]]]:
    """Per latent, each method's score (latents without explanation or held-out examples get none) and tokens."""
    jobs: list[tuple[int, str, list[ScoringItem]]] = []  # one per request
    reqs = []
    for i, text in texts.items():
        if text is None:
            continue
        for method in methods:
            items = _items(method, samples[i], seed)
            build = detection_messages if method == "detection" else fuzzing_messages
            for g in range(0, len(items), per_prompt):
                group = items[g : g + per_prompt]
                shown = [passage(it.example, stats.text(it.example.ids), it.marks) for it in group]
                reqs.append(Request.chat(build(text, shown), VERDICT_MAX_TOKENS * len(group), probs=per_prompt == 1))
                jobs.append((i, method, group))
    replies = asker.ask(reqs)
    got: dict[tuple[int, str], list[tuple[bool, bool | None, float | None]]] = {}
    tokens: dict[int, dict[str, int]] = {}
    for (i, method, group), reply in zip(jobs, replies, strict=True):
        verdicts = parse_verdicts(reply.text, len(group))
        p = [reply.p_yes if len(group) == 1 else None] * len(group)
        got.setdefault((i, method), []).extend((it.label, v, q) for it, v, q in zip(group, verdicts, p, strict=True))
        t = tokens.setdefault(i, {"prompt": 0, "completion": 0})
        t["prompt"] += reply.prompt_tokens
        t["completion"] += reply.completion_tokens
    scores: dict[int, dict[str, Score]] = {}
    for (i, method), rows in got.items():
        scores.setdefault(i, {})[method] = score_verdicts(
            method,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            seed=seed * 1_000_003 + i * 7 + METHODS.index(method),
        )
    return scores, tokens


def _chunks(ids: list[int], size: int) -> Iterable[list[int]]:
    for s in range(0, len(ids), size):
        yield ids[s : s + size]


# --- public ------------------------------------------------------------------------------------------


def explain(
    stats: FeatureStats | str | Path,
    judge: Judge | str,
    latents: str | Iterable[int] | None = None,
    *,
    settings: SampleSettings | None = None,
    seed: int = 0,
    cache: RequestCache | str | Path | None = None,
    budget: Budget | None = None,
    progress: bool = True,
    chunk: int = 32,
) -> dict[int, Explanation]:
    """An explanation of each latent (all by default) from its top contexts and quantile samples in `stats`
    (a `FeatureStats`, its file or its run folder). `judge` is a `Judge` or a spec for `parse_judge`;
    `cache` a `RequestCache` or its path. When the budget runs out, the latents explained so far are
    returned with a warning (their answers, and those of the unfinished chunk, are cached)."""
    st, _ = _stats(stats)
    judge = _judge(judge)
    ids = parse_latents(latents, st.n_latents)
    settings = settings or SampleSettings()
    out: dict[int, Explanation] = {}
    with _opened(cache) as store, tqdm(total=len(ids), unit="latent", desc="explain", disable=not progress) as bar:
        asker = Client(judge, store, budget or Budget())
        for part in _chunks(ids, chunk):
            panels = _panels(st, part)
            samples = latent_samples(st, part, settings, seed, panels=panels, with_negatives=False)
            try:
                out.update(_explain_chunk(st, part, panels, samples, asker))
            except BudgetExhausted as e:
                warnings.warn(f"{e}: {len(out)} of {len(ids)} latents explained; rerun with a larger budget", stacklevel=2)
                break
            bar.update(len(part))
            bar.set_postfix(tokens=asker.budget.tokens, cached=asker.from_cache)
    return out


def score(
    stats: FeatureStats | str | Path,
    explanations: Mapping[int, Any] | str | Path,
    judge: Judge | str,
    methods: Sequence[str] = METHODS,
    latents: str | Iterable[int] | None = None,
    *,
    settings: SampleSettings | None = None,
    seed: int = 0,
    per_prompt: int = 1,
    decoder: torch.Tensor | None = None,
    cache: RequestCache | str | Path | None = None,
    budget: Budget | None = None,
    progress: bool = True,
    chunk: int = 32,
) -> dict[int, dict[str, Score]]:
    """How well each explanation predicts where its latent fires: `methods` among 'detection' and 'fuzzing'.

    `explanations` maps latents to text (or `Explanation`s, or explanations.jsonl lines), or is the path of an
    explanations file; `latents` defaults to every latent with an explanation. `per_prompt` passages go in one
    request (1: each answer is a lone yes/no and the judge's P(yes), where it gives one, yields an AUROC).
    `decoder` (the dictionary's `W_dec`) is needed for `settings.negative_source='similar'`.
    """
    st, _ = _stats(stats)
    judge = _judge(judge)
    methods = _methods(methods)
    per_prompt = _per_prompt(per_prompt)
    given = load_explanations(explanations) if isinstance(explanations, (str, Path)) else explanations
    texts = {int(i): _explanation_text(x) for i, x in given.items()}
    ids = parse_latents(latents if latents is not None else sorted(texts), st.n_latents)
    missing = [i for i in ids if i not in texts]
    if missing:
        raise ValueError(f"no explanation given for latents {missing[:5]}")
    settings = settings or SampleSettings()
    out: dict[int, dict[str, Score]] = {}
    with _opened(cache) as store, tqdm(total=len(ids), unit="latent", desc="score", disable=not progress) as bar:
        asker = Client(judge, store, budget or Budget())
        for part in _chunks(ids, chunk):
            panels = _panels(st, part)
            samples = latent_samples(st, part, settings, seed, decoder=decoder, panels=panels)
            try:
                scores, _ = _score_chunk(st, samples, {i: texts[i] for i in part}, methods, per_prompt, seed, asker)
            except BudgetExhausted as e:
                warnings.warn(f"{e}: {len(out)} of {len(ids)} latents scored; rerun with a larger budget", stacklevel=2)
                break
            out.update(scores)
            bar.update(len(part))
            bar.set_postfix(tokens=asker.budget.tokens, cached=asker.from_cache)
    return out


def _settings_record(settings: SampleSettings, per_prompt: int, methods: tuple[str, ...]) -> dict[str, Any]:
    return {"sampling": settings.to_json(), "per_prompt": per_prompt, "methods": list(methods)}


def explain_and_score(
    stats: FeatureStats | str | Path,
    judge: Judge | str,
    latents: str | Iterable[int] | None = None,
    *,
    methods: Sequence[str] = METHODS,
    scorer: Judge | str | None = None,
    out: str | Path | None = None,
    settings: SampleSettings | None = None,
    seed: int = 0,
    per_prompt: int = 1,
    decoder: torch.Tensor | None = None,
    cache: RequestCache | str | Path | None = "auto",
    budget: Budget | None = None,
    progress: bool = True,
    chunk: int = 4,
) -> RunSummary:
    """Explain and score `latents` chunk by chunk, appending each latent's line to `out` (default:
    explanations.jsonl beside the statistics file; needed when `stats` is a `FeatureStats`).

    Latents whose line in `out` was made with the same judge, scorer, prompt version, seed and settings
    are skipped; a budget that runs out stops the run cleanly (`RunSummary.stopped`), every finished
    chunk written. `scorer` defaults to `judge`; `cache` to autointerp_cache.sqlite beside `out` (None: none).
    """
    st, path = _stats(stats)
    target = out if out is not None else path
    if target is None:
        raise ValueError("explain_and_score(FeatureStats, ...) needs out= (where explanations.jsonl goes)")
    out_path = explanations_path(target)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    judge = _judge(judge)
    scorer_j = _judge(scorer) if scorer is not None else judge
    methods = _methods(methods)
    per_prompt = _per_prompt(per_prompt)
    settings = settings or SampleSettings()
    ids = parse_latents(latents, st.n_latents)
    record_settings = _settings_record(settings, per_prompt, methods)
    existing = load_explanations(out_path)
    digest = st.meta.get("identity", {}).get("sae_digest")

    def current(rec: dict[str, Any]) -> bool:
        return (
            rec.get("prompt_version") == PROMPT_VERSION
            and rec.get("judge") == judge.name
            and rec.get("scorer") == scorer_j.name
            and rec.get("seed") == seed
            and rec.get("settings") == record_settings
            and rec.get("sae_digest") == digest
        )

    todo = [i for i in ids if not (i in existing and current(existing[i]))]
    replaced = [i for i in todo if i in existing]
    if replaced:
        warnings.warn(
            f"{len(replaced)} latents in {out_path} were explained with other settings or judges: their lines are replaced",
            stacklevel=2,
        )
    budget = budget or Budget()
    summary = RunSummary(out_path, len(ids), 0, len(ids) - len(todo), 0, 0, 0, 0, 0, 0, 0.0)
    with _opened(out_path.with_name(CACHE_FILE) if cache == "auto" else cache) as store:
        asker = Client(judge, store, budget)
        scorer_asker = asker if scorer_j is judge else Client(scorer_j, store, budget)
        with tqdm(total=len(todo), unit="latent", desc="explain", disable=not progress) as bar:
            for part in _chunks(todo, chunk):
                panels = _panels(st, part)
                samples = latent_samples(st, part, settings, seed, decoder=decoder, panels=panels)
                try:
                    expl = _explain_chunk(st, part, panels, samples, asker)
                    scores, tokens = (
                        _score_chunk(st, samples, {i: e.text for i, e in expl.items()}, methods, per_prompt, seed, scorer_asker)
                        if methods
                        else ({}, {})
                    )
                except BudgetExhausted as e:
                    summary.stopped = str(e)
                    break
                lines = [
                    _record(expl[i], scores.get(i, {}), tokens.get(i), samples[i], methods, seed, scorer_j.name, record_settings)
                    | {"sae_digest": digest}
                    for i in part
                ]
                append_lines(out_path, lines)
                for rec in lines:
                    summary.records[rec["latent"]] = rec
                    summary.unparsed_explanations += rec["unparsed"]["explanation"]
                    summary.unparsed_verdicts += sum(v for k, v in rec["unparsed"].items() if k != "explanation")
                summary.done += len(part)
                bar.update(len(part))
                bar.set_postfix(
                    tokens=budget.tokens, cached=asker.from_cache + (scorer_asker.from_cache if scorer_asker is not asker else 0)
                )
    if out_path.exists():
        compact(out_path)
    askers = {id(asker): asker, id(scorer_asker): scorer_asker}.values()
    summary.requests_sent = sum(a.sent for a in askers)
    summary.from_cache = sum(a.from_cache for a in askers)
    summary.prompt_tokens, summary.completion_tokens, summary.cost = budget.prompt_tokens, budget.completion_tokens, budget.cost
    return summary


def _record(
    expl: Explanation,
    scores: dict[str, Score],
    tokens: dict[str, int] | None,
    samples: LatentSamples,
    methods: tuple[str, ...],
    seed: int,
    scorer: str,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """One line of explanations.jsonl."""
    counts: dict[str, Any] = {"explain": {"top": expl.n_top, "quantile": expl.n_quantile}}
    if "detection" in methods:
        counts["detection"] = {"positive": len(samples.positives), "negative": len(samples.negatives)}
    if "fuzzing" in methods:
        n = len(fuzzing_items(samples))
        counts["fuzzing"] = {"right": n // 2, "wrong": n // 2}
    skipped = expl.skipped or ("the answer could not be read as an explanation" if expl.text is None else None)
    return {
        "latent": expl.latent,
        "explanation": expl.text,
        "judge": expl.judge,
        "scorer": scorer,
        "prompt_version": expl.prompt_version,
        "seed": seed,
        "settings": settings,
        "samples": counts,
        "scores": {m: s.to_json() for m, s in scores.items()},
        "unparsed": {
            "explanation": int(expl.text is None and expl.skipped is None),
            **{m: s.unparsed for m, s in scores.items()},
        },
        "skipped": skipped,
        "answer": expl.answer,
        "tokens": {
            "prompt": expl.prompt_tokens + (tokens or {}).get("prompt", 0),
            "completion": expl.completion_tokens + (tokens or {}).get("completion", 0),
        },
    }
