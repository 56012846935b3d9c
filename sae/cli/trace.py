"""`python -m sae trace --model M --transcoders ID_OR_DIR --prompt "..." --out graph/`: the attribution graph of one
prompt (sae.circuits), written as the full matrix (graph.safetensors) and as circuit-tracer's pruned JSON
({slug}.json and graph-metadata.json, what Neuronpedia's graph viewer reads)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae.cli.args import add_dataclass_args, build_dataclass, dataclass_kwargs
from sae.cli.trace_view import check_view, write_view

GRAPH_FILE = "graph.safetensors"
VALIDATION_FILE = "validation.html"


@dataclass
class TraceConfig:
    """Options of `python -m sae trace`."""

    model: str = ""
    """The causal LM: a Hugging Face name or local folder (loaded as a plain Hugging Face model)."""
    transcoders: str = ""
    """The transcoders: a folder (or Hub repo) of one transcoder per layer, or of one CLT."""
    prompt: str = ""
    """The prompt (a BOS is prepended)."""
    out: str = "graph"
    """Folder to write graph.safetensors, {slug}.json and graph-metadata.json into."""
    target: str = ""
    """Target tokens, comma-separated ids or single-token strings; empty: the top logits reaching
    --desired-logit-prob."""
    max_n_logits: int = 10
    """At most this many target logits (when --target is empty)."""
    desired_logit_prob: float = 0.95
    """Targets: the fewest top logits whose probabilities reach this sum."""
    batch_size: int = 256
    """Rows per backward pass (copies of the prompt in memory at once)."""
    max_feature_nodes: int = 0
    """Keep at most this many features, the most influential (0: all)."""
    node_threshold: float = 0.8
    """The JSON keeps the nodes holding this fraction of the influence on the targets."""
    edge_threshold: float = 0.98
    """The JSON keeps the edges holding this fraction of the influence."""
    slug: str = "graph"
    """The graph's name in the JSON (its file is {slug}.json)."""
    scan: str = "saekit"
    """The transcoders' name in the JSON's metadata (Neuronpedia's `scan`)."""
    view: bool = False
    """Also write the offline graph view into --out: graph.html, opened as graph.html#graph={slug}."""
    browser: str = ""
    """The view's feature links: a page template relative to --out with {layer}, {feature}, {latent}; empty:
    DIR/browser/index.html beside each local dictionary, where python -m sae dashboard DIR writes it."""
    device: str = "cpu"
    """Device of the model and transcoders."""
    validate: int = 0
    """Check the graph by intervention on its this many most influential features (sae.circuits.validate: each
    ablated in the model, the targets' changes against the graph's; kept in graph.safetensors, plotted in
    validation.html); 0: no check."""
    progress: bool = field(default=True, metadata={"flag": "--no-progress"})
    """Hide the progress bar."""


def add_trace_parser(sub: argparse._SubParsersAction) -> None:
    """The `trace` subcommand."""
    p = sub.add_parser("trace", help="attribution graph of a prompt through transcoders (circuit tracing)")
    add_dataclass_args(p, TraceConfig)


def _targets(text: str) -> list[int | str] | None:
    if not text.strip():
        return None
    return [int(t) if t.strip().lstrip("-").isdigit() else t for t in text.split(",")]


def run_trace(args: argparse.Namespace) -> int:
    """Trace, write the files, print a summary; errors in one line, exit status 2."""
    try:
        cfg = build_dataclass(TraceConfig, dataclass_kwargs(args, TraceConfig))
        for flag, value in (("--model", cfg.model), ("--transcoders", cfg.transcoders), ("--prompt", cfg.prompt)):
            if not value:
                raise ValueError(f"{flag} is required")
        check_view(cfg)
        if cfg.validate < 0:
            raise ValueError(f"--validate {cfg.validate}; expected the number of features to check (0: none)")
        from activations import load_model
        from sae.circuits import attribute
        from sae.circuits.export import write_graph_files
        from sae.pretrained import load_all

        transcoders = list(load_all(cfg.transcoders, device=cfg.device).values())  # one per layer, or one CLT
        model = load_model(cfg.model, device=cfg.device, backend="hf")
        graph = attribute(
            model,
            transcoders,
            cfg.prompt,
            _targets(cfg.target),
            max_n_logits=cfg.max_n_logits,
            desired_logit_prob=cfg.desired_logit_prob,
            batch_size=cfg.batch_size,
            max_feature_nodes=cfg.max_feature_nodes or None,
            progress=cfg.progress,
        )
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        checked = _validate(graph, model, transcoders, cfg, out) if cfg.validate else None
        matrix = graph.save(out / GRAPH_FILE)
        page = write_graph_files(graph, out, cfg.slug, cfg.scan, cfg.node_threshold, cfg.edge_threshold)
        view = write_view(cfg, graph, transcoders) if cfg.view else None
    except (ValueError, OSError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {
        "nodes": graph.n_nodes,
        "features": graph.n_features,
        "targets": dict(zip(graph.info["target_strings"], graph.target_probabilities.tolist())),
        "matrix": str(matrix),
        "json": str(page),
    }
    if view:
        summary["view"] = view
    if checked is not None:
        summary["validation"] = checked
    print(json.dumps(summary, indent=2))
    return 0


def _validate(graph: Any, model: Any, transcoders: list[Any], cfg: TraceConfig, out: Path) -> dict[str, Any]:
    """`--validate N`: the N most influential features ablated (stored in the graph's info), the figure written."""
    from sae.analysis.plots import write_html
    from sae.circuits import validate

    result = validate(graph, model, transcoders, top=cfg.validate, progress=cfg.progress)
    page = write_html([result.figure()], out / VALIDATION_FILE, title="validation")
    return {**result.to_dict()["summary"], "figure": str(page)}
