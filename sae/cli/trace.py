"""`python -m sae trace --model M --transcoders ID_OR_DIR --prompt "..." --out graph/`: the attribution graph of one
prompt (sae.circuits), written as the full matrix (graph.safetensors) and as circuit-tracer's pruned JSON
({slug}.json and graph-metadata.json, what Neuronpedia's graph viewer reads).

A causal LM's targets are next-token logits (--target); an encoder's (the embedded MiniLM: --model minilm) are
directions in its final hidden state, read at one position or on the mean-pooled embedding (--direction FILE,
--position N or --pooled; without --direction, the pooled embedding's own direction)."""

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
    """The causal LM or BERT-style encoder ('minilm': the embedded one): a Hugging Face name or local folder
    (loaded as a plain Hugging Face model)."""
    transcoders: str = ""
    """The transcoders: a folder (or Hub repo) of one transcoder per layer, or of one CLT."""
    prompt: str = ""
    """The prompt (a causal LM's gets a BOS prepended, an encoder's its [CLS] ... [SEP])."""
    out: str = "graph"
    """Folder to write graph.safetensors, {slug}.json and graph-metadata.json into."""
    target: str = ""
    """Target tokens, comma-separated ids or single-token strings; empty: the top logits reaching
    --desired-logit-prob."""
    direction: str = ""
    """An encoder's target directions: a .npy or .pt file of one vector [d_model] or several [k, d_model]; empty:
    the pooled embedding's own direction."""
    position: int | None = None
    """Read the --direction vectors at this position of the tokenised prompt (0 is [CLS]; negative from the end)."""
    pooled: bool = False
    """Read the --direction vectors on the mean over all positions (the sentence embedding before its
    normalisation): the default without --position."""
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
    ablated in the model, the targets' changes (logits, or an encoder's direction values) against the graph's; kept
    in graph.safetensors, plotted in validation.html); 0: no check."""
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


def _check_target_options(cfg: TraceConfig) -> None:
    """The target options that contradict each other, refused before anything loads."""
    if cfg.pooled and cfg.position is not None:
        raise ValueError(f"--pooled and --position {cfg.position} both given: a direction is read at one position or pooled")
    if (cfg.position is not None or cfg.pooled) and not cfg.direction:
        raise ValueError("--position and --pooled say where --direction vectors are read: give --direction FILE too")
    if cfg.direction and cfg.target.strip():
        raise ValueError("--target (a causal LM's logits) and --direction (an encoder's directions) both given: give one")


def read_directions(path: str) -> Any:
    """The vectors [k, d_model] of a --direction file (.npy, or .pt holding a tensor), float32."""
    import torch

    file = Path(path)
    if file.suffix not in (".npy", ".pt"):
        raise ValueError(f"--direction {path!r}: expected a .npy or .pt file of a vector [d_model] or vectors [k, d_model]")
    if not file.is_file():
        raise FileNotFoundError(f"--direction: no file at {path}")
    try:
        if file.suffix == ".npy":
            import numpy as np

            data: Any = torch.from_numpy(np.load(file, allow_pickle=False))
        else:
            data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise ValueError(f"--direction {path!r} cannot be read as a {file.suffix} tensor: {type(e).__name__}: {e}") from None
    if not isinstance(data, torch.Tensor) or data.dim() not in (1, 2) or data.numel() == 0 or data.is_complex():
        kind = f"a tensor of shape {tuple(data.shape)}" if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"--direction {path!r} holds {kind}; expected a vector [d_model] or vectors [k, d_model]")
    vectors = data.float().reshape(-1, data.shape[-1])
    if not torch.isfinite(vectors).all():
        raise ValueError(f"--direction {path!r} holds values that are not finite")
    return vectors


def _direction_targets(cfg: TraceConfig, vectors: Any) -> list[Any]:
    from sae.circuits.targets import Direction

    stem = Path(cfg.direction).stem
    labels = [stem] if len(vectors) == 1 else [f"{stem}[{j}]" for j in range(len(vectors))]
    return [Direction(v, cfg.position, label) for v, label in zip(vectors, labels)]


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
        _check_target_options(cfg)
        vectors = read_directions(cfg.direction) if cfg.direction else None
        from activations import load_model
        from sae.circuits import attribute
        from sae.circuits.export import write_graph_files
        from sae.pretrained import load_all

        model = load_model(cfg.model, device=cfg.device, backend="hf")
        if model.is_causal and vectors is not None:
            raise ValueError(f"--direction is for encoders: {cfg.model!r} is a causal LM, whose targets are --target tokens")
        if not model.is_causal and cfg.target.strip():
            raise ValueError(f"--target is for causal LMs: {cfg.model!r} is an encoder, whose targets are --direction FILE")
        target: Any = _targets(cfg.target) if model.is_causal else None
        if vectors is not None:
            target = _direction_targets(cfg, vectors)
        transcoders = list(load_all(cfg.transcoders, device=cfg.device).values())  # one per layer, or one CLT
        graph = attribute(
            model,
            transcoders,
            cfg.prompt,
            target,
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
    scores = graph.info["target_values"] if graph.target_kind == "direction" else graph.target_probabilities.tolist()
    summary = {
        "nodes": graph.n_nodes,
        "features": graph.n_features,
        "targets": dict(zip(graph.info["target_strings"], scores)),  # a logit's probability, a direction's value
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
