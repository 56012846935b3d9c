"""`python -m sae explain RUN --judge openai:URL:MODEL | hf:PATH`: explain and score latents from RUN's feature
statistics, into RUN/explanations.jsonl, then the browser beside them; resumable through a request cache."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sae.cli.args import add_dataclass_args, build_dataclass, dataclass_kwargs


@dataclass
class ExplainConfig:
    """Options of `python -m sae explain`."""

    path: str = field(metadata={"positional": True})
    """Run folder holding feature_stats.safetensors (python -m sae dashboard writes it), or that file."""
    judge: str = ""
    """The judge: openai:URL:MODEL (an OpenAI-compatible chat endpoint; the URL with its path, e.g.
    http://127.0.0.1:8000/v1) or hf:PATH (a local Hugging Face causal LM)."""
    latents: str = "all"
    """Latents to explain: ids and ranges such as 0-99 or 3,7,10-12, or all."""
    score: str = "detection,fuzzing"
    """Scoring methods, comma-separated: detection, fuzzing; none to only explain."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (unset: no key is sent); the key is never an option."""
    concurrency: int = 8
    """Requests in flight at once (openai judge)."""
    timeout: float = 60.0
    """Seconds per request attempt (openai judge)."""
    retries: int = 4
    """Retries of a request after a timeout, connection error, HTTP 429 / 5xx or malformed answer (openai judge)."""
    logprobs: bool = False
    """Ask the endpoint for the first token's log-probabilities, so single-passage scores get an AUROC."""
    device: str = "cpu"
    """Device of a local judge (hf judge)."""
    batch_size: int = 8
    """Prompts per generate call (hf judge)."""
    per_prompt: int = 1
    """Passages per scoring request (1: a lone yes/no each, and an AUROC where P(yes) is known)."""
    negatives: str = "random"
    """Non-activating passages for detection: random windows, or similar (top contexts of the latents with the
    most similar decoder rows; reads the dictionary in the run folder)."""
    seed: int = 0
    """Seed of the sampling of passages."""
    token_budget: int = 0
    """Stop cleanly once this many tokens (prompt + completion) were sent; 0: no limit."""
    max_cost: float = 0.0
    """Stop cleanly once the requests cost this many USD (with --price-in / --price-out); 0: no limit."""
    price_in: float = 0.0
    """USD per million prompt tokens, for --max-cost."""
    price_out: float = 0.0
    """USD per million completion tokens, for --max-cost."""
    cache: str = ""
    """Request cache (SQLite file); empty: autointerp_cache.sqlite beside the statistics; none: no cache."""
    out: str = ""
    """Explanations file; empty: explanations.jsonl beside the statistics."""
    browser: str = ""
    """Browser folder to write with the explanations; empty: the run's browser/ when it exists."""
    write_browser: bool = field(default=True, metadata={"flag": "--no-browser"})
    """Leave the browser alone."""


def add_explain_parser(sub: argparse._SubParsersAction) -> None:
    """The `explain` subcommand."""
    p = sub.add_parser("explain", help="explain and score latents with a language model (automated interpretability)")
    add_dataclass_args(p, ExplainConfig)


def _judge_options(cfg: ExplainConfig) -> dict:
    if cfg.judge.startswith("openai:"):
        return {
            "api_key_env": cfg.api_key_env or None,
            "concurrency": cfg.concurrency,
            "timeout": cfg.timeout,
            "retries": cfg.retries,
            "logprobs": cfg.logprobs,
        }
    if cfg.judge.startswith("hf:"):
        return {"device": cfg.device, "batch_size": cfg.batch_size}
    return {}


def run_explain(args: argparse.Namespace) -> int:
    """Explain and score; print where the results went. Errors in one line, exit status 2."""
    from sae.analysis.autointerp import (
        CACHE_FILE,
        Budget,
        JudgeError,
        SampleSettings,
        explain_and_score,
        parse_judge,
    )
    from sae.analysis.autointerp.results import explanations_path
    from sae.analysis.features import STATS_FILE

    try:
        cfg = build_dataclass(ExplainConfig, dataclass_kwargs(args, ExplainConfig))
        if not cfg.judge:
            raise ValueError("--judge is required: openai:URL:MODEL or hf:PATH")
        path = Path(cfg.path)
        stats_path = path / STATS_FILE if path.is_dir() else path
        if not stats_path.exists():
            raise FileNotFoundError(
                f"no feature statistics at {stats_path}: write them first with python -m sae dashboard {cfg.path}"
            )
        methods = tuple(m.strip() for m in cfg.score.split(",") if m.strip() and m.strip() != "none")
        budget = Budget(
            max_tokens=cfg.token_budget or None,
            max_cost=cfg.max_cost or None,
            price_in=cfg.price_in,
            price_out=cfg.price_out,
        )
        settings = SampleSettings(negative_source=cfg.negatives)
        decoder = None
        if cfg.negatives == "similar":
            from sae.pretrained import load_pretrained

            decoder = load_pretrained(stats_path.parent).W_dec.detach()
        cache = None if cfg.cache == "none" else (cfg.cache or stats_path.with_name(CACHE_FILE))
        judge = parse_judge(cfg.judge, **_judge_options(cfg))
        summary = explain_and_score(
            stats_path,
            judge,
            cfg.latents,
            methods=methods,
            out=cfg.out or None,
            settings=settings,
            seed=cfg.seed,
            per_prompt=cfg.per_prompt,
            decoder=decoder,
            cache=cache,
            budget=budget,
        )
        print(summary.describe())
        print(f"explanations: {explanations_path(summary.out or stats_path).resolve()}")
        browser = Path(cfg.browser) if cfg.browser else stats_path.parent / "browser"
        if cfg.write_browser and (cfg.browser or (browser / "index.html").exists()):
            from sae.analysis.dashboard import write_browser

            index = write_browser(stats_path, browser, explanations=summary.out, progress=False)
            print(f"feature browser: {index.resolve()}  (open it in a web browser)")
    except (ValueError, OSError, KeyError, TypeError, JudgeError) as e:  # OSError: a full disk, a folder without permission
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
