"""Command line: python -m sae train|eval|demo. Options are generated from the config dataclasses."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sae.cli_args import add_dataclass_args, dataclass_kwargs, field_docs
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.distributed.config import DistributedConfig, parse_hooks

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
        add_dataclass_args(p, RunConfig, skip=("hook",))
        p.add_argument("--hook", action="append", default=None,
                       help=f"{field_docs(RunConfig)['hook']} Repeat it for one dictionary per hook, each in "
                            f"OUT/<hook>/ (default: {RunConfig.hook})")
        add_dataclass_args(p, SAEConfig, skip=("d_in", "hook_name", "model_name"))
        add_dataclass_args(p, TrainConfig)
        add_dataclass_args(p, DistributedConfig)
    p = sub.add_parser("eval", help="evaluate a saved dictionary on held-out tokens")
    p.add_argument("path", help="dictionary folder (cfg.json + sae_weights.safetensors)")
    add_dataclass_args(p, RunConfig)
    p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "eval":
            metrics = _eval(args)
        else:
            from sae.distributed.group import PeerLost
            from sae.run import run_training

            presets = DEMO if args.command == "demo" else {"run": {}, "sae": {}, "train": {}}
            dcfg = DistributedConfig(**dataclass_kwargs(args, DistributedConfig))
            hooks = parse_hooks(args.hook, dcfg.layers, dcfg.hook_template, RunConfig.hook)
            run_kwargs = {k: v for k, v in dataclass_kwargs(args, RunConfig).items() if k != "hook"}
            run = RunConfig(**{**presets["run"], **run_kwargs, "hook": hooks[0]})
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
