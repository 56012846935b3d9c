"""Command line: python -m sae train|eval|demo|dashboard. Options are generated from the config dataclasses."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sae.cli_args import add_dataclass_args, dataclass_kwargs
from sae.cli_dashboard import add_dashboard_parser, run_dashboard
from sae.config import RunConfig, SAEConfig, TrainConfig

# The demo: the embedded default model and corpus, a TopK dictionary, minutes on 2 CPU cores.
DEMO = {
    "run": {"out": "runs/demo", "harvest_tokens": 400_000, "eval_tokens": 16_384},
    "sae": {"family": "topk", "k": 32, "n_latents": 3072},
    "train": {"tokens": 1_600_000, "batch_size": 4096, "checkpoint_every": 50, "dead_window_tokens": 400_000},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "train a dictionary"), ("demo", "train the demo dictionary (runs/demo)")):
        p = sub.add_parser(name, help=help_text)
        add_dataclass_args(p, RunConfig)
        add_dataclass_args(p, SAEConfig, skip=("d_in", "hook_name", "model_name"))
        add_dataclass_args(p, TrainConfig)
    p = sub.add_parser("eval", help="evaluate a saved dictionary on held-out tokens")
    p.add_argument("path", help="dictionary folder (cfg.json + sae_weights.safetensors)")
    add_dataclass_args(p, RunConfig)
    p.add_argument("--seed", type=int, default=0)
    add_dashboard_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dashboard":
            print(f"feature browser: {run_dashboard(args).resolve()}  (open it in a web browser)")
            return 0
        if args.command == "eval":
            metrics = _eval(args)
        else:
            from sae.run import run_training

            presets = DEMO if args.command == "demo" else {"run": {}, "sae": {}, "train": {}}
            run = RunConfig(**{**presets["run"], **dataclass_kwargs(args, RunConfig)})
            sae_kwargs = {**presets["sae"], **dataclass_kwargs(args, SAEConfig)}
            tcfg = TrainConfig(**{**presets["train"], **dataclass_kwargs(args, TrainConfig)})
            metrics = run_training(run, sae_kwargs, tcfg)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> dict[str, float]:
    from activations import load_model
    from sae.analysis.metrics import evaluate
    from sae.model import SparseAutoencoder
    from sae.run import harvest

    sae = SparseAutoencoder.load(args.path)
    run = RunConfig(**{"hook": sae.cfg.hook_name or RunConfig.hook, **dataclass_kwargs(args, RunConfig)})
    model = load_model(run.model or sae.cfg.model_name)
    held_out = harvest(run, model, "test", run.eval_tokens, args.seed)
    return evaluate(sae, held_out.split(4096))
