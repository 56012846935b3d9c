"""The pruned graph as JSON in the layout circuit-tracer's `create_graph_files` writes (what Neuronpedia's graph
viewer and circuit-tracer's local server read): `{slug}.json` with metadata, qParams, nodes and links, and
`graph-metadata.json` listing the graphs of a folder.

One difference on purpose: circuit-tracer names an error node `0_{layer}_{pos}`, which collides with the
layer-0 feature `{layer}` at the same position (`0_{feature}_{pos}`); here an error node is `err_{layer}_{pos}`
(and its jsNodeId `err_{layer}_{pos}-0`), so no two nodes share an id.

An encoder's direction targets are "logit" nodes too (where viewers draw targets), told apart by
`"target_kind": "direction"` on the node and in the metadata: node_id `{L+1}_{j}_{pos}` for direction j read at
position pos, `{L+1}_{j}_pooled` for one read on the mean over positions (drawn at the last position, its
`ctx_idx`; `target_position` is None), jsNodeId `D_{j}-{ctx_idx}`, `feature` j, `token_prob` its weight 1/k,
`target_value` its read-out on the prompt, and a clerp naming its label, position and value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae.circuits.graph import ERROR, FEATURE, POOLED, TARGET, TOKEN, Graph
from sae.circuits.prune import prune


def _cantor(x: int, y: int) -> int:
    """circuit-tracer's integer `feature` of a (layer, feature) pair: the Cantor pairing."""
    return (x + y) * (x + y + 1) // 2 + y


def _node(
    node_id: str, feature: int, layer: str, pos: int, kind: str, js: str, *, influence: float | None = None, **extra: Any
) -> dict[str, Any]:
    node = {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": pos,
        "feature_type": kind,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js,
        "clerp": "",
        "influence": influence,
        "activation": None,
    }
    node.update(extra)
    return node


def graph_json(
    graph: Graph, slug: str = "graph", scan: str = "saekit", node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> dict[str, Any]:
    """The pruned graph as circuit-tracer's JSON object (see the module docstring)."""
    pruned = prune(graph, node_threshold, edge_threshold)
    L = graph.n_layers
    token_text = graph.info.get("token_strings") or [str(t) for t in graph.tokens.tolist()]
    target_text = graph.info.get("target_strings") or [str(t) for t in graph.target_ids.tolist()]
    targets = graph.nodes(TARGET).tolist()
    nodes: dict[int, dict[str, Any]] = {}
    for i in pruned.node_mask.nonzero().flatten().tolist():
        kind, layer, pos, index = (int(getattr(graph, t)[i]) for t in ("node_kind", "node_layer", "node_pos", "node_index"))
        score = float(pruned.cumulative_scores[i])
        if kind == FEATURE:
            nodes[i] = _node(
                f"{layer}_{index}_{pos}", _cantor(layer, index), str(layer), pos, "cross layer transcoder",
                f"{layer}_{index}-0", influence=score, activation=float(graph.node_value[i]),
            )  # fmt: skip
        elif kind == ERROR:
            nodes[i] = _node(
                f"err_{layer}_{pos}", -1, str(layer), pos, "mlp reconstruction error", f"err_{layer}_{pos}-0", influence=score
            )
        elif kind == TOKEN:
            nodes[i] = _node(f"E_{index}_{pos}", pos, "E", pos, "embedding", f"E_{index}-{pos}", influence=score)
        elif graph.target_kind == "direction":
            nodes[i] = _direction_node(graph, targets.index(i), pos, index, token_text, target_text)
        else:
            rank = targets.index(i)
            prob = float(graph.node_value[i])
            nodes[i] = _node(
                f"{L + 1}_{index}_{pos}", index, str(L + 1), pos, "logit", f"L_{index}-{pos}",
                token_prob=prob, is_target_logit=rank == 0, clerp=f'Output "{target_text[rank]}" (p={prob:.3f})',
            )  # fmt: skip
    dsts, srcs = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency_matrix[dsts, srcs].tolist()
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[d]["node_id"], "weight": w}
        for s, d, w in zip(srcs.tolist(), dsts.tolist(), weights)
        if s in nodes and d in nodes
    ]
    linked = {link["source"] for link in links} | {link["target"] for link in links}
    used = [n for n in nodes.values() if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    metadata = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": [],
        "prompt_tokens": list(token_text),
        "prompt": graph.prompt,
        "node_threshold": node_threshold,
        "schema_version": 1,
    }
    if graph.target_kind == "direction":
        metadata["target_kind"] = "direction"
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": used, "links": links}


def _direction_node(
    graph: Graph, rank: int, pos: int, index: int, token_text: list[str], target_text: list[str]
) -> dict[str, Any]:
    """A direction target's node (see the module docstring)."""
    L, last = graph.n_layers, len(graph.tokens) - 1
    weight = float(graph.node_value[graph.nodes(TARGET)[rank]])
    values = graph.info.get("target_values") or [float("nan")] * graph.n_targets
    value = float(values[rank])
    pooled = pos == POOLED
    where = "mean-pooled over all positions" if pooled else f'at "{token_text[pos]}" (position {pos})'
    ctx = last if pooled else pos
    return _node(
        f"{L + 1}_{index}_{'pooled' if pooled else pos}", index, str(L + 1), ctx, "logit", f"D_{index}-{ctx}",
        token_prob=weight, is_target_logit=rank == 0, clerp=f'Direction "{target_text[rank]}" {where} = {value:.4g}',
        target_kind="direction", target_position=None if pooled else pos, target_value=value,
    )  # fmt: skip


def write_graph_files(
    graph: Graph,
    out: str | Path,
    slug: str = "graph",
    scan: str = "saekit",
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> Path:
    """Write `{slug}.json` into the folder `out` and add its metadata to `out/graph-metadata.json`; returns the
    JSON file's path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"graph files go into a folder; {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    data = graph_json(graph, slug, scan, node_threshold, edge_threshold)
    path = out / f"{slug}.json"
    path.write_text(json.dumps(data, indent=2))
    index = out / "graph-metadata.json"
    listing = json.loads(index.read_text()) if index.exists() else {"graphs": []}
    listing["graphs"] = [g for g in listing.get("graphs", []) if g.get("slug") != slug] + [data["metadata"]]
    index.write_text(json.dumps(listing, indent=2))
    return path
