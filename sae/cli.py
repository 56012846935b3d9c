"""Command line: python -m sae train|eval|demo|pretrained|dashboard. Options are generated from the config dataclasses."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sae.cli_args import add_dataclass_args, dataclass_kwargs, field_docs
from sae.cli_dashboard import add_dashboard_parser, run_dashboard
from sae.cli_pretrained import add_pretrained_parser, run_pretrained
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.distributed.config import DistributedConfig, parse_hooks

# The demo: the embedded default model and corpus, a TopK dictionary, minutes on 2 CPU cores.
DEMO = {
    "run": {"out": "runs/demo", "harvest_tokens": 400_000, "eval_tokens": 16_384},
    "sae": {"family": "topk", "k": 32, "n_latents": 3072},
    "train": {"tokens": 1_600_000, "batch_size": 4096, "checkpoint_every": 50},
}

# RunConfig fields that concern training only; `eval` defaults the rest to what the run recorded.
_EVAL_SKIP = ("cache_dir", "harvest_tokens", "pca_tokens", "out", "resume", "overwrite")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "train a dictionary"), ("demo", "train the demo dictionary (runs/demo)")):
        p = sub.add_parser(name, help=help_text)
        add_dataclass_args(p, RunConfig, skip=("hook",))
        p.add_argument("--hook", action="append", default=None,
                       help=f"{field_docs(RunConfig)['hook']} Repeat it for one dictionary per hook, each in "
                            f"OUT/<hook>/ (default: {RunConfig.hook})")
        add_dataclass_args(p, SAEConfig, skip=("d_in", "hook_name", "model_name"))
        add_dataclass_args(p, TrainConfig)
        add_dataclass_args(p, DistributedConfig)
    p = sub.add_parser("eval", help="evaluate a saved dictionary on held-out tokens, spliced into its model")
    p.add_argument("path", help="dictionary folder (cfg.json + sae_weights.safetensors)")
    add_dataclass_args(p, RunConfig, skip=_EVAL_SKIP)
    p.add_argument("--tokens", dest="eval_tokens", type=int, default=None, help="same as --eval-tokens")
    p.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probing task's sampling and split (default: 0)")
    p.add_argument("--force", action="store_true",
                   help="evaluate with a --model / --hook other than the ones the dictionary records")
    p.add_argument("--no-splice", dest="splice", action="store_false",
                   help="reconstruction metrics only (no forwards with the dictionary spliced in)")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip sparse probing on the default task (embedded-corpus docstrings by stdlib module)")
    p.add_argument("--plots", action="store_true", help="write eval/plots.html (plotly figures, viewable offline)")
    add_pretrained_parser(sub)
    add_dashboard_parser(sub)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pretrained":
        return run_pretrained(args)
    try:
        if args.command == "dashboard":
            print(f"feature browser: {run_dashboard(args).resolve()}  (open it in a web browser)")
            return 0
        if args.command == "eval":
            metrics = _eval(args)
        else:
            from sae.distributed.group import PeerLost
            from sae.run import run_training

            presets = DEMO if args.command == "demo" else {"run": {}, "sae": {}, "train": {}}
            dcfg = DistributedConfig(**dataclass_kwargs(args, DistributedConfig))
            hooks = parse_hooks(args.hook, dcfg.layers, dcfg.hook_template, RunConfig.hook)
            run_kwargs = {**presets["run"], **{k: v for k, v in dataclass_kwargs(args, RunConfig).items() if k != "hook"}}
            if args.command == "demo" and not run_kwargs.get("resume"):
                run_kwargs.setdefault("overwrite", True)  # `make demo` again rebuilds the demo from scratch
            run = RunConfig(**{**run_kwargs, "hook": hooks[0]})
            sae_kwargs = {**presets["sae"], **dataclass_kwargs(args, SAEConfig)}
            tcfg = TrainConfig(**{**presets["train"], **dataclass_kwargs(args, TrainConfig)})
            try:
                metrics = run_training(run, sae_kwargs, tcfg, dcfg, hooks)
            except PeerLost as e:
                print(f"error: {e}", file=sys.stderr)
                return 3
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if metrics:  # the other ranks of a distributed run write nothing
        print(json.dumps(metrics, indent=2))
    return 0


def eval_run_config(args: argparse.Namespace, cfg: SAEConfig, recorded: dict) -> RunConfig:
    """The eval's settings: the command line, else what the run recorded, else the defaults.

    The dictionary's `model_name` and `hook_name` win over the defaults; a `--model` or `--hook`
    that disagrees with them is refused unless `--force`.
    """
    given = dataclass_kwargs(args, RunConfig)
    for flag, key, value in (("--model", "model", cfg.model_name), ("--hook", "hook", cfg.hook_name)):
        if value and key in given and given[key] != value and not args.force:
            raise ValueError(f"{flag} {given[key]!r} disagrees with the dictionary's recorded {key} {value!r}; "
                             f"leave {flag} out to use {value!r}, or add --force")
    known = {f for f in RunConfig.__dataclass_fields__ if f not in _EVAL_SKIP}
    defaults = {k: v for k, v in recorded.items() if k in known}
    defaults.update({k: v for k, v in (("model", cfg.model_name), ("hook", cfg.hook_name)) if v})
    return RunConfig(**{**defaults, **given})


def _eval(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from sae.model import SparseAutoencoder

    sae = SparseAutoencoder.load(args.path)
    metrics_path = Path(args.path) / "metrics.json"
    recorded = json.loads(metrics_path.read_text()).get("eval_settings", {}) if metrics_path.exists() else {}
    run = eval_run_config(args, sae.cfg, recorded)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")

    from activations import load_model
    from sae.analysis.evaluate import evaluate, write_evaluation
    from sae.run import eval_settings

    model = load_model(run.model)
    metrics = evaluate(sae, model, run.dataset or None, tokens=run.eval_tokens, batch_size=args.batch_size,
                       context_len=run.context_len, hook=run.hook, dataset_config=run.dataset_config or None,
                       text_column=run.text_column, spliced=args.splice, return_distributions=True)
    metrics["eval_settings"] = eval_settings(run)
    if args.probe:
        from sae.analysis.probing import sparse_probe

        metrics.update(sparse_probe(sae, model, hook=run.hook, context_len=run.context_len,
                                    batch_size=args.batch_size, seed=args.seed))
    merged = write_evaluation(args.path, metrics)
    if args.plots:
        from sae.analysis.plots import write_run_plots

        write_run_plots(args.path)
    return merged
