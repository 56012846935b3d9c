"""`python -m sae export RUN --format neuronpedia|saedashboard`: the run's feature data in another tool's layout."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sae.cli.args import add_dataclass_args, build_dataclass, dataclass_kwargs

FORMATS = ("neuronpedia", "saedashboard")


@dataclass
class ExportConfig:
    """Options of `python -m sae export`."""

    path: str = field(metadata={"positional": True})
    """Run folder holding feature_stats.safetensors (python -m sae dashboard writes it), or that file."""
    format: str = ""
    """neuronpedia (Neuronpedia's export folders, importable from its admin panel) or saedashboard (SAEDashboard's
    NeuronpediaRunner batch-N.json files)."""
    out: str = ""
    """Output folder; empty = RUN/export-FORMAT."""
    model_id: str = ""
    """The model's id in the target (Neuronpedia model ids such as gpt2-small); empty = the model the run recorded."""
    source_set: str = ""
    """Neuronpedia source set / SAEDashboard sae_set name; empty = saekit-N (N latents)."""
    layer: int = -1
    """Layer number of the hook; -1 = read from the hook name (blocks.N....)."""
    creator_id: str = "saekit"
    """Neuronpedia: the id of the user the records belong to (an id of your Neuronpedia instance)."""
    creator_name: str = "saekit"
    """Neuronpedia: the creator's display name."""
    hf_repo: str = ""
    """Neuronpedia: the Hugging Face repository holding the dictionary's weights, if any."""
    batch_size: int = 1024
    """Latents per batch file."""


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """The `export` subcommand."""
    p = sub.add_parser("export", help="export feature data to Neuronpedia's or SAEDashboard's layout")
    add_dataclass_args(p, ExportConfig)


def run_export(args: argparse.Namespace) -> int:
    """Export; print the files and what does not carry over. Errors in one line, exit status 2."""
    from sae.export import NOT_REPRESENTED, load_run, write_neuronpedia, write_saedashboard

    try:
        cfg = build_dataclass(ExportConfig, dataclass_kwargs(args, ExportConfig))
        if cfg.format not in FORMATS:
            raise ValueError(f"--format must be one of {list(FORMATS)}, got {cfg.format!r}")
        if cfg.batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {cfg.batch_size}")
        run = load_run(cfg.path, cfg.model_id, None if cfg.layer < 0 else cfg.layer)
        root = Path(cfg.path) if Path(cfg.path).is_dir() else Path(cfg.path).parent
        out = Path(cfg.out) if cfg.out else root / f"export-{cfg.format}"
        name = cfg.source_set or f"saekit-{run.stats.n_latents}"
        if cfg.format == "neuronpedia":
            files = write_neuronpedia(run, out, name, cfg.creator_id, cfg.creator_name, cfg.hf_repo or None, cfg.batch_size)
        else:
            files = write_saedashboard(run, out, name, cfg.batch_size)
    except (ValueError, OSError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cfg.format} export: {len(files)} files under {out.resolve()}")
    print("not represented:")
    for line in NOT_REPRESENTED:
        print(f"  - {line}")
    return 0
