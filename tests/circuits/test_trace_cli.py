"""`python -m sae trace`: a saved model and a folder of per-layer transcoders in, the matrix and the JSON out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402

pytestmark = pytest.mark.slow


def test_trace_writes_the_matrix_and_the_json(tmp_path, capsys):
    from sae.circuits import Graph
    from sae.cli import main

    model, folder = tm.save_trace_inputs(tmp_path)
    out = tmp_path / "graph"
    argv = ["trace", "--model", str(model), "--transcoders", str(folder), "--prompt", "the cat sat", "--out", str(out)]
    assert main([*argv, "--target", "cat,4", "--slug", "cats", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    graph = Graph.load(out / "graph.safetensors")
    assert summary["nodes"] == graph.n_nodes and graph.target_ids.tolist() == [tm.tokenizer()("cat").input_ids[0], 4]
    page = json.loads((out / "cats.json").read_text())
    assert page["metadata"]["slug"] == "cats" and page["metadata"]["prompt_tokens"][0] == "<bos>"
    assert {n["feature_type"] for n in page["nodes"]} >= {"embedding", "logit"}
    ids = [n["node_id"] for n in page["nodes"]]
    assert len(set(ids)) == len(ids)
    assert json.loads((out / "graph-metadata.json").read_text())["graphs"][0]["slug"] == "cats"

    assert main([*argv, "--target", "999"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err

    clt = tm.random_clt(2, 32, 16, jumprelu=True, seed=3, skip=True)
    tm.our_clt(clt, "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out").save(tmp_path / "clt")
    argv[argv.index("--transcoders") + 1] = str(tmp_path / "clt")
    assert main([*argv, "--max-feature-nodes", "5", "--no-progress"]) == 0
    capsys.readouterr()
    graph = Graph.load(out / "graph.safetensors")
    assert graph.n_features == 5 < len(graph.active_features) and graph.info["transcoders"] == "clt"
