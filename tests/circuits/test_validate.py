"""validate() on tiny Llama- and GPT-2-style models, per-layer transcoders and a CLT: the frozen model's changes
equal the graph's predictions, the spliced model is the model itself, the measured change against a hand-made
splice, the result's storage and figure, and one-line refusals of bad input; the same for direction targets on a
tiny BERT-style encoder (a position target and a pooled one) and on the embedded MiniLM."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402

from sae.circuits import FEATURE, TARGET, Direction, Graph, Validation, attribute, validate  # noqa: E402
from sae.circuits.prune import influence, normalized, target_weights  # noqa: E402

N_LAYERS, D, N = 2, 32, 16
HOOKS = ("blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out")
PROMPT = "the cat sat on"


def _model(kind: str):
    return tm.causal_lm(kind, N_LAYERS, D)


def _transcoders(kind: str, seed: int = 0):
    if kind == "clt":
        return [tm.our_clt(tm.random_clt(N_LAYERS, D, N, jumprelu=True, seed=seed, skip=True), *HOOKS)]
    return [
        tm.our_transcoder(tm.random_transcoder(D, N, skip=True, jumprelu=True, seed=seed + layer), layer, *HOOKS)
        for layer in range(N_LAYERS)
    ]


pytestmark = pytest.mark.usefixtures("one_thread")


def ablation_edits(transcoders, errors, layer: int, pos: int, feature: int) -> dict:
    """Hand-written splice edits: each layer's MLP output replaced by its transcoder's prediction plus the held error
    term, with one feature zeroed."""
    seen: dict[int, torch.Tensor] = {}

    def keep(a, i):
        seen[i] = a[0]
        return a

    def write(a, i):
        t, x = transcoders[i], seen[i]
        z = t.encode_dense(x)
        if i == layer:
            z[pos, feature] = 0.0
        return (z @ t.W_dec + t.b_dec + x @ t.W_skip.T + errors[i])[None]

    edits = {}
    for i in range(N_LAYERS):
        edits[HOOKS[0].format(i)] = lambda a, i=i: keep(a, i)
        edits[HOOKS[1].format(i)] = lambda a, i=i: write(a, i)
    return edits


@pytest.fixture(scope="module")
def models():
    return {kind: _model(kind) for kind in ("llama", "gpt2")}


@pytest.fixture(scope="module")
def cases(models):
    """(model, transcoders, graph, validation at scales 0 and 2) per model and transcoder kind."""
    out = {}
    for model_kind, model in models.items():
        for tc_kind in ("per-layer", "clt"):
            transcoders = _transcoders(tc_kind)
            graph = attribute(model, transcoders, PROMPT, max_n_logits=3, progress=False)
            result = validate(graph, model, transcoders, top=3, scale=[0.0, 2.0], batch_size=4, progress=False)
            out[model_kind, tc_kind] = (model, transcoders, graph, result)
    return out


@pytest.mark.parametrize("case", [("llama", "per-layer"), ("llama", "clt"), ("gpt2", "per-layer"), ("gpt2", "clt")])
def test_the_frozen_model_is_the_graph(cases, case):
    """Frozen: the changes equal the graph's direct and total effects; spliced: exactly the model until intervened."""
    _, _, graph, v = cases[case]
    assert v.splice_deviation <= 1e-6
    n, S, k = len(v.nodes), len(v.scales), graph.n_targets
    assert (n, S, k) == (3, 2, 3) and all(getattr(v, q).shape == (n, S, k) for q in ("measured", "frozen_total"))
    for name in ("direct", "total"):
        predicted, frozen = getattr(v, f"predicted_{name}"), getattr(v, f"frozen_{name}")
        assert predicted.abs().max() > 0
        torch.testing.assert_close(frozen, predicted, rtol=0, atol=1e-5 * float(predicted.abs().max()))
    # the direct prediction is the graph's edge, times scale - 1
    A = graph.adjacency_matrix[graph.nodes(TARGET)][:, v.nodes].T  # [n, k]
    torch.testing.assert_close(v.predicted_direct[:, 0], -A)
    torch.testing.assert_close(v.predicted_direct[:, 1], A)
    # the nodes are the most influential features, most influential first
    features = graph.nodes(FEATURE)
    scores = influence(normalized(graph.adjacency_matrix), target_weights(graph))[features]
    assert v.influence.tolist() == sorted(v.influence.tolist(), reverse=True)
    assert float(v.influence[-1]) >= float(scores[~torch.isin(features, v.nodes)].max())
    # the model departs from the graph, measurably and finitely
    assert torch.isfinite(v.measured).all() and v.measured.abs().max() > 0
    summary = v.summary()
    assert all(math.isfinite(summary[key]) for key in ("correlation_direct", "relative_error_total"))


def test_the_measured_change_against_a_hand_made_splice(cases):
    """Per-layer transcoders: each MLP output replaced by z W_dec + b_dec + x W_skip^T from this forward's input x
    (the node's feature zeroed at its position) plus the error on the prompt, through model.forward's edits."""
    model, transcoders, graph, v = cases["llama", "per-layer"]
    tokens = graph.tokens[None]
    fired = model.run(tokens, [h.format(layer) for layer in range(N_LAYERS) for h in HOOKS])
    with torch.inference_mode():
        errors = [fired[HOOKS[1].format(i)][0] - t.predict(fired[HOOKS[0].format(i)][0]) for i, t in enumerate(transcoders)]
    clean = model.forward(tokens)[0, -1]

    def splice(layer: int, pos: int, feature: int) -> dict:
        return ablation_edits(transcoders, errors, layer, pos, feature)

    for n, (layer, pos, feature) in enumerate(v.features.tolist()):
        delta = model.forward(tokens, splice(layer, pos, feature))[0, -1] - clean
        torch.testing.assert_close(v.measured[n, 0], delta[graph.target_ids] - delta.mean(), rtol=1e-4, atol=1e-5)


def test_a_graph_of_the_most_influential_features_only(models):
    """max_feature_nodes: the features left out are held in the frozen model as in the predictions."""
    model, transcoders = models["llama"], _transcoders("clt")
    graph = attribute(model, transcoders, PROMPT, max_n_logits=3, max_feature_nodes=12, batch_size=4, progress=False)
    assert graph.n_features == 12 < len(graph.active_features)
    v = validate(graph, model, transcoders, top=3, store=False, progress=False)
    for name in ("direct", "total"):
        predicted = getattr(v, f"predicted_{name}")
        torch.testing.assert_close(getattr(v, f"frozen_{name}"), predicted, rtol=0, atol=1e-5 * float(predicted.abs().max()))


def test_scale_one_changes_nothing(cases):
    model, transcoders, graph, _ = cases["gpt2", "clt"]
    v = validate(graph, model, transcoders, top=2, scale=1.0, store=False, progress=False)
    for q in ("predicted_direct", "predicted_total", "frozen_direct", "frozen_total", "measured"):
        assert getattr(v, q).abs().max() == 0, q


def test_the_validation_travels_with_the_graph(cases, tmp_path):
    _, _, graph, v = cases["llama", "clt"]
    back = Graph.load(graph.save(tmp_path / "graph.safetensors"))
    again = Validation.of(back)
    for q in ("nodes", "features", "measured", "predicted_total", "frozen_direct"):
        assert torch.equal(getattr(again, q), getattr(v, q)), q
    assert again.scales == (0.0, 2.0) and again.target_strings == v.target_strings
    assert Validation.load(v.save(tmp_path / "validation.json")).summary() == pytest.approx(v.summary(), nan_ok=True)
    json.dumps(v.to_dict(), allow_nan=False)  # strict JSON
    frame = v.to_frame()
    assert len(frame) == 3 * 2 * graph.n_targets and {"measured", "predicted_direct", "target_string"} <= set(frame.columns)
    assert len(v.per_node()) == 3 * 2
    fig = v.figure()
    assert [len(trace.x) for trace in fig.data] == [len(frame), len(frame), 2]
    with pytest.raises(ValueError, match="holds no validation"):
        Validation.of(dataclasses.replace(graph, info={}))


def test_bad_input_is_refused(cases, models):
    model, transcoders, graph, _ = cases["llama", "per-layer"]
    run = dict(progress=False, store=False)
    with pytest.raises(ValueError, match=r"top=0; expected an int >= 1"):
        validate(graph, model, transcoders, top=0, **run)
    with pytest.raises(ValueError, match=r"scale=nan; expected a finite number"):
        validate(graph, model, transcoders, scale=math.nan, **run)
    with pytest.raises(ValueError, match=r"target probabilities .* another model or prompt"):
        validate(graph, models["gpt2"], transcoders, **run)
    other = attribute(model, transcoders, "a dog ran far", max_n_logits=3, progress=False)
    mixed = dataclasses.replace(graph, tokens=other.tokens)  # this graph's nodes, another prompt
    with pytest.raises(ValueError, match=r"another model or prompt|active features are not"):
        validate(mixed, model, transcoders, **run)
    with pytest.raises(ValueError, match=r"active features are not the .* give the transcoders the graph was built with"):
        validate(graph, model, _transcoders("per-layer", seed=7), **run)
    with pytest.raises(ValueError, match=r"built with per-layer transcoders, these are clt"):
        validate(graph, model, _transcoders("clt"), **run)


@pytest.mark.slow
def test_trace_validate(tmp_path, capsys):
    from sae.cli import main

    model = tm.save_llama(tmp_path / "llama", n_layers=2, d_model=32)
    folder = tmp_path / "transcoders"
    for t in _transcoders("per-layer"):
        t.save(folder / t.cfg.hook_name)
    out = tmp_path / "graph"
    argv = ["trace", "--model", str(model), "--transcoders", str(folder), "--prompt", PROMPT, "--out", str(out), "--no-progress"]
    assert main([*argv, "--max-n-logits", "2", "--validate", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)["validation"]
    assert summary["splice_deviation"] == 0 and Path(summary["figure"]).is_file()
    v = Validation.of(Graph.load(out / "graph.safetensors"))
    assert len(v.nodes) == 2 and v.summary()["correlation_direct"] == pytest.approx(summary["correlation_direct"])
    assert main([*argv, "--validate", "-1"]) == 2
    assert "--validate -1" in capsys.readouterr().err


# --- direction targets: an encoder's graphs -------------------------------------------------------
ENCODER_PROMPT = "the cat sat on"  # [CLS] the cat sat on [SEP]: 6 positions
PROBE_POS = 2  # the position the first direction reads ("cat"); the second reads the mean over positions


@pytest.fixture(scope="module")
def encoder_cases():
    """(tiny BERT, transcoders, directions, graph, validation at scales 0 and 2) per transcoder kind; two targets,
    one at PROBE_POS and one pooled."""
    model = tm.encoder(N_LAYERS, D)
    vectors = torch.randn(2, D, generator=torch.Generator().manual_seed(3))
    directions = [Direction(vectors[0], PROBE_POS, "probe"), Direction(vectors[1])]
    out = {}
    for tc_kind in ("per-layer", "clt"):
        transcoders = _transcoders(tc_kind)
        graph = attribute(model, transcoders, ENCODER_PROMPT, target=directions, progress=False)
        result = validate(graph, model, transcoders, top=4, scale=[0.0, 2.0], batch_size=4, progress=False)
        out[tc_kind] = (model, transcoders, vectors, graph, result)
    return out


@pytest.mark.parametrize("tc_kind", ["per-layer", "clt"])
def test_direction_targets_the_frozen_model_is_the_graph(encoder_cases, tc_kind):
    """A position target and a pooled one: frozen changes equal the graph's predictions, the splice is the model."""
    _, _, _, graph, v = encoder_cases[tc_kind]
    assert v.target_kind == "direction" and v.splice_deviation == 0
    assert v.target_strings == ["probe", "direction 1"] and v.target_probabilities.tolist() == [0.5, 0.5]
    assert v.measured.shape == (4, 2, 2) and torch.isfinite(v.measured).all() and v.measured.abs().max() > 0
    for name in ("direct", "total"):
        predicted, frozen = getattr(v, f"predicted_{name}"), getattr(v, f"frozen_{name}")
        assert predicted[..., 0].abs().max() > 0 and predicted[..., 1].abs().max() > 0
        torch.testing.assert_close(frozen, predicted, rtol=0, atol=1e-5 * float(predicted.abs().max()))
    A = graph.adjacency_matrix[graph.nodes(TARGET)][:, v.nodes].T
    torch.testing.assert_close(v.predicted_direct[:, 0], -A)
    assert v.summary()["correlation_total"] > 0.5  # the graph predicts the model's changes (0.95 on this seed)


def test_direction_targets_the_measured_change_against_a_hand_made_splice(encoder_cases):
    """Per-layer: each feature ablated in a splice written here, through model.forward's edits (the encoder's final
    hidden state), read at the directions' own places; read at the wrong places, it disagrees (the control)."""
    model, transcoders, vectors, graph, v = encoder_cases["per-layer"]
    tokens = graph.tokens[None]
    fired = model.run(tokens, [h.format(layer) for layer in range(N_LAYERS) for h in HOOKS])
    with torch.inference_mode():
        errors = [fired[HOOKS[1].format(i)][0] - t.predict(fired[HOOKS[0].format(i)][0]) for i, t in enumerate(transcoders)]
    clean = model.forward(tokens)[0]

    def ablated(layer: int, pos: int, feature: int) -> torch.Tensor:
        return model.forward(tokens, ablation_edits(transcoders, errors, layer, pos, feature))[0] - clean  # [P, d]

    deltas = torch.stack([ablated(*key) for key in v.features.tolist()])  # [n, P, d]
    right = torch.stack([deltas[:, PROBE_POS] @ vectors[0], deltas.mean(1) @ vectors[1]], -1)
    torch.testing.assert_close(v.measured[:, 0], right, rtol=1e-4, atol=1e-5)
    wrong = torch.stack([deltas[:, PROBE_POS + 1] @ vectors[0], deltas[:, -1] @ vectors[1]], -1)
    for t in range(2):
        assert (v.measured[:, 0, t] - wrong[:, t]).abs().max() > 0.1 * v.measured[:, 0, t].abs().max()


def test_direction_graphs_are_checked_against_the_model(encoder_cases, models):
    model, transcoders, _, graph, _ = encoder_cases["per-layer"]
    run = dict(progress=False, store=False)
    tampered = dataclasses.replace(graph, info={**graph.info, "target_values": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"target values \[1.0, 2.0\] are not this model's on its prompt"):
        validate(tampered, model, transcoders, **run)
    with pytest.raises(ValueError, match=r"the graph's targets are directions, but .* is a causal LM"):
        validate(graph, models["llama"], transcoders, **run)
    with pytest.raises(ValueError, match=r"target vectors are shape \(2, 5\); expected \[k, 32\]"):
        validate(dataclasses.replace(graph, target_vectors=torch.ones(2, 5)), model, transcoders, **run)


def test_direction_validation_travels_with_the_graph(encoder_cases, tmp_path):
    _, _, _, graph, v = encoder_cases["clt"]
    again = Validation.of(Graph.load(graph.save(tmp_path / "graph.safetensors")))
    assert again.target_kind == "direction" and torch.equal(again.measured, v.measured)
    assert "target value" in v.figure().layout.xaxis.title.text


def test_validate_a_minilm_graph(minilm_clt_graph):
    """The embedded MiniLM with a CLT fitted on it, the pooled embedding's own direction."""
    model, clt, graph = minilm_clt_graph
    v = validate(graph, model, clt, top=3, batch_size=8, store=False, progress=False)
    assert v.splice_deviation <= 1e-5 and v.measured.abs().max() > 0
    for name in ("direct", "total"):
        predicted = getattr(v, f"predicted_{name}")
        torch.testing.assert_close(getattr(v, f"frozen_{name}"), predicted, rtol=0, atol=1e-5 * float(predicted.abs().max()))
