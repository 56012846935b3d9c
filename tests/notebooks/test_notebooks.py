"""The notebooks: built from their examples/ scripts, committed without outputs, and executable top to bottom."""

import importlib.util
import json
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_OUTPUT_BYTES = 2_000  # a committed notebook carries no (or tiny) outputs


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "notebooks" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_notebook_is_its_script_and_carries_no_outputs():
    build = _builder()
    assert (
        [p.stem for p in NOTEBOOKS]
        == [s.stem for s in build.SCRIPTS]
        == ["01_train", "02_load_pretrained", "03_explore_features", "04_trace_a_circuit"]
    )
    for path, script in zip(NOTEBOOKS, build.SCRIPTS, strict=True):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        want = build.notebook(script)
        assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in want.cells], (
            f"{path.name} differs from {script.name}: run python notebooks/build.py"
        )
        outputs = sum(
            len(nbformat.writes(nbformat.v4.new_notebook(cells=[c]))) - 200
            for c in nb.cells
            if c.cell_type == "code" and c.outputs
        )
        assert outputs <= MAX_OUTPUT_BYTES, f"{path.name} is saved with {outputs} bytes of outputs"


def _execute(path: Path, folder: Path) -> list:
    """Run one notebook in `folder`; its code cells' outputs, after checking that none is an error and that the
    progress bars were widgets, not text frames."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "IProgress not found" not in streams  # the progress bars are widgets, not a warning and text frames
    assert streams.count("\r") < 20, f"{path.name} saved {streams.count(chr(13))} progress-bar frames"
    return outputs


@pytest.mark.slow
def test_notebooks_execute_top_to_bottom(tmp_path):
    """01, 02, 03 in one working folder (02 and 03 read what 01 writes), on the embedded model and corpus."""
    for name in ("01_train", "02_load_pretrained", "03_explore_features"):
        outputs = _execute(ROOT / "notebooks" / f"{name}.ipynb", tmp_path)
        if name == "01_train":  # the curves: interactive, and a static PNG for viewers without plotly
            kinds = [set(o.get("data", {})) for o in outputs if o.output_type == "display_data"]
            assert any("application/vnd.plotly.v1+json" in k for k in kinds) and any("image/png" in k for k in kinds)
        if name == "03_explore_features":
            results = [o for o in outputs if o.output_type == "execute_result"]
            html = [o["data"]["text/html"] for o in results if "text/html" in o.get("data", {})]
            assert len(html) == 3 and all("saek" in h for h in html)
    assert (tmp_path / "runs/notebook/browser/index.html").exists()
    assert (tmp_path / "runs/notebook/feature_stats.safetensors").exists()
    assert (tmp_path / "runs/published/blocks.3.hook_resid_pre/cfg.json").exists()
    shutil.rmtree(tmp_path / "runs/acts", ignore_errors=True)


@pytest.mark.slow
def test_notebook_04_traces_a_circuit(tmp_path):
    """04 on its own (it trains its own CLT): the CLT, the graph's safetensors, its circuit-tracer JSON and the
    offline view, whose printed URL names the graph, and the graph's check by intervention."""
    from sae.circuits import Graph, Validation

    outputs = _execute(ROOT / "notebooks" / "04_trace_a_circuit.ipynb", tmp_path)
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    out = tmp_path / "runs/circuit"
    assert (out / "clt/cfg.json").exists() and (out / "graph.html").exists()
    assert f"{(out / 'graph.html').resolve().as_uri()}#graph=cat" in streams
    graph = Graph.load(out / "graph.safetensors")
    assert graph.n_layers == 6 and graph.n_features > 0 and graph.target_kind == "direction"
    check = Validation.of(graph)  # the check by intervention, saved with the graph
    assert len(check.nodes) == 10 and check.summary()["frozen_relative_deviation"] < 1e-4
    data = json.loads((out / "cat.json").read_text())
    assert data["metadata"]["slug"] == "cat" and data["nodes"] and data["links"]
