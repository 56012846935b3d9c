"""attribute() on a tiny in-memory Llama: the graph's layout, its file, and clear early errors on bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402

from sae.circuits import ERROR, FEATURE, TARGET, TOKEN, Graph, attribute  # noqa: E402

N_LAYERS, D = 2, 32
MLP_IN, MLP_OUT = "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out"


@pytest.fixture(scope="module")
def model():
    return tm.causal_lm("llama", N_LAYERS, D)


def transcoders(skip: bool = False, n: int = 16):
    return [
        tm.our_transcoder(tm.random_transcoder(D, n, skip=skip, jumprelu=False, seed=layer), layer, MLP_IN, MLP_OUT)
        for layer in range(N_LAYERS)
    ]


def test_graph_layout_and_file(model, tmp_path):
    graph = attribute(model, transcoders(skip=True), "the cat sat", max_n_logits=3, batch_size=7, progress=False)
    P = len(graph.tokens)
    assert graph.tokens.tolist()[0] == 1  # the BOS prepended
    kinds = graph.node_kind.tolist()
    assert kinds == sorted(kinds)  # features, errors, tokens, targets
    assert kinds.count(ERROR) == N_LAYERS * P and kinds.count(TOKEN) == P and kinds.count(TARGET) == 3
    feats = graph.nodes(FEATURE)
    assert len(feats) == len(graph.active_features) > 0
    assert (graph.node_pos[feats] > 0).all()  # the BOS position has no features
    tok = graph.nodes(TOKEN)
    assert (graph.node_layer[tok] == -1).all() and graph.node_index[tok].tolist() == graph.tokens.tolist()
    tgt = graph.nodes(TARGET)
    assert (graph.node_layer[tgt] == N_LAYERS).all() and (graph.node_pos[tgt] == P - 1).all()
    assert (graph.node_index[graph.nodes(ERROR)] == -1).all()
    # only features and targets have inputs; a feature's inputs come from earlier layers only
    A = graph.adjacency_matrix
    assert A[graph.nodes(ERROR)].abs().sum() == 0 and A[tok].abs().sum() == 0
    for row in feats.tolist():
        srcs = torch.nonzero(A[row]).flatten()
        src_layers = graph.node_layer[srcs]
        assert (src_layers < graph.node_layer[row]).all()

    assert repr(graph) == (
        f"Graph('<bos> the cat sat': {graph.n_nodes} nodes ({len(feats)} features, {N_LAYERS * P} errors, {P} tokens, "
        f"3 targets), {N_LAYERS} layers)"
    )
    path = graph.save(tmp_path / "graph.safetensors")
    back = Graph.load(path)
    assert back.keys() == graph.keys() and back.prompt == graph.prompt and back.n_layers == N_LAYERS
    assert torch.equal(back.adjacency_matrix, graph.adjacency_matrix) and back.info == graph.info
    torch.testing.assert_close(back.node_value, graph.node_value)


def test_batch_size_does_not_change_the_graph(model):
    one = attribute(model, transcoders(), [4, 5, 6, 7], batch_size=1, progress=False)
    many = attribute(model, transcoders(), [4, 5, 6, 7], batch_size=64, progress=False)
    assert one.keys() == many.keys()
    torch.testing.assert_close(one.adjacency_matrix, many.adjacency_matrix, atol=1e-6, rtol=1e-5)


def test_no_active_feature(model):
    """Thresholds above every pre-activation: a graph of errors, tokens and targets only (per-layer and CLT)."""
    quiet = []
    for layer in range(N_LAYERS):
        t = tm.random_transcoder(D, 8, skip=True, jumprelu=True, seed=layer)
        t["activation_function.threshold"] += 1e3
        quiet.append(tm.our_transcoder(t, layer, MLP_IN, MLP_OUT))
    clt = tm.random_clt(N_LAYERS, D, 8, jumprelu=True, seed=0)
    clt["threshold"] += 1e3
    for transcoders_ in (quiet, [tm.our_clt(clt, MLP_IN, MLP_OUT)]):
        graph = attribute(model, transcoders_, "the cat", max_n_logits=2, progress=False)
        assert graph.n_features == 0 and len(graph.active_features) == 0 and graph.n_targets == 2
        errors = graph.adjacency_matrix[graph.nodes(TARGET)][:, graph.nodes(ERROR)]
        assert errors.abs().sum() > 0  # the MLPs' whole contributions are errors now


def test_prompt_longer_than_the_context(model):
    with pytest.raises(ValueError, match="longer than the 16-token context"):
        attribute(model, transcoders(), " ".join(["cat"] * 16), progress=False)


def test_target_outside_the_vocabulary(model):
    vocab = len(tm.tokenizer())
    with pytest.raises(ValueError, match=rf"target token {vocab} is outside the vocabulary: expected an id in \[0, {vocab}\)"):
        attribute(model, transcoders(), "the cat", target=[3, vocab], progress=False)


def test_transcoders_on_other_hooks(model):
    bad = [
        tm.our_transcoder(tm.random_transcoder(D, 8, skip=False, jumprelu=False, seed=0), 0, "blocks.{}.hook_resid_pre", MLP_OUT)
    ]
    with pytest.raises(ValueError, match="'blocks.0.hook_resid_pre' is not an MLP's input"):
        attribute(model, bad + transcoders()[1:], "the cat", progress=False)


def test_transcoders_missing_a_layer(model):
    with pytest.raises(ValueError, match=r"read layers \[0\]; this model has 2 layers .* \(missing \[1\]\)"):
        attribute(model, transcoders()[:1], "the cat", progress=False)


def test_transcoder_width_that_does_not_fit(model):
    narrow = tm.our_transcoder(tm.random_transcoder(D // 2, 8, skip=False, jumprelu=False, seed=0), 1, MLP_IN, MLP_OUT)
    with pytest.raises(ValueError, match=rf"transcoder of layer 1 reads d_in={D // 2}, but 'blocks.1.mlp.hook_in' is {D} wide"):
        attribute(model, [transcoders()[0], narrow], "the cat", progress=False)


def test_clt_with_a_layer_missing(model):
    clt = tm.our_clt(tm.random_clt(N_LAYERS, D, 8, jumprelu=False, seed=0), MLP_IN, MLP_OUT, first_layer=1)
    with pytest.raises(ValueError, match=r"the CLT covers layers 1-2 of a 2-layer model: .* \(missing \[0\]\)"):
        attribute(model, clt, "the cat", progress=False)


def test_an_sae_is_not_a_transcoder(model):
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=D, n_latents=8, k=2, hook_name="blocks.0.mlp.hook_in"))
    with pytest.raises(ValueError, match="is an SAE"):
        attribute(model, [sae, transcoders()[1]], "the cat", progress=False)
