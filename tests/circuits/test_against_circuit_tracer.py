"""Our attribution graphs equal circuit-tracer 0.5.0's on the same models, transcoders and prompts.

circuit-tracer runs in its own interpreter (`.venv-circuit`, or SAEKIT_CIRCUIT_PYTHON) on a tiny Llama-style model
(its nnsight backend, which loads the saved folder) and a tiny GPT-2 (its transformer-lens backend, built from
the same saved weights), with per-layer transcoders (ReLU, JumpReLU and TopK, with and without skip) and CLTs
(with and without skip) written in the files it loads; we run on the same folders with our dictionaries made
from the same tensors. Graphs match when their nodes match by (kind, layer, position, index) and the matrices
agree within 1e-5 of the largest entry; the pruned nodes and edges and the JSON match too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_LAYERS, D_MODEL, N_FEATURES = 3, 32, 32
PROMPT = "the cat sat on the mat"
MLP_IN, MLP_OUT, RESID_MID = "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out", "blocks.{}.hook_mlp_in"

pytestmark = pytest.mark.slow


def circuit_python() -> Path | None:
    env = os.environ.get("SAEKIT_CIRCUIT_PYTHON")
    path = Path(env) if env else REPO / ".venv-circuit" / "bin" / "python"
    return path if path.exists() else None


# name: (model, kind, relu/jumprelu, skip, our input template, circuit-tracer's input hook, options)
CASES = {
    "llama-relu": ("llama", "plt", False, False, MLP_IN, "mlp.hook_in", {}),
    "llama-relu-skip": ("llama", "plt", False, True, MLP_IN, "mlp.hook_in", {"desired_logit_prob": 0.5}),
    "llama-jumprelu": ("llama", "plt", True, False, MLP_IN, "mlp.hook_in", {"targets": [4, 7, 12], "batch_size": 16}),
    "llama-jumprelu-skip": ("llama", "plt", True, True, MLP_IN, "mlp.hook_in", {}),
    "llama-topk": ("llama", "plt", False, False, MLP_IN, "mlp.hook_in", {"topk": 4}),
    "llama-relu-capped": ("llama", "plt", False, True, MLP_IN, "mlp.hook_in", {"max_feature_nodes": 40, "batch_size": 8}),
    "gpt2-relu": ("gpt2", "plt", False, False, MLP_IN, "mlp.hook_in", {}),
    "gpt2-jumprelu-skip": ("gpt2", "plt", True, True, MLP_IN, "mlp.hook_in", {"batch_size": 32}),
    "llama-clt-relu": ("llama", "clt", False, False, RESID_MID, "hook_resid_mid", {}),
    "llama-clt-jumprelu": ("llama", "clt", True, False, MLP_IN, "mlp.hook_in", {"batch_size": 24}),
    "llama-clt-skip": ("llama", "clt", False, True, RESID_MID, "hook_resid_mid", {}),
}


def _tensors(name: str):
    _, kind, jump, skip, *_ = CASES[name]
    seed = sum(map(ord, name))
    if kind == "clt":
        return tm.random_clt(N_LAYERS, D_MODEL, N_FEATURES, jumprelu=jump, seed=seed, skip=skip)
    return [tm.random_transcoder(D_MODEL, N_FEATURES, skip=skip, jumprelu=jump, seed=seed + i) for i in range(N_LAYERS)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """circuit-tracer's graph of every case, from one subprocess."""
    python = circuit_python()
    if python is None:
        pytest.skip("no circuit-tracer environment: `make test` builds .venv-circuit, or set SAEKIT_CIRCUIT_PYTHON")
    root = tmp_path_factory.mktemp("circuits")
    models = {"llama": tm.save_llama(root / "llama", N_LAYERS, D_MODEL), "gpt2": tm.save_gpt2(root / "gpt2", N_LAYERS, D_MODEL)}
    tokens = [1, *tm.tokenizer()(PROMPT, add_special_tokens=False).input_ids]
    jobs = []
    for name, (model, kind, _, _, _, ct_hook, opts) in CASES.items():
        folder = root / name
        t = _tensors(name)
        tm.save_circuit_tracer_clt(folder, t) if kind == "clt" else tm.save_circuit_tracer_plt(folder, t)
        jobs.append(
            {
                "model": str(models[model]),
                "backend": "nnsight" if model == "llama" else "transformerlens",
                "kind": kind,
                "transcoders": str(folder),
                "n_layers": N_LAYERS,
                "input_hook": ct_hook,
                "output_hook": "hook_mlp_out",
                "tokens": tokens,
                "max_n_logits": 10,
                "desired_logit_prob": opts.get("desired_logit_prob", 0.95),
                "batch_size": opts.get("batch_size", 64),
                "max_feature_nodes": opts.get("max_feature_nodes"),
                "targets": opts.get("targets"),
                "topk": opts.get("topk"),
                "out": str(root / f"{name}.safetensors"),
                "slug": name,
                "json_dir": str(root / "json"),
            }
        )
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), str(Path(__file__).parent / "ct_reference.py"), str(root / "jobs.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return root, models


def _ours(name: str, models):
    from activations import load_model
    from sae.circuits import attribute

    model, kind, *_, template, _, opts = CASES[name]
    t = _tensors(name)
    if kind == "clt":
        transcoders = tm.our_clt(t, template, MLP_OUT)
    else:
        transcoders = [
            tm.our_transcoder(t[layer], layer, template, MLP_OUT, topk=opts.get("topk")) for layer in reversed(range(N_LAYERS))
        ]
    return attribute(
        load_model(str(models[model]), backend="hf"),
        transcoders,
        PROMPT,
        opts.get("targets"),
        desired_logit_prob=opts.get("desired_logit_prob", 0.95),
        batch_size=opts.get("batch_size", 64),
        max_feature_nodes=opts.get("max_feature_nodes"),
        progress=False,
    )


def _reference_keys(ref: dict[str, torch.Tensor]) -> list[tuple[int, int, int, int]]:
    """(kind, layer, position, index) of circuit-tracer's nodes, in its matrix order."""
    P = len(ref["input_tokens"])
    features = ref["active_features"][ref["selected_features"]].tolist()
    return (
        [(0, *f) for f in features]
        + [(1, layer, p, -1) for layer in range(N_LAYERS) for p in range(P)]
        + [(2, -1, p, t) for p, t in enumerate(ref["input_tokens"].tolist())]
        + [(3, N_LAYERS, P - 1, t) for t in ref["logit_ids"].tolist()]
    )


@pytest.mark.parametrize("name", list(CASES))
def test_graph_equals_circuit_tracer(reference, name):
    root, models = reference
    ref = load_file(str(root / f"{name}.safetensors"))
    graph = _ours(name, models)
    assert graph.tokens.tolist() == ref["input_tokens"].tolist()
    assert graph.target_ids.tolist() == ref["logit_ids"].tolist()
    torch.testing.assert_close(graph.target_probabilities, ref["logit_probabilities"], atol=1e-5, rtol=0)
    assert graph.active_features.tolist() == ref["active_features"].tolist()
    torch.testing.assert_close(graph.active_values, ref["activation_values"], atol=1e-5, rtol=1e-5)
    keys = _reference_keys(ref)
    ours = {k: i for i, k in enumerate(graph.keys())}
    assert len(ours) == graph.n_nodes and sorted(ours) == sorted(keys)
    order = torch.tensor([ours[k] for k in keys])
    A, B = ref["adjacency_matrix"], graph.adjacency_matrix[order][:, order]
    scale = float(A.abs().max())
    assert scale > 0
    assert float((A - B).abs().max()) <= 1e-5 * scale, (
        f"{name}: differs by {float((A - B).abs().max()) / scale:.2e} of the largest entry"
    )


def _their_naming(node: dict) -> dict:
    """Our node as circuit-tracer names it: its error ids are `0_{layer}_{pos}` (which can collide with a layer-0
    feature: ours are `err_{layer}_{pos}`), its error jsNodeIds `{layer}_{pos}-0`."""
    if node["feature_type"] != "mlp reconstruction error":
        return node
    layer, pos = node["layer"], node["ctx_idx"]
    return {**node, "node_id": f"0_{layer}_{pos}", "jsNodeId": f"{layer}_{pos}-0"}


def _same_nodes(ours: list[dict], theirs: list[dict]) -> None:
    """The same nodes, field by field (floats within 1e-5), whatever their order."""

    def key(node: dict) -> tuple:
        return tuple((k, v) for k, v in node.items() if not isinstance(v, float))

    ours, theirs = sorted(ours, key=key), sorted(theirs, key=key)
    assert [key(n) for n in ours] == [key(n) for n in theirs]
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for k, v in b.items():
            if isinstance(v, float):
                assert a[k] == pytest.approx(v, abs=1e-5), (b["node_id"], k)


@pytest.mark.parametrize("name", ["llama-relu-skip", "gpt2-jumprelu-skip", "llama-clt-relu"])
def test_pruned_graph_and_json_equal_circuit_tracer(reference, name, tmp_path):
    from sae.circuits.export import write_graph_files
    from sae.circuits.prune import prune

    root, models = reference
    ref = load_file(str(root / f"{name}.safetensors"))
    graph = _ours(name, models)
    order = torch.tensor([{k: i for i, k in enumerate(graph.keys())}[k] for k in _reference_keys(ref)])
    pruned = prune(graph, 0.8, 0.98)
    assert pruned.node_mask[order].tolist() == ref["node_mask"].bool().tolist()
    assert torch.equal(pruned.edge_mask[order][:, order], ref["edge_mask"].bool())
    torch.testing.assert_close(pruned.cumulative_scores[order], ref["cumulative_scores"], atol=1e-5, rtol=0)

    theirs = json.loads((root / "json" / f"{name}.json").read_text())
    ours = json.loads(write_graph_files(graph, tmp_path, slug=name, scan="test").read_text())
    assert ours["metadata"] == theirs["metadata"] and ours["qParams"] == theirs["qParams"]
    assert len({n["node_id"] for n in ours["nodes"]}) == len(ours["nodes"])  # our ids never collide
    _same_nodes([_their_naming(n) for n in ours["nodes"]], theirs["nodes"])
    renamed = {n["node_id"]: _their_naming(n)["node_id"] for n in ours["nodes"]}
    scale = float(ref["adjacency_matrix"].abs().max())
    mine = sorted((renamed[e["source"]], renamed[e["target"]], e["weight"]) for e in ours["links"])
    other = sorted((e["source"], e["target"], e["weight"]) for e in theirs["links"])
    assert [m[:2] for m in mine] == [o[:2] for o in other]
    assert max(abs(m[2] - o[2]) for m, o in zip(mine, other)) <= 1e-5 * scale
    listing = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert listing == {"graphs": [ours["metadata"]]}
