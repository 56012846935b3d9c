"""`python -m sae train|demo`: options from RunConfig, SAEConfig, TrainConfig and DistributedConfig; one run."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.args import add_dataclass_args, build_dataclass, dataclass_kwargs
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.distributed.config import DistributedConfig
from sae.families import get_family
from sae.sparsity_target import check_target_l0

# The demo: the embedded default model and corpus, a TopK dictionary, minutes on 2 CPU cores.
DEMO: dict[str, dict[str, Any]] = {
    "run": {"out": "runs/demo", "harvest_tokens": 400_000, "eval_tokens": 16_384},
    "sae": {"family": "topk", "k": 32, "n_latents": 3072},
    "train": {"tokens": 1_600_000, "batch_size": 4096, "checkpoint_every": 50},
}

# RunConfig options the run sets itself: it trains on the 'train' split and scores the 'test' split
_RUN_SKIP = ("split",)
# SAEConfig fields the run fills in from the model, the hook points (--hook, --target-hook, --layers, --clt) and the
# data (a transcoder's d_out); `layers` and `target_hook` would also collide with the hook points' own options
_SAE_SKIP = ("d_in", "hook_name", "model_name", "d_out", "target_hook", "layers", "first_layer")


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """The `train` and `demo` subcommands."""
    for name, help_text in (("train", "train a dictionary"), ("demo", "train the demo dictionary (runs/demo)")):
        p = sub.add_parser(name, help=help_text)
        add_dataclass_args(p, RunConfig, skip=_RUN_SKIP)
        add_dataclass_args(p, SAEConfig, skip=_SAE_SKIP)
        add_dataclass_args(p, TrainConfig)
        add_dataclass_args(p, DistributedConfig)


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    """Build the configs from the command line (the demo's presets under it) and run."""
    from sae.cli.run import run_training

    presets: dict[str, dict[str, Any]] = DEMO if args.command == "demo" else {"run": {}, "sae": {}, "train": {}}
    dcfg = DistributedConfig(**dataclass_kwargs(args, DistributedConfig))
    run_options = {**presets["run"], **dataclass_kwargs(args, RunConfig)}
    if args.command == "demo" and not run_options.get("resume"):
        run_options.setdefault("overwrite", True)  # `make demo` again rebuilds the demo from scratch
    run = build_dataclass(RunConfig, run_options)
    sae_options = {k: v for k, v in dataclass_kwargs(args, SAEConfig).items() if k not in _SAE_SKIP}
    sae_kwargs = {**presets["sae"], **sae_options}
    family = get_family(sae_kwargs.get("family", "topk"))
    if not family.uses_k and "k" not in sae_options:
        sae_kwargs.pop("k", None)  # the demo's k is for the top-k families; a penalty family sets L0 otherwise
    tcfg = TrainConfig(**{**presets["train"], **dataclass_kwargs(args, TrainConfig)})
    # refused here, before any harvest: a target for a family without a penalty, or above a given n_latents
    check_target_l0(family, tcfg.target_l0, sae_kwargs.get("n_latents"))
    return run_training(run, sae_kwargs, tcfg, dcfg)
