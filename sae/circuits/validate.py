"""`validate`: checks of an attribution graph by intervention (issue #27; Ameisen et al. 2025, §4 "validating").

The graph is exact for the local replacement model (attention patterns and normalisation denominators frozen,
MLPs replaced by transcoders with their errors as constants). `validate` asks how far the model itself departs
from it. For each of the graph's most influential features, its activation at its position is set to
`scale * a` (0: ablated; other factors: steered; a CLT feature in every layer it writes), and the change of each
target's read-out `v . h` on the final hidden state (the graph's own definition: a causal LM's demeaned logit at
the last position; an encoder's `Direction`, at its position or on the mean over positions) is

- predicted by the graph: its direct effect `(scale - 1) A[t, s]`, and its total effect through the graph's
  feature-to-feature paths (the linear replacement model with the features responding: `(I - M)^-1`, below);
- measured in the frozen replacement model (`LocalReplacement.frozen()`), with the other features held
  (`frozen_direct`, which must equal the direct prediction to float precision: the exactness check) or
  responding linearly (`frozen_total`, which must equal the total prediction: a check of the solve);
- measured in the model with its transcoders spliced in and their error terms held (`measured`): attention,
  norms and every feature recomputed from the intervened forward. Unintervened, it is the model itself (the
  deviation of its output, a causal LM's logits or an encoder's final hidden state, is `splice_deviation`, 0 on
  CPU).

The frozen model is linear, so its change is its derivative along the intervention: one backward pass per batch
of (node, target) copies of the prompt, the derivative taken with respect to the size of the change added at the
MLP outputs, not read off the decoder vectors as `attribute` does. In both predictions and both frozen
measurements the error terms, the token embeddings and the active features left out of the graph
(`max_feature_nodes`) are held.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from sae.analysis.interventions import HookFit, TranscoderReplacement
from sae.circuits.attribute import traceable_model
from sae.circuits.dictionaries import Components, Transcoders
from sae.circuits.graph import FEATURE, POOLED, TARGET, Graph
from sae.circuits.prune import influence, normalized, target_weights
from sae.circuits.replacement import LocalReplacement, ReachedHead, hooked
from sae.circuits.targets import Direction, Targets, choose_targets, direction_targets
from sae.model import SparseAutoencoder

__all__ = ["QUANTITIES", "ReadOut", "Validation", "validate"]

INFO_KEY = "validation"
_QUANTITY_NAMES = {"logit": "target's demeaned logit", "direction": "target value (v . h)"}
QUANTITIES = ("predicted_direct", "predicted_total", "frozen_direct", "frozen_total", "measured")


@dataclass(frozen=True)
class ReadOut:
    """What the targets read from the final hidden state [B, P, d]: one vector per target [k, d], each at its
    position [k] (a next-token logit: the last) or, at POOLED, on the mean over positions (a pooled embedding).
    Both target kinds share it: the intervention loop only ever asks for `readout(final)` [B, k]."""

    vectors: torch.Tensor
    positions: torch.Tensor

    def __call__(self, final: torch.Tensor) -> torch.Tensor:
        h = final.float()
        pos = self.positions.tolist()
        pooled = h.mean(1)
        read = torch.stack([pooled if p == POOLED else h[:, p] for p in pos], 1)  # [B, k, d]
        return (read * self.vectors.float().to(h.device)).sum(-1)


@dataclass(repr=False)
class Validation:
    """The interventions of `validate` on one graph: per validated feature node (most influential first), per
    scale and per target, the five changes of QUANTITIES ([n, S, k] each), and the splice's exactness."""

    nodes: torch.Tensor  # [n] the nodes' rows in the graph's matrix
    features: torch.Tensor  # [n, 3] (layer, position, feature index)
    activations: torch.Tensor  # [n]
    influence: torch.Tensor  # [n] each node's influence on the targets (sae.circuits.prune)
    scales: tuple[float, ...]
    target_ids: torch.Tensor  # [k]
    target_strings: list[str]
    target_probabilities: torch.Tensor  # [k] the targets' weights: a logit's probability, 1/k for directions
    predicted_direct: torch.Tensor  # [n, S, k]
    predicted_total: torch.Tensor
    frozen_direct: torch.Tensor
    frozen_total: torch.Tensor
    measured: torch.Tensor
    splice_deviation: float  # max |output| difference (logits; an encoder's final hidden state), spliced vs model
    info: dict[str, Any] = field(default_factory=dict)
    target_kind: str = "logit"  # the graph's: "logit" (demeaned next-token logits) or "direction" (v . h)

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"Validation({len(self.nodes)} nodes x {len(self.scales)} scales x {len(self.target_ids)} targets: "
            f"corr(measured, direct)={s['correlation_direct']:.3f}, corr(measured, total)={s['correlation_total']:.3f}, "
            f"frozen vs graph {s['frozen_relative_deviation']:.1e}, splice deviation {self.splice_deviation:.1e})"
        )

    # --- figures of merit ----------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """Over every (node, scale, target): the correlation and the relative error (`||measured - predicted|| /
        ||measured||`) of the measured change against each prediction, the fraction of signs they agree on, and
        the largest deviation of the frozen measurements from the graph relative to the largest prediction."""
        m = self.measured.double().flatten()
        out: dict[str, float] = {}
        for name in ("direct", "total"):
            p = getattr(self, f"predicted_{name}").double().flatten()
            out[f"correlation_{name}"] = _correlation(m, p)
            out[f"relative_error_{name}"] = _relative(m - p, m)
            moved = (m != 0) | (p != 0)
            out[f"sign_agreement_{name}"] = float((m.sign() == p.sign())[moved].double().mean()) if moved.any() else math.nan
        for name in ("direct", "total"):
            p = getattr(self, f"predicted_{name}").double()
            f = getattr(self, f"frozen_{name}").double()
            scale = float(p.abs().max()) if p.numel() else 0.0
            out[f"frozen_relative_deviation{'' if name == 'direct' else '_total'}"] = (
                float((f - p).abs().max()) / scale if scale > 0 else 0.0
            )
        out["splice_deviation"] = self.splice_deviation
        return out

    def _node_fields(self, i: int) -> dict[str, Any]:
        """The table columns that name validated node `i`: its matrix row, its key and its activation."""
        layer, pos, index = self.features[i].tolist()
        activation = float(self.activations[i])
        return {"node": int(self.nodes[i]), "layer": layer, "pos": pos, "feature": index, "activation": activation}

    def per_node(self) -> list[dict[str, Any]]:
        """One row per (node, scale): the node, the norms over targets of the measured and predicted changes and
        the relative errors of the predictions (how far the model departs from the graph at that node)."""
        rows = []
        for i in range(len(self.nodes)):
            for j, scale in enumerate(self.scales):
                m = self.measured[i, j].double()
                row: dict[str, Any] = {
                    **self._node_fields(i),
                    "influence": float(self.influence[i]),
                    "scale": scale,
                    "measured_norm": float(m.norm()),
                }
                for name in ("direct", "total"):
                    p = getattr(self, f"predicted_{name}")[i, j].double()
                    row[f"predicted_{name}_norm"] = float(p.norm())
                    row[f"relative_error_{name}"] = _relative(m - p, m)
                rows.append(row)
        return rows

    def rows(self) -> list[dict[str, Any]]:
        """The long table: one row per (node, scale, target) with the five changes."""
        rows = []
        for i in range(len(self.nodes)):
            for j, scale in enumerate(self.scales):
                for t, token in enumerate(self.target_ids.tolist()):
                    row: dict[str, Any] = {
                        **self._node_fields(i),
                        "scale": scale,
                        "target": token,
                        "target_string": self.target_strings[t],
                    }
                    row.update({q: float(getattr(self, q)[i, j, t]) for q in QUANTITIES})
                    rows.append(row)
        return rows

    def to_frame(self) -> Any:
        """`rows()` as a pandas DataFrame (pandas needed)."""
        import pandas as pd  # type: ignore[import-untyped]

        return pd.DataFrame(self.rows())

    # --- storage -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (NaN as None): what json.dumps writes and `from_dict` reads."""
        d: dict[str, Any] = {
            "nodes": self.nodes.tolist(),
            "features": self.features.tolist(),
            "activations": _floats(self.activations),
            "influence": _floats(self.influence),
            "scales": list(self.scales),
            "target_ids": self.target_ids.tolist(),
            "target_strings": list(self.target_strings),
            "target_probabilities": _floats(self.target_probabilities),
            "splice_deviation": self.splice_deviation,
            "target_kind": self.target_kind,
            "info": self.info,
            "summary": {k: (None if math.isnan(v) else v) for k, v in self.summary().items()},
        }
        d.update({q: _floats(getattr(self, q)) for q in QUANTITIES})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Validation:
        """The validation `to_dict` wrote."""
        missing = [k for k in ("nodes", "features", "scales", "target_ids", *QUANTITIES) if k not in d]
        if missing:
            raise ValueError(f"not a saved validation: keys {missing} are missing")
        n, S, k = len(d["nodes"]), len(d["scales"]), len(d["target_ids"])
        return cls(
            nodes=torch.tensor(d["nodes"], dtype=torch.long),
            features=torch.tensor(d["features"], dtype=torch.long).reshape(n, 3),
            activations=_tensor(d["activations"]),
            influence=_tensor(d["influence"]),
            scales=tuple(float(s) for s in d["scales"]),
            target_ids=torch.tensor(d["target_ids"], dtype=torch.long),
            target_strings=list(d["target_strings"]),
            target_probabilities=_tensor(d["target_probabilities"]),
            splice_deviation=float(d["splice_deviation"]),
            info=dict(d.get("info", {})),
            target_kind=str(d.get("target_kind", "logit")),
            **{q: _tensor(d[q]).reshape(n, S, k) for q in QUANTITIES},
        )

    @classmethod
    def of(cls, graph: Graph) -> Validation:
        """The validation stored in `graph.info` (by `validate(..., store=True)`; kept by Graph.save/load)."""
        if INFO_KEY not in graph.info:
            raise ValueError(f"{graph!r} holds no validation: run sae.circuits.validate(graph, model, transcoders)")
        return cls.from_dict(graph.info[INFO_KEY])

    def save(self, path: str | Path) -> Path:
        """Write `to_dict()` as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Validation:
        """Read a validation `save` wrote."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    # --- the figure ----------------------------------------------------------------------
    def figure(self) -> Any:
        """plotly scatter of the measured change against the graph's two predictions, one point per (node,
        target, scale), with the diagonal; hover names the node and the target."""
        import plotly.graph_objects as go

        labels = [
            f"L{r['layer']} p{r['pos']} #{r['feature']} (a={r['activation']:.3g}) x{r['scale']:g} -> {r['target_string']!r}"
            for r in self.rows()
        ]
        y = self.measured.flatten().tolist()
        fig = go.Figure()
        for name, symbol in (("direct", "circle"), ("total", "x")):
            x = getattr(self, f"predicted_{name}").flatten().tolist()
            fig.add_scatter(x=x, y=y, mode="markers", name=f"{name} effect (graph)", text=labels, marker_symbol=symbol)
        values = [*y, *self.predicted_direct.flatten().tolist(), *self.predicted_total.flatten().tolist()]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="measured = predicted", line={"dash": "dot"})
        s = self.summary()
        fig.update_layout(
            title=(
                f"Interventions on {len(self.nodes)} features: corr {s['correlation_direct']:.3f} (direct), "
                f"{s['correlation_total']:.3f} (total)"
            ),
            xaxis_title=f"change of the {_QUANTITY_NAMES[self.target_kind]} predicted by the graph",
            yaxis_title="measured in the model (transcoders spliced, errors held)",
        )
        return fig


def validate(
    graph: Graph,
    model: Any,
    transcoders: SparseAutoencoder | Sequence[SparseAutoencoder],
    *,
    top: int = 10,
    scale: float | Sequence[float] = 0.0,
    batch_size: int = 64,
    store: bool = True,
    progress: bool = True,
) -> Validation:
    """Intervene on the `top` features of `graph` most influential on its targets and compare the changes of the
    targets with the graph's predictions (module docstring). `model` and `transcoders` must be those the graph was
    built with (checked: the targets' probabilities, or a direction graph's target values, and the active features
    on its prompt). A causal LM's graph of next-token logits or an encoder's graph of `Direction` targets: the
    read-out is the graph's (`ReadOut`), the rest is the same for both. `scale`: the factor
    (or factors) the activation is multiplied by: 0 ablates. `batch_size`: copies of the prompt per backward pass
    of the frozen measurements (one per node and target). `store`: keep the result in `graph.info`, so
    `graph.save` writes it and `Validation.of(graph)` reads it back."""
    started = time.time()
    scales = _check_options(top, scale, batch_size)
    adapter = traceable_model(model)
    causal = bool(adapter.is_causal)
    if graph.target_kind != ("logit" if causal else "direction"):
        raise ValueError(
            f"the graph's targets are {graph.target_kind}s, but {adapter.name!r} is "
            f"{'a causal LM (next-token logits)' if causal else 'an encoder (direction targets)'}: another model"
        )
    tc = Transcoders(transcoders, adapter.n_layers, adapter.device)
    adapter.check_hooks(tc.input_hooks + tc.output_hooks)
    replacement = LocalReplacement(adapter, tc)
    tokens = _graph_tokens(graph, adapter, replacement)
    kind = "clt" if tc.clt is not None else "per-layer"
    if graph.info.get("transcoders", kind) != kind:
        raise ValueError(f"the graph was built with {graph.info['transcoders']} transcoders, these are {kind}")

    spliced = _Spliced(adapter, tc, replacement, tokens)
    targets = _graph_targets(graph, replacement, spliced, len(tokens))
    comps = tc.components(torch.stack([spliced.inputs[layer] for layer in range(adapter.n_layers)]), int(causal))
    of_node = _check_same_features(graph, comps)
    readout = ReadOut(targets.vectors, targets.positions)

    features = graph.nodes(FEATURE)
    if len(features) == 0:
        raise ValueError(f"{graph!r} has no feature nodes to intervene on")
    node_influence = influence(normalized(graph.adjacency_matrix.float()), target_weights(graph))[features]
    order = torch.argsort(node_influence, descending=True, stable=True)[:top]
    chosen = features[order]
    totals = _total_effects(graph)  # [n_features, k] per unit relative change of each feature
    factors = torch.tensor(scales) - 1.0  # [S]
    A_targets = graph.adjacency_matrix[graph.nodes(TARGET)].float()  # [k, N]

    base = readout(spliced.run({})[1][None])[0]
    frozen = _Frozen(replacement, tokens, comps, of_node, readout)
    rows = [of_node[node] for node in chosen.tolist()]
    frozen_direct = frozen.changes(rows, respond=False, batch_size=batch_size)
    frozen_total = frozen.changes(rows, respond=True, batch_size=batch_size)
    shape = (len(chosen), len(scales), len(targets.ids))
    out = {q: torch.zeros(shape) for q in QUANTITIES}
    for i, node in enumerate(tqdm(chosen.tolist(), desc="validate: interventions", disable=not progress)):
        c = of_node[node]
        writes = _writes(comps, c)
        out["predicted_direct"][i] = factors[:, None] * A_targets[:, node]
        out["predicted_total"][i] = factors[:, None] * totals[order[i]]
        out["frozen_direct"][i] = factors[:, None] * frozen_direct[i]
        out["frozen_total"][i] = factors[:, None] * frozen_total[i]
        for j, f in enumerate(factors.tolist()):
            deltas = {layer: (pos, f * vec) for layer, pos, vec in writes}
            out["measured"][i, j] = (readout(spliced.run(deltas)[1][None])[0] - base).cpu()

    result = Validation(
        nodes=chosen,
        features=torch.stack([graph.node_layer[chosen], graph.node_pos[chosen], graph.node_index[chosen]], 1),
        activations=graph.node_value[chosen].float(),
        influence=node_influence[order].float(),
        scales=scales,
        target_ids=targets.ids,
        target_strings=targets.labels,
        target_probabilities=targets.weights.float(),
        splice_deviation=spliced.deviation,
        info={"model": adapter.name, "transcoders": kind, "seconds": round(time.time() - started, 3)},
        target_kind=targets.kind,
        **out,
    )
    if store:
        graph.info[INFO_KEY] = result.to_dict()
    return result


# --- the spliced model -------------------------------------------------------------------
class _Spliced:
    """The model with its transcoders spliced in: each MLP output is the transcoders' prediction from this
    forward's MLP inputs plus the error term held at its value on the prompt (every position), computed as
    `y + (prediction - prediction on the prompt)` so that, unintervened, it is exactly the model's output; an
    intervention adds `(scale - 1) a W_dec` at its feature's position in each layer the feature writes. `output`:
    the model's on the prompt (a causal LM's logits [P, vocab], an encoder's final hidden state [P, d])."""

    def __init__(self, adapter: Any, tc: Transcoders, replacement: LocalReplacement, tokens: torch.Tensor) -> None:
        self.adapter, self.tc, self.replacement = adapter, tc, replacement
        self.tokens = tokens[None].to(adapter.device)
        L = adapter.n_layers
        if tc.clt is not None:
            shared = TranscoderReplacement(tc.clt, HookFit(tuple(tc.input_hooks), tuple(tc.output_hooks)))
            self.states = [(shared, layer) for layer in range(L)]
        else:
            self.states = [
                (TranscoderReplacement(t, HookFit((tc.input_hooks[layer],), (tc.output_hooks[layer],))), 0)
                for layer, t in enumerate(tc.per_layer)
            ]
        with torch.no_grad(), replacement.capture() as rec:
            self.output = _model_output(adapter, self.tokens)[0]
        self.inputs = {layer: rec.inputs[layer][0] for layer in range(L)}
        tc.check_widths([self.inputs[layer] for layer in range(L)], [rec.outputs[layer][0] for layer in range(L)])
        self.y: dict[int, torch.Tensor] = {}
        self.pred: dict[int, torch.Tensor] = {}
        self._forward(self._record)  # the MLP outputs and the predictions on the prompt
        output, _ = self.run({})
        self.deviation = float((output.float() - self.output.float()).abs().max())

    def _record(self, layer: int, a: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        self.y[layer], self.pred[layer] = a.detach().clone(), pred.detach().clone()
        return a

    def run(self, deltas: dict[int, tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The output (logits [P, vocab]; an encoder's: its final hidden state) and the final hidden state [P, d]
        with `deltas` {layer: (position, vector)} added."""

        def spliced(layer: int, a: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
            out = self.y[layer] + (pred - self.pred[layer])
            if layer in deltas:
                pos, vec = deltas[layer]
                out[0, pos] += vec.to(out.dtype)
            return out

        return self._forward(spliced)

    def _forward(self, write: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        final: dict[str, torch.Tensor] = {}

        def keep(module: nn.Module, args: Any) -> None:
            final["h"] = args[0]

        with ExitStack() as stack, torch.no_grad():
            for layer, (state, index) in enumerate(self.states):
                stack.enter_context(self.adapter.edit(self.tc.input_hooks[layer], state.read(index)))
                stack.enter_context(self.adapter.edit(self.tc.output_hooks[layer], self._writer(state, index, layer, write)))
            if self.replacement.head is not None:
                stack.enter_context(hooked(self.replacement.head.register_forward_pre_hook(keep)))
            output = _model_output(self.adapter, self.tokens)
        return output[0], final.get("h", output)[0]

    def _writer(
        self,
        state: TranscoderReplacement,
        index: int,
        layer: int,
        write: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        def edit(a: torch.Tensor) -> torch.Tensor:
            return write(layer, a, state.prediction(index, a))

        return edit


# --- the frozen replacement model ----------------------------------------------------------
class _Frozen:
    """The change of the read-out in the frozen replacement model (`LocalReplacement.frozen()`) when a feature's
    contribution changes by its own size (`a W_dec` in each layer it writes). The frozen model is linear, so the
    change is the derivative along `eps * a W_dec` added at the MLP outputs (eps = 0: the forward is the model's):
    one copy of the prompt per (node, target) and one backward pass per batch of them. `respond`: the graph's
    other features respond with their pre-activation's change (slope 1, as active ReLU, JumpReLU and top-k
    features have), through a term of value 0 whose gradient is that response."""

    def __init__(
        self, replacement: LocalReplacement, tokens: torch.Tensor, comps: Components, of_node: dict[int, int], readout: ReadOut
    ) -> None:
        self.replacement, self.readout, self.comps = replacement, readout, comps
        self.tokens = tokens.to(replacement.adapter.device)
        L = replacement.adapter.n_layers
        in_graph = torch.zeros(len(comps.features), dtype=torch.bool, device=comps.decoder_node.device)
        in_graph[torch.tensor(list(of_node.values()), dtype=torch.long, device=in_graph.device)] = True
        keep = in_graph[comps.decoder_node]
        # per layer written: the decoder entries of the graph's features, indices into comps.decoder_*
        self.entries = [torch.nonzero(keep & (comps.decoder_layer == layer)).flatten() for layer in range(L)]

    def changes(self, nodes: list[int], respond: bool, batch_size: int) -> torch.Tensor:
        """[n, k]: the change of each target per unit relative change of each feature (rows of comps)."""
        k = len(self.readout.vectors)
        pairs = [(c, t) for c in nodes for t in range(k)]
        out = torch.zeros(len(pairs))
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            out[start : start + len(chunk)] = self._batch(chunk, respond)
        return out.reshape(len(nodes), k)

    def _batch(self, pairs: list[tuple[int, int]], respond: bool) -> torch.Tensor:
        rep, comps = self.replacement, self.comps
        B, P = len(pairs), len(self.tokens)
        clamped = torch.tensor([c for c, _ in pairs], device=comps.decoder_node.device)
        own: dict[int, torch.Tensor] = {}  # layer -> [B, P, d_out], each copy's feature's a W_dec
        for b, (c, _) in enumerate(pairs):
            for layer, pos, vec in _writes(comps, c):
                own.setdefault(layer, torch.zeros(B, P, vec.shape[-1], dtype=vec.dtype, device=vec.device))[b, pos] += vec
        with ExitStack() as stack, torch.enable_grad():
            rec = stack.enter_context(rep.frozen())
            eps = torch.zeros(B, device=comps.decoder_vectors.device, requires_grad=True)

            def add(layer: int) -> Callable[..., Any]:
                def hook(module: nn.Module, args: Any, output: Any) -> Any:
                    y = output[0] if isinstance(output, tuple | list) else output
                    new = y
                    if layer in own:
                        new = new + (eps[:, None, None] * own[layer]).to(y.dtype)
                    if respond:
                        new = new + self._response(rec.inputs, layer, clamped).to(y.dtype)
                    return type(output)([new, *output[1:]]) if isinstance(output, tuple | list) else new

                return hook

            for layer, (_, module) in enumerate(rep.out_sites):
                stack.enter_context(hooked(module.register_forward_hook(add(layer))))
            try:
                _model_output(rep.adapter, self.tokens[None].expand(B, P))
            except ReachedHead:
                pass
            assert rec.final is not None
            read = self.readout(rec.final)  # [B, k]
            picked = read[torch.arange(B, device=read.device), torch.tensor([t for _, t in pairs], device=read.device)]
            (grad,) = torch.autograd.grad(picked.sum(), eps, allow_unused=True)
        return torch.zeros(B) if grad is None else grad.float().cpu()

    def _response(self, inputs: dict[int, torch.Tensor], layer: int, clamped: torch.Tensor) -> torch.Tensor:
        """[B, P, d_out], value 0: the graph's features written into `layer`, each one's pre-activation change (its
        encoder vector on its input) times its decoder vector over its activation; a copy's own feature held."""
        comps, idx = self.comps, self.entries[layer]
        x0 = inputs[layer]
        B, P = x0.shape[:2]
        out = torch.zeros(B, P, comps.decoder_vectors.shape[-1], dtype=comps.decoder_vectors.dtype, device=x0.device)
        if len(idx) == 0:
            return out
        nodes, pos = comps.decoder_node[idx], comps.decoder_pos[idx]
        src = comps.features[nodes, 0]
        x = torch.stack([inputs[s] for s in range(layer + 1)]).to(comps.encoder_vectors.dtype)  # [layer + 1, B, P, d_in]
        pre = (x[src, :, pos] * comps.encoder_vectors[nodes][:, None]).sum(-1)  # [m, B]
        weight = (pre - pre.detach()) / comps.values[nodes][:, None] * (nodes[:, None] != clamped[None])
        for p in pos.unique().tolist():
            at = pos == p
            out[:, p] = weight[at].T @ comps.decoder_vectors[idx][at]
        return out


# --- the graph's predictions and checks --------------------------------------------------------
def _total_effects(graph: Graph) -> torch.Tensor:
    """[n_features, k]: the change of each target when a feature's activation changes by its own size, through
    every path of the graph's linear model (features respond with their pre-activation; errors, tokens and the
    features outside the graph held). With x the features' relative changes, x = e_s + M x, M[i, j] =
    A[i, j] / a_i, so the targets change by A_tf (I - M)^-1 e_s = sum_n A_tf M^n e_s. Edges run from earlier
    layers, so M^n vanishes past n = n_layers: the sum is exact, a few products of k rows with the feature block
    of the matrix (`z M = (z / a) A_ff`: M is never formed)."""
    features, targets = graph.nodes(FEATURE), graph.nodes(TARGET)
    n = len(features)
    A = graph.adjacency_matrix.float()
    contiguous = torch.equal(features, torch.arange(n))  # features come first in the matrix: a view, not a copy
    A_ff = A[:n, :n] if contiguous else A[features][:, features]
    a = graph.node_value[features].float()
    z = A[targets][:, features]  # [k, n]
    total = z.clone()
    for _ in range(graph.n_layers + 1):
        z = (z / a) @ A_ff
        if not z.any():
            return total.T.contiguous()
        total += z
    raise ValueError("the graph's feature-to-feature edges do not run from earlier layers to later ones: it has a cycle")


def _writes(comps: Components, c: int) -> list[tuple[int, int, torch.Tensor]]:
    """(layer, position, a W_dec) of each layer feature c (a row of comps.features) writes into."""
    mine = torch.nonzero(comps.decoder_node == c).flatten()
    return [(int(comps.decoder_layer[m]), int(comps.decoder_pos[m]), comps.decoder_vectors[m]) for m in mine.tolist()]


def _check_options(top: int, scale: float | Sequence[float], batch_size: int) -> tuple[float, ...]:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top={top!r}; expected an int >= 1 (the number of features to intervene on)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected an int >= 1")
    scales = [scale] if isinstance(scale, int | float) else list(scale)
    if not scales or any(isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) for s in scales):
        raise ValueError(f"scale={scale!r}; expected a finite number or a non-empty list of them (0: ablate)")
    return tuple(float(s) for s in scales)


def _model_output(adapter: Any, ids: torch.Tensor) -> torch.Tensor:
    """The forward of the model on `ids` [B, P]: a causal LM's logits, an encoder's final hidden state."""
    if adapter.is_causal:
        return adapter.model(input_ids=ids, use_cache=False).logits
    out = adapter.model(input_ids=ids)
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out[0]


def _graph_targets(graph: Graph, replacement: LocalReplacement, spliced: _Spliced, n_pos: int) -> Targets:
    """The graph's targets on the model: its logits' demeaned unembedding rows at the last position, or its
    directions at their positions; checked to be this model's on the graph's prompt (probabilities or values)."""
    if graph.target_kind == "logit":
        unembed = replacement.head.weight.detach()
        targets = choose_targets(spliced.output[-1], unembed, graph.target_ids, 1, 1.0, n_pos)
        _check_same_model(graph, targets.weights, "target probabilities")
        targets.labels = [str(replacement.adapter.tokenizer.decode([t])) for t in graph.target_ids.tolist()]
        return targets
    vectors = graph.target_vectors
    d = replacement.adapter.d_model
    if vectors is None or vectors.shape[-1] != d:
        found = "none" if vectors is None else f"shape {tuple(vectors.shape)}"
        raise ValueError(f"the graph's target vectors are {found}; expected [k, {d}] for model {replacement.adapter.name!r}")
    labels = list(graph.info.get("target_strings", [""] * len(vectors)))
    positions = graph.target_positions.tolist()
    wanted = [Direction(v, None if p == POOLED else int(p), str(label)) for v, p, label in zip(vectors, positions, labels)]
    targets = direction_targets(spliced.output, wanted)
    if "target_values" in graph.info:
        _check_same_model(graph, targets.values, "target values", torch.tensor(graph.info["target_values"]))
    return targets


def _graph_tokens(graph: Graph, adapter: Any, replacement: LocalReplacement) -> torch.Tensor:
    head = replacement.head if replacement.head is not None else replacement.embedding
    vocab = int(head.weight.shape[0])
    if graph.n_layers != adapter.n_layers:
        raise ValueError(f"the graph has {graph.n_layers} layers, model {adapter.name!r} has {adapter.n_layers}: another model")
    tokens = graph.tokens.long()
    bad = tokens[(tokens < 0) | (tokens >= vocab)]
    if len(bad):
        raise ValueError(f"the graph's prompt has token ids {bad[:5].tolist()} outside the vocabulary [0, {vocab}) of this model")
    ids = graph.target_ids
    if graph.target_kind == "logit" and (len(ids) == 0 or bool(((ids < 0) | (ids >= vocab)).any())):
        raise ValueError(f"the graph's targets {ids.tolist()} are not token ids of this model's vocabulary [0, {vocab})")
    return tokens


def _check_same_model(graph: Graph, ours: torch.Tensor, what: str, theirs: torch.Tensor | None = None) -> None:
    """The targets' probabilities (or a direction graph's values) on the graph's prompt: the graph's own, or it is
    of another model (or prompt)."""
    ours = ours.float().cpu()
    theirs = (graph.target_probabilities if theirs is None else theirs).float()
    atol = 1e-5 * max(1.0, float(theirs.abs().max()) if theirs.numel() else 1.0)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-3, atol=atol):
        raise ValueError(
            f"the graph's {what} {[round(p, 4) for p in theirs.tolist()]} are not this model's on its "
            f"prompt ({[round(p, 4) for p in ours.tolist()]}): the graph was built with another model or prompt"
        )


def _check_same_features(graph: Graph, comps: Components) -> dict[int, int]:
    """The graph's active features must be these transcoders' on its prompt; returns {graph node: comps row}."""
    ours, theirs = comps.features.cpu(), graph.active_features.long().reshape(-1, 3)
    same = ours.shape == theirs.shape and torch.equal(ours, theirs)
    if same:
        same = torch.allclose(comps.values.float().cpu(), graph.active_values.float(), rtol=1e-3, atol=1e-5)
    if not same:
        raise ValueError(
            f"the graph's {len(theirs)} active features are not the {len(ours)} these transcoders give on its prompt: "
            "give the transcoders the graph was built with"
        )
    row = {tuple(f): i for i, f in enumerate(ours.tolist())}
    nodes = graph.nodes(FEATURE)
    keys = torch.stack([graph.node_layer[nodes], graph.node_pos[nodes], graph.node_index[nodes]], 1).tolist()
    return {int(n): row[tuple(k)] for n, k in zip(nodes.tolist(), keys)}


# --- small helpers ---------------------------------------------------------------------------------
def _correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) < 2 or float(x.std()) == 0 or float(y.std()) == 0:
        return math.nan
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def _relative(diff: torch.Tensor, reference: torch.Tensor) -> float:
    norm = float(reference.norm())
    return float(diff.norm()) / norm if norm > 0 else math.nan


def _floats(t: torch.Tensor) -> Any:
    values = t.double().tolist()
    return _nan_to_none(values)


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def _tensor(values: Any) -> torch.Tensor:
    return torch.tensor(_none_to_nan(values), dtype=torch.float32)


def _none_to_nan(v: Any) -> Any:
    if isinstance(v, list):
        return [_none_to_nan(x) for x in v]
    return math.nan if v is None else v
