"""Attribution graphs on an encoder (the embedded MiniLM), where no circuit-tracer reference exists: the rows are
proved against the derivatives of a hand-written frozen BERT (float64) along each source's vector, taken as
differences f(u_s) - f(0), exact for its affine map, and each read-out decomposes exactly into its sources'
direct effects plus the constant part of that model (its value at zero sources, computed on its own). A CLT with
a skip term and per-layer transcoders without one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import minilm_circuits as mc  # noqa: E402

from sae.circuits import ERROR, FEATURE, TARGET, TOKEN, Graph, Validation, attribute  # noqa: E402
from sae.circuits.export import graph_json, write_graph_files  # noqa: E402
from sae.circuits.graph import POOLED  # noqa: E402
from sae.circuits.prune import prune  # noqa: E402
from sae.circuits.targets import Direction  # noqa: E402

L, D = mc.N_LAYERS, mc.D


class Reference:
    """The frozen replacement model of one graph's prompt, independent of sae.circuits (float64)."""

    def __init__(self, model, t: dict[str, torch.Tensor], graph: Graph) -> None:
        self.t, self.graph = t, graph
        self.fb = mc.FrozenBert(model.model, graph.tokens, t.get("W_skip"))
        self.x = torch.stack(self.fb.x)  # [L, P, d]
        y = torch.stack(self.fb.y)
        skip = torch.einsum("lpd,lod->lpo", self.x, t["W_skip"]) if "W_skip" in t else torch.zeros_like(y)
        self.pre = torch.einsum("lpd,ldf->lpf", self.x, t["W_enc"]) + t["b_enc"][:, None]
        self.acts = torch.relu(self.pre)
        self.errors = y - mc.prediction(t, self.x.transpose(0, 1)).transpose(0, 1)
        self.E0, self.C0 = self.fb.word[graph.tokens], y - skip  # the real point: the MLP's constant is y - skip(x)

    def readouts(self, rows: list[int]):
        """The function (embeddings [..., P, d], MLP constants [..., L, P, d]) -> the read-outs [..., len(rows)] of
        these graph rows (targets on the final hidden state, features' encoder vectors on their layer's input)."""
        g, t, keys = self.graph, self.t, self.graph.keys()
        targets = g.nodes(TARGET).tolist()

        def f(E: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
            h, xs = self.fb.linear(E, C)
            out = []
            for r in rows:
                kind, layer, pos, index = keys[r]
                if kind == TARGET:
                    assert g.target_vectors is not None
                    v = g.target_vectors[targets.index(r)].double()
                    out.append((h.mean(-2) if pos == POOLED else h[..., pos, :]) @ v)
                else:
                    out.append(xs[..., layer, pos, :] @ t["W_enc"][layer][:, index])
            return torch.stack(out, -1)

        return f

    def tangent(self, node: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Source `node`'s vector, as a change of the embeddings and the MLP constants."""
        kind, layer, pos, index = self.graph.keys()[node]
        E, C = torch.zeros_like(self.E0), torch.zeros_like(self.C0)
        if kind == TOKEN:
            E[pos] = self.fb.word[self.graph.tokens[pos]]
        elif kind == ERROR:
            C[layer, pos] = self.errors[layer, pos]
        else:
            C[layer:, pos] = self.acts[layer, pos, index] * self.t[f"W_dec_{layer}"][index]
        return E, C

    def rows(self, rows: list[int]) -> torch.Tensor:
        """[len(rows), n_nodes]: each source's derivative of the read-outs along its vector u_s, f(u_s) - f(0)."""
        f = self.readouts(rows)
        sources = torch.nonzero(self.graph.node_kind != TARGET).flatten().tolist()
        zero = f(torch.zeros_like(self.E0), torch.zeros_like(self.C0))
        out = torch.zeros(len(rows), self.graph.n_nodes, dtype=torch.float64)
        for start in range(0, len(sources), 128):
            chunk = sources[start : start + 128]
            Es, Cs = (torch.stack(z) for z in zip(*(self.tangent(s) for s in chunk)))
            out[:, chunk] = (f(Es, Cs) - zero).T
        return out

    def _bias(self, rows: list[int]) -> torch.Tensor:
        """A feature row's b_enc (its pre-activation is the read-out plus it); 0 for targets."""
        keys = self.graph.keys()
        return torch.stack(
            [
                self.t["b_enc"][keys[r][1], keys[r][3]] if keys[r][0] == FEATURE else torch.zeros((), dtype=torch.float64)
                for r in rows
            ]
        )

    def constant(self, rows: list[int]) -> torch.Tensor:
        """The read-outs at zero sources (no embeddings, MLP constants b_dec only), plus a feature's b_enc."""
        zero = (torch.zeros_like(self.E0), self.t["b_dec"][:, None].expand_as(self.C0).clone())
        return self.readouts(rows)(*zero) + self._bias(rows)

    def values(self, rows: list[int]) -> torch.Tensor:
        """The read-outs of the real forward (a feature's: its pre-activation)."""
        return self.readouts(rows)(self.E0, self.C0) + self._bias(rows)


def check_against_reference(model, t: dict[str, torch.Tensor], graph: Graph, n_feature_rows: int = 12) -> None:
    """The graph's features, target rows and a sample of feature rows against the reference; completeness."""
    ref = Reference(model, t, graph)
    # the real forward of the hand-written BERT is the model's (float32 there)
    hidden = model.model(input_ids=graph.tokens[None]).last_hidden_state[0].double()
    torch.testing.assert_close(ref.fb.final, hidden.detach(), atol=1e-4, rtol=1e-4)
    # the active features are the fitted dictionary's, at every position ([CLS] and [SEP] too)
    feats = graph.nodes(FEATURE)
    got = {tuple(k[1:]) for k in (graph.keys()[i] for i in feats.tolist())}
    clear = {tuple(i) for i in torch.nonzero(ref.pre > 1e-4).tolist()}
    assert clear <= got <= {tuple(i) for i in torch.nonzero(ref.pre > -1e-4).tolist()}
    assert {pos for _, pos, _ in got} >= {0, len(graph.tokens) - 1}
    layer, pos, index = graph.node_layer[feats], graph.node_pos[feats], graph.node_index[feats]
    torch.testing.assert_close(graph.node_value[feats].double(), ref.acts[layer, pos, index], atol=1e-4, rtol=1e-4)

    g = torch.Generator().manual_seed(0)
    sample = feats[graph.node_layer[feats] > 0]
    sample = sample[torch.randperm(len(sample), generator=g)[:n_feature_rows]]
    rows = graph.nodes(TARGET).tolist() + sample.tolist()
    expected = ref.rows(rows)
    A = graph.adjacency_matrix[rows].double()
    scale = expected.abs().amax(1, keepdim=True)
    torch.testing.assert_close(A / scale, expected / scale, atol=2e-5, rtol=0)  # float32 graph, float64 reference
    assert (expected != 0).sum() > len(rows) * 10  # the rows are not trivially zero

    # completeness: each read-out is the sum of its sources' direct effects plus the constant part
    value = ref.values(rows)
    torch.testing.assert_close(A.sum(1) + ref.constant(rows), value, atol=1e-4 * float(A.abs().sum(1).max()), rtol=0)
    if graph.target_kind == "direction":
        torch.testing.assert_close(
            torch.tensor(graph.info["target_values"]).double(), value[: graph.n_targets], rtol=1e-5, atol=1e-5
        )


def test_clt_graph_of_the_pooled_embedding(minilm_clt_graph, tmp_path):
    model, clt, graph = minilm_clt_graph
    P = len(graph.tokens)
    assert graph.tokens[0] == model.tokenizer.cls_token_id and graph.tokens[-1] == model.tokenizer.sep_token_id
    assert graph.info["transcoders"] == "clt" and graph.n_targets == 1
    # the default target: the pooled embedding's own direction, read on the mean over positions; weight 1
    mean = model.model(input_ids=graph.tokens[None]).last_hidden_state[0].mean(0).detach()
    torch.testing.assert_close(graph.target_vectors[0], mean / mean.norm())
    assert graph.target_positions.tolist() == [POOLED] and graph.target_ids.tolist() == [0]
    assert graph.target_probabilities.tolist() == [1.0] and graph.target_kind == "direction"
    assert graph.info["target_values"][0] == pytest.approx(float(mean.norm()), rel=1e-5)
    assert graph.node_kind.tolist().count(ERROR) == L * P
    check_against_reference(model, mc.fitted(cross_layer=True, skip=True, m=model), graph)

    back = Graph.load(graph.save(tmp_path / "graph.safetensors"))
    assert back.keys() == graph.keys() and back.info == graph.info
    assert torch.equal(back.target_vectors, graph.target_vectors) and torch.equal(back.adjacency_matrix, graph.adjacency_matrix)


def test_per_layer_graph_of_two_directions(minilm_hf, tmp_path):
    """Per-layer transcoders without a skip term; a direction read at the last position ([SEP], given as -1) and
    one on the pooled embedding, with labels; equal weights."""
    t = mc.fitted(cross_layer=False, skip=False, m=minilm_hf)
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(D, generator=g), torch.randn(D, generator=g)
    graph = attribute(
        minilm_hf,
        mc.as_per_layer(t),
        "A dog ran far.",
        target=[Direction(v1, -1, "sep probe"), Direction(v2.numpy())],
        batch_size=64,
        progress=False,
    )
    P = len(graph.tokens)
    assert graph.info["transcoders"] == "per-layer" and not graph.info["skip"]
    assert graph.target_positions.tolist() == [P - 1, POOLED] and graph.target_ids.tolist() == [0, 1]
    assert graph.target_probabilities.tolist() == [0.5, 0.5] and graph.info["target_strings"] == ["sep probe", "direction 1"]
    torch.testing.assert_close(graph.target_vectors, torch.stack([v1, v2]))
    check_against_reference(minilm_hf, t, graph)

    # pruning and the JSON: the targets are kept, direction targets labelled as such, ids unique
    pruned = prune(graph)
    assert pruned.node_mask[graph.nodes(TARGET)].all() and pruned.node_mask[graph.nodes(TOKEN)].all()
    path = write_graph_files(graph, tmp_path / "out", slug="dog")
    page = json.loads(path.read_text())
    assert page == graph_json(graph, slug="dog")
    ids = [n["node_id"] for n in page["nodes"]]
    assert len(set(ids)) == len(ids)
    targets = [n for n in page["nodes"] if n["feature_type"] == "logit"]
    assert [n["node_id"] for n in targets] == [f"{L + 1}_0_{P - 1}", f"{L + 1}_1_pooled"]
    assert [n["ctx_idx"] for n in targets] == [P - 1, P - 1] and [n["is_target_logit"] for n in targets] == [True, False]
    assert [n["target_position"] for n in targets] == [P - 1, None] and [n["token_prob"] for n in targets] == [0.5, 0.5]
    assert targets[0]["clerp"].startswith('Direction "sep probe" at "[SEP]"') and "pooled" in targets[1]["clerp"]
    assert page["metadata"]["target_kind"] == "direction" and page["metadata"]["prompt_tokens"][0] == "[CLS]"
    assert all(0 <= n["ctx_idx"] < P for n in page["nodes"])
    assert {link["target"] for link in page["links"]} & {n["node_id"] for n in targets} == {n["node_id"] for n in targets}


@pytest.mark.parametrize(
    "target, match",
    [
        (Direction(torch.ones(D + 1)), rf"target direction 0 has shape \({D + 1},\); expected \({D},\), the model's d_model"),
        ([Direction(torch.ones(D)), Direction(torch.ones(D), 8)], r"target direction 1 reads position 8, outside the 8-token"),
        (Direction(torch.ones(D), -9), r"reads position -9, outside the 8-token prompt: expected an int in \[-8, 8\)"),
        (Direction(torch.zeros(D)), r"target direction 0 is zero or not finite"),
        ([101, 102], r"an encoder's targets are Direction\(vector, position=None\|int\).*not token ids or strings; got \[101"),
        ("cat", r"an encoder's targets are Direction"),
    ],
)
def test_bad_encoder_targets(minilm_clt_graph, target, match):
    model, clt, _ = minilm_clt_graph
    with pytest.raises(ValueError, match=match):
        attribute(model, clt, "the cat sat on the mat", target=target, progress=False)  # 8 tokens with [CLS], [SEP]


def test_a_direction_target_on_a_causal_lm(tmp_path):
    import tiny_models as tm

    from activations import load_model

    llama = load_model(str(tm.save_llama(tmp_path / "llama", n_layers=2)), backend="hf")
    tcs = [
        tm.our_transcoder(tm.random_transcoder(32, 8, skip=False, jumprelu=False, seed=i), i, mc.MLP_IN, mc.MLP_OUT)
        for i in range(2)
    ]
    with pytest.raises(ValueError, match=r"Direction targets are for encoders: a causal LM's targets are next-token"):
        attribute(llama, tcs, "the cat", target=Direction(torch.ones(32)), progress=False)


def test_trace_cli_on_the_encoder(minilm_clt_graph, tmp_path, capsys, monkeypatch):
    """`python -m sae trace --model minilm --direction FILE --position N --validate 2`, and its early one-line
    errors."""
    import numpy as np

    import activations
    from sae.cli import main

    model, clt, _ = minilm_clt_graph
    real_load = activations.load_model
    monkeypatch.setattr(activations, "load_model", lambda name, **kw: model if name == "minilm" else real_load(name, **kw))
    clt.save(tmp_path / "clt")
    vectors = torch.randn(2, D, generator=torch.Generator().manual_seed(2))
    np.save(tmp_path / "probe.npy", vectors.numpy())
    out = tmp_path / "graph"
    argv = ["trace", "--model", "minilm", "--transcoders", str(tmp_path / "clt"), "--prompt", "a dog ran", "--out", str(out)]
    probe = ["--direction", str(tmp_path / "probe.npy"), "--position", "2", "--max-feature-nodes", "20"]
    assert main([*argv, *probe, "--validate", "2", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    graph = Graph.load(out / "graph.safetensors")
    checked = Validation.of(graph)  # --validate on direction targets: stored in the graph, the figure written
    assert checked.target_kind == "direction" and len(checked.nodes) == 2 and checked.splice_deviation <= 1e-5
    assert summary["validation"]["splice_deviation"] == checked.splice_deviation
    assert Path(summary["validation"]["figure"]).is_file()
    assert graph.n_features == 20 < graph.info["n_active_features"]  # ranked by influence on the two directions
    assert graph.target_positions.tolist() == [2, 2] and graph.info["target_strings"] == ["probe[0]", "probe[1]"]
    assert summary["targets"] == dict(zip(["probe[0]", "probe[1]"], graph.info["target_values"]))
    torch.testing.assert_close(graph.target_vectors, vectors)
    page = json.loads((out / "graph.json").read_text())
    assert [n["node_id"] for n in page["nodes"] if n["feature_type"] == "logit"] == [f"{L + 1}_0_2", f"{L + 1}_1_2"]

    torch.save(torch.zeros(2, 2, 2), tmp_path / "cube.pt")
    np.save(tmp_path / "narrow.npy", np.ones(10, dtype=np.float32))
    (tmp_path / "probe.txt").write_text("1 2 3")
    for extra, message in [
        (["--direction", str(tmp_path / "probe.npy"), "--pooled", "--position", "1"], "--pooled and --position 1 both given"),
        (["--position", "1"], "--position and --pooled say where --direction vectors are read: give --direction FILE too"),
        (["--direction", str(tmp_path / "probe.txt")], "expected a .npy or .pt file"),
        (["--direction", str(tmp_path / "cube.pt")], "holds a tensor of shape (2, 2, 2); expected a vector [d_model]"),
        (["--direction", str(tmp_path / "narrow.npy")], f"target direction 0 has shape (10,); expected ({D},)"),
        (["--target", "cat"], "--target is for causal LMs: 'minilm' is an encoder, whose targets are --direction FILE"),
    ]:
        assert main([*argv, *extra, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
