"""`python -m sae eval DIR`: a saved dictionary scored on held-out tokens, spliced into its model, probed.

A transcoder is scored on its target hook (its prediction from its input hook, spliced in place of the target);
a CLT on every layer's target at once, and not probed (its code reads one hook per layer)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activations.hooks import DEFAULT_HOOK
from activations.source import TextSource
from sae.cli.args import add_dataclass_args, build_dataclass, dataclass_kwargs
from sae.config import SAEConfig

# the held-out tokens are always the 'test' split
_SKIP = ("split",)
# what a run records of its held-out tokens (`eval_settings`), the defaults of a later eval
_RECORDED = ("dataset", "dataset_config", "text_column", "context_len", "eval_tokens")


@dataclass
class EvalConfig:
    """Options of `python -m sae eval`: what is not given comes from what the run recorded, then these defaults."""

    path: str = field(metadata={"positional": True})
    """Dictionary folder (cfg.json + sae_weights.safetensors)."""
    model: str = "minilm"
    """Model: 'minilm' (the embedded default), a hub name or a local path; default: the dictionary's model_name."""
    hook: str = DEFAULT_HOOK
    """Hook point spliced (a transcoder's input hook); default: the dictionary's hook_name."""
    target_hook: str = ""
    """A transcoder's target hook, which its prediction replaces; default: the dictionary's target_hook."""
    text: TextSource = field(default_factory=TextSource)
    """The held-out text (its 'test' split)."""
    eval_tokens: int | None = field(default=None, metadata={"aliases": ("--tokens",)})
    """Held-out tokens (the dataset's test split) scored; default: all the split holds, up to 65,536."""
    batch_size: int = 16
    """Contexts per forward pass."""
    seed: int = 0
    """Seed of the probing task's sampling and split."""
    force: bool = False
    """Evaluate with a --model / --hook other than the ones the dictionary records."""
    splice: bool = field(default=True, metadata={"flag": "--no-splice"})
    """Reconstruction metrics only (no forwards with the dictionary spliced in)."""
    probe: bool = field(default=True, metadata={"flag": "--no-probe"})
    """Skip sparse probing on the default task (embedded-corpus docstrings by stdlib module)."""
    plots: bool = False
    """Write eval/plots.html (plotly figures, viewable offline)."""

    def __post_init__(self) -> None:
        for name in ("eval_tokens", "batch_size"):
            v = getattr(self, name)
            if v is None and name == "eval_tokens":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v!r}")


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """The `eval` subcommand."""
    p = sub.add_parser("eval", help="evaluate a saved dictionary on held-out tokens, spliced into its model")
    add_dataclass_args(p, EvalConfig, skip=_SKIP)


def eval_config(args: argparse.Namespace, cfg: SAEConfig, recorded: dict[str, Any]) -> EvalConfig:
    """The eval's settings: the command line, else what the run recorded, else the defaults.

    The dictionary's `model_name` and `hook_name` win over the defaults; a `--model` or `--hook`
    that disagrees with them is refused unless `--force`.
    """
    given = dataclass_kwargs(args, EvalConfig)
    recorded_hooks = (("--model", "model", cfg.model_name), ("--hook", "hook", cfg.hook_name))
    for flag, key, value in (*recorded_hooks, ("--target-hook", "target_hook", cfg.target_hook)):
        if value and key in given and given[key] != value and not given.get("force"):
            raise ValueError(
                f"{flag} {given[key]!r} disagrees with the dictionary's recorded {key} {value!r}; "
                f"leave {flag} out to use {value!r}, or add --force"
            )
    defaults = {k: v for k, v in recorded.items() if k in _RECORDED}
    defaults.update(
        {k: v for k, v in (("model", cfg.model_name), ("hook", cfg.hook_name), ("target_hook", cfg.target_hook)) if v}
    )
    return build_dataclass(EvalConfig, {**defaults, **given})


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Score the dictionary in `args.path`, merge the result into its metrics.json; returns the merged metrics."""
    from sae.pretrained import choose, load_path

    # any layout load_pretrained reads; a folder of several dictionaries needs --hook to pick one
    target = choose(Path(args.path), getattr(args, "hook", None))
    sae = load_path(target)
    folder = target if target.is_dir() else target.parent
    metrics_path = folder / "metrics.json"
    recorded = json.loads(metrics_path.read_text()).get("eval_settings", {}) if metrics_path.exists() else {}
    cfg = eval_config(args, sae.cfg, recorded)

    from activations import load_model
    from sae.analysis.evaluate import evaluate, write_evaluation
    from sae.cli.run import eval_settings

    model = load_model(cfg.model)
    text = cfg.text.replace(split="test")
    metrics = evaluate(
        sae,
        model,
        text,
        tokens=cfg.eval_tokens,
        batch_size=cfg.batch_size,
        hook=cfg.hook,
        target_hook=cfg.target_hook or None,
        skip=() if cfg.splice else ("spliced",),
        return_distributions=True,
    )
    metrics["eval_settings"] = eval_settings(text, cfg.eval_tokens)
    if cfg.probe and not sae.cfg.is_clt:
        from sae.analysis.probing import sparse_probe

        metrics.update(
            sparse_probe(
                sae, model, TextSource(context_len=text.context_len), hook=cfg.hook, batch_size=cfg.batch_size, seed=cfg.seed
            )
        )
    merged = write_evaluation(folder, metrics)
    if cfg.plots:
        from sae.analysis.plots import write_run_plots

        write_run_plots(folder)
    return merged
