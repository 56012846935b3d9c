"""The attribution graph: the dense matrix of direct effects and the tables that name its nodes.

Node order (circuit-tracer's): the selected active features (by layer, position, feature index), then one error
node per layer and position (layer-major), one token node per position, then the targets. `adjacency_matrix[t, s]`
is the direct effect of source node s on target node t; only feature and target rows are non-zero (errors and
tokens have no inputs).

The node tables (`node_kind`, `node_layer`, `node_pos`, `node_index`, `node_value`):

| kind | `node_kind` | `node_layer` | `node_pos` | `node_index` | `node_value` |
|---|---|---|---|---|---|
| feature | 0 | its layer | its position | feature index | activation |
| error | 1 | its layer | its position | -1 | 0 |
| token | 2 | -1 | its position | token id | 0 |
| logit target (causal LM) | 3 | n_layers | last position | token id | probability |
| direction target (encoder) | 3 | n_layers | position read; POOLED (-1): the mean | direction number j | 1/k |

A target's `node_value` is its weight in influence and pruning. A direction graph (`target_kind == "direction"`)
also holds `target_vectors` [k, d_model] (the directions as given) and, in `info`, `target_values` (each
read-out `v . h` on the prompt) and `target_strings` (their labels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FEATURE, ERROR, TOKEN, TARGET = 0, 1, 2, 3
POOLED = -1  # node_pos of a direction target read on the mean over all positions
KIND_NAMES = ("feature", "error", "token", "target")
FORMAT = "saekit-attribution-graph/1"
TABLES = ("node_kind", "node_layer", "node_pos", "node_index")


@dataclass(repr=False)
class Graph:
    """An attribution graph over one prompt.

    `node_kind` (0 feature, 1 error, 2 token, 3 target), `node_layer` (tokens at -1, targets at `n_layers`),
    `node_pos` (logit targets at the last position; a direction target at the position it reads, POOLED for the
    mean) and `node_index` (feature index; -1 for errors; the token id for tokens and logit targets; the
    direction's number for direction targets) name each node; `node_value` holds a feature's activation and a
    target's weight (a logit's probability, 1/k for k directions; 0 elsewhere). `active_features` [n_active, 3]
    (layer, pos, feature) and `active_values` list every active feature, selected or not (`max_feature_nodes`).
    `target_vectors` [k, d_model]: a direction graph's directions (None for logits). The module docstring has
    the table."""

    adjacency_matrix: torch.Tensor
    node_kind: torch.Tensor
    node_layer: torch.Tensor
    node_pos: torch.Tensor
    node_index: torch.Tensor
    node_value: torch.Tensor
    tokens: torch.Tensor
    active_features: torch.Tensor
    active_values: torch.Tensor
    n_layers: int
    prompt: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    target_vectors: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.adjacency_matrix.shape[0]
        if self.adjacency_matrix.shape != (n, n):
            raise ValueError(f"adjacency_matrix must be square, got {tuple(self.adjacency_matrix.shape)}")
        for name in (*TABLES, "node_value"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected ({n},) like the matrix")
        if self.target_vectors is not None and (self.target_vectors.dim() != 2 or len(self.target_vectors) != self.n_targets):
            raise ValueError(
                f"target_vectors has shape {tuple(self.target_vectors.shape)}, expected ({self.n_targets}, d_model): "
                "one row per target"
            )

    def __repr__(self) -> str:
        counts = ", ".join(f"{int((self.node_kind == k).sum())} {name}s" for k, name in enumerate(KIND_NAMES))
        return f"Graph({self.prompt!r}: {self.n_nodes} nodes ({counts}), {self.n_layers} layers)"

    # --- views ----------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return self.adjacency_matrix.shape[0]

    def nodes(self, kind: int) -> torch.Tensor:
        """Indices of the nodes of one kind (FEATURE, ERROR, TOKEN or TARGET), in matrix order."""
        return torch.nonzero(self.node_kind == kind).flatten()

    @property
    def n_features(self) -> int:
        return int((self.node_kind == FEATURE).sum())

    @property
    def n_targets(self) -> int:
        return int((self.node_kind == TARGET).sum())

    @property
    def target_ids(self) -> torch.Tensor:
        """The targets' token ids (logits) or direction numbers 0..k-1 (directions)."""
        return self.node_index[self.nodes(TARGET)]

    @property
    def target_probabilities(self) -> torch.Tensor:
        """The targets' weights in influence: a logit's probability (1/k for each of k directions)."""
        return self.node_value[self.nodes(TARGET)]

    @property
    def target_kind(self) -> str:
        """ "logit" (a causal LM's next-token logits) or "direction" (an encoder's direction targets)."""
        return str(self.info.get("target_kind", "logit"))

    @property
    def target_positions(self) -> torch.Tensor:
        """The position each target reads (POOLED: the mean over all positions)."""
        return self.node_pos[self.nodes(TARGET)]

    def keys(self) -> list[tuple[int, int, int, int]]:
        """(kind, layer, position, index) of each node, in matrix order: the key to match nodes across graphs."""
        return list(zip(*(getattr(self, t).tolist() for t in TABLES)))

    # --- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the graph as one safetensors file: the full matrix, the node tables, the prompt's tokens and
        the active features; the prompt and `info` in its metadata."""
        path = Path(path)
        tensors = {name: getattr(self, name).contiguous().cpu() for name in (*TABLES, "node_value")}
        tensors["adjacency_matrix"] = self.adjacency_matrix.float().contiguous().cpu()
        tensors["tokens"] = self.tokens.long().contiguous().cpu()
        tensors["active_features"] = self.active_features.long().reshape(-1, 3).contiguous().cpu()
        tensors["active_values"] = self.active_values.float().contiguous().cpu()
        if self.target_vectors is not None:
            tensors["target_vectors"] = self.target_vectors.float().contiguous().cpu()
        meta = {"format": FORMAT, "n_layers": str(self.n_layers), "prompt": self.prompt, "info": json.dumps(self.info)}
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """Read a graph written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no attribution graph at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not an attribution graph ({FORMAT}); its metadata says {meta.get('format')!r}")
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(
            adjacency_matrix=t["adjacency_matrix"],
            **{name: t[name] for name in (*TABLES, "node_value")},
            tokens=t["tokens"],
            active_features=t["active_features"],
            active_values=t["active_values"],
            n_layers=int(meta["n_layers"]),
            prompt=meta.get("prompt", ""),
            info=json.loads(meta.get("info", "{}")),
            target_vectors=t.get("target_vectors"),
        )


def node_tables(
    features: torch.Tensor,
    values: torch.Tensor,
    n_layers: int,
    tokens: torch.Tensor,
    target_ids: torch.Tensor,
    target_probs: torch.Tensor,
    target_positions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The node tables in matrix order for `features` [n, 3] (layer, pos, feature) and their activations; the
    targets read the last position unless `target_positions` says otherwise."""
    n_pos = len(tokens)
    err_layer = torch.arange(n_layers).repeat_interleave(n_pos)
    err_pos = torch.arange(n_pos).repeat(n_layers)
    n_t = len(target_ids)
    target_pos = torch.full((n_t,), n_pos - 1) if target_positions is None else target_positions
    parts = [
        (FEATURE, features[:, 0], features[:, 1], features[:, 2], values),
        (ERROR, err_layer, err_pos, torch.full((n_layers * n_pos,), -1), torch.zeros(n_layers * n_pos)),
        (TOKEN, torch.full((n_pos,), -1), torch.arange(n_pos), tokens, torch.zeros(n_pos)),
        (TARGET, torch.full((n_t,), n_layers), target_pos, target_ids, target_probs),
    ]
    out: dict[str, list[torch.Tensor]] = {name: [] for name in (*TABLES, "node_value")}
    for kind, layer, pos, index, value in parts:
        out["node_kind"].append(torch.full((len(layer),), kind))
        out["node_layer"].append(layer)
        out["node_pos"].append(pos)
        out["node_index"].append(index)
        out["node_value"].append(value)
    tables = {name: torch.cat([p.long().cpu() for p in parts_]) for name, parts_ in out.items() if name != "node_value"}
    tables["node_value"] = torch.cat([v.float().cpu() for v in out["node_value"]])
    return tables
