"""Pruning a graph by influence on its targets (Ameisen et al. 2025 §5.2; circuit-tracer's `prune_graph`).

A node's influence is the target-probability-weighted sum, over all path lengths, of products of row-normalised
absolute edge weights (A + A^2 + ...). Nodes are kept, most influential first, until they hold `node_threshold`
of the total influence (tokens and targets always); then edges, scored by their normalised weight times their
target's influence in the node-pruned graph, until they hold `edge_threshold`. Features and errors left without
an outgoing edge, and features without an incoming one, are dropped until none is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sae.circuits.graph import FEATURE, TARGET, TOKEN, Graph


class Pruned(NamedTuple):
    node_mask: torch.Tensor  # [N] bool, the nodes kept
    edge_mask: torch.Tensor  # [N, N] bool, the edges kept ([target, source], as the matrix)
    cumulative_scores: torch.Tensor  # [N] each node's share of the influence of the nodes at least as influential


def normalized(matrix: torch.Tensor) -> torch.Tensor:
    """|A| with each row divided by its sum (rows without inputs stay zero)."""
    a = matrix.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(matrix: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """weights @ (A + A^2 + ...) for a nilpotent A (an acyclic graph), by repeated products."""
    current = weights @ matrix
    total = current
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current @ matrix
        total = total + current
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the graph has a cycle")


def _threshold(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The score at which the scores above it first hold `fraction` of their sum."""
    ordered = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ordered, dim=0) / ordered.sum()
    index = min(int(torch.searchsorted(cumulative, fraction).item()), len(cumulative) - 1)
    return ordered[index]


def target_weights(graph: Graph) -> torch.Tensor:
    """[N]: each target's probability at its node, zero elsewhere."""
    w = torch.zeros(graph.n_nodes)
    targets = graph.nodes(TARGET)
    w[targets] = graph.node_value[targets]
    return w


def _drop_dangling(node_mask: torch.Tensor, edge_mask: torch.Tensor, sources: torch.Tensor, features: torch.Tensor) -> None:
    """Drop features and errors without a kept outgoing edge, then features without a kept incoming one."""
    node_mask[sources] &= edge_mask[:, sources].any(0)
    node_mask[features] &= edge_mask[features].any(1)


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """The nodes and edges that carry `node_threshold` / `edge_threshold` of the influence on the targets."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value!r}; expected a fraction in [0, 1]")
    A = graph.adjacency_matrix.float()
    weights = target_weights(graph)
    kinds = graph.node_kind
    always = (kinds == TOKEN) | (kinds == TARGET)
    sources = ~always  # features and errors: they must keep an outgoing edge
    features = kinds == FEATURE

    node_influence = influence(normalized(A), weights)
    node_mask = (node_influence >= _threshold(node_influence, node_threshold)) | always

    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = normalized(pruned)
    edge_scores = norm * (influence(norm, weights) + weights)[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)

    before = node_mask.clone()
    _drop_dangling(node_mask, edge_mask, sources, features)
    while not torch.equal(node_mask, before):
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        _drop_dangling(node_mask, edge_mask, sources, features)

    ordered, order = torch.sort(node_influence, descending=True)
    cumulative = torch.zeros_like(node_influence)
    cumulative[order] = torch.cumsum(ordered, dim=0) / ordered.sum()
    return Pruned(node_mask, edge_mask, cumulative)
