"""python -m sae export: Neuronpedia's export folders and SAEDashboard's batch files from a run's statistics, every
record checked against the layouts of sae/export/schema.py (transcribed from each format's own definitions)."""

import gzip
import json

import pytest
from tiny_lm import HOSTILE, corpus

from sae import SAEConfig, SparseAutoencoder
from sae.analysis.features import STATS_FILE, feature_stats
from sae.cli import main
from sae.export import SCHEMAS, check_record, load_run, write_neuronpedia, write_saedashboard


@pytest.fixture(scope="module")
def run(causal_inspector, tmp_path_factory):
    from datasets import Dataset

    root = tmp_path_factory.mktemp("export-run")
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=40, k=4, hook_name="blocks.1.hook_resid_pre"), seed=0)
    sae.save(root)
    docs = Dataset.from_dict({"text": corpus(60)})
    stats = feature_stats(sae, causal_inspector.model, docs, tokens=512, context_len=32, split="all", top_n=3,
                          quantiles=2, progress=False, out=root / STATS_FILE)  # fmt: skip
    digest = stats.meta["identity"].get("sae_digest")
    lines = [
        {"latent": 3, "explanation": "the word <script>", "judge": "rule", "prompt_version": "v1", "sae_digest": digest,
         "scores": {"detection": {"balanced_accuracy": 0.75}}},
        {"latent": 5, "explanation": "another dictionary's", "judge": "rule", "sae_digest": "elsewhere"},
    ]  # fmt: skip
    (root / "explanations.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def _lines(path):
    return [json.loads(x) for x in gzip.decompress(path.read_bytes()).decode().splitlines()]


def test_neuronpedia_export_fits_its_layout(run, tmp_path):
    data = load_run(run, model_id="tiny-gpt2")
    assert data.layer == 1 and data.logit_effects and set(data.explanations) == {3}
    files = write_neuronpedia(data, tmp_path, "saekit-40", "user-1", batch_size=16, created_at="2026-12-04T00:00:00")
    base = tmp_path / "tiny-gpt2" / "1-saekit-40"
    names = sorted(str(f.relative_to(base)) for f in files)
    assert names == sorted(
        ["model.jsonl", "release.jsonl", "source.jsonl", "sourceset.jsonl", "explanations/batch-0.jsonl.gz"]
        + [f"{d}/batch-{k}.jsonl.gz" for d in ("features", "activations") for k in range(3)]
    )
    for name, kind in (("model", "model"), ("release", "release"), ("source", "source"), ("sourceset", "sourceset")):
        (rec,) = [json.loads(x) for x in (base / f"{name}.jsonl").read_text().splitlines()]
        check_record(f"neuronpedia.{kind}", rec)
    features = [f for k in range(3) for f in _lines(base / f"features/batch-{k}.jsonl.gz")]
    acts = [a for k in range(3) for a in _lines(base / f"activations/batch-{k}.jsonl.gz")]
    assert [f["index"] for f in features] == [str(i) for i in range(40)]
    for f in features:
        check_record("neuronpedia.feature", f)
        assert f["layer"] == "1-saekit-40" and f["modelId"] == "tiny-gpt2" and len(f["pos_str"]) == len(f["pos_values"])
    assert len({a["id"] for a in acts}) == len(acts)
    for a in acts:
        check_record("neuronpedia.activation", a)
        assert a["maxValue"] == max(a["values"]) == a["values"][a["maxValueTokenIndex"]]
        assert len(a["tokens"]) == len(a["values"])
    stats = data.stats
    fired = [i for i in range(40) if stats.latent(i)["top"]]
    assert {a["index"] for a in acts} == {str(i) for i in fired}
    assert any(h in a["tokens"] for a in acts for h in HOSTILE)  # token strings exported verbatim
    (expl,) = _lines(base / "explanations/batch-0.jsonl.gz")
    check_record("neuronpedia.explanation", expl)
    assert expl["index"] == "3" and expl["description"] == "the word <script>" and "detection" in expl["notes"]


def test_saedashboard_export_fits_its_layout(run, tmp_path):
    files = write_saedashboard(load_run(run), tmp_path, "saekit-40", batch_size=32)
    assert [f.name for f in files] == ["batch-0.json", "batch-1.json"]
    batches = [json.loads(f.read_text()) for f in files]
    feats = [f for b in batches for f in b["features"]]
    assert [f["feature_index"] for f in feats] == list(range(40))
    for b in batches:
        check_record("saedashboard.batch", b)
        assert b["layer"] == 1 and b["sae_set"] == "saekit-40"
    for f in feats:
        check_record("saedashboard.feature", f)
        for a in f["activations"]:
            check_record("saedashboard.activation", a)
            assert 0 <= a["qualifying_token_index"] < len(a["tokens"])


def test_schema_check_refuses_what_an_importer_would():
    good = {"bin_min": -1, "bin_max": 2.0, "bin_contains": -1, "tokens": ["a"], "values": [1.0]}
    check_record("saedashboard.activation", good)
    with pytest.raises(ValueError, match="does not define"):
        check_record("saedashboard.activation", {**good, "extra": 1})
    with pytest.raises(ValueError, match="required field 'tokens'"):
        check_record("saedashboard.activation", {k: v for k, v in good.items() if k != "tokens"})
    with pytest.raises(ValueError, match="must be list\\[float\\]"):
        check_record("saedashboard.activation", {**good, "values": ["1"]})
    assert set(SCHEMAS) >= {"neuronpedia.feature", "neuronpedia.activation", "neuronpedia.explanation"}


def test_export_command_line(run, capsys):
    assert main(["export", str(run), "--format", "saedashboard"]) == 0
    out = capsys.readouterr().out
    assert "saedashboard export: 1 files under" in out and "not represented:" in out and "Jaccard" in out
    assert (run / "export-saedashboard" / "batch-0.json").exists()
    assert main(["export", str(run), "--format", "neuronpedia", "--model-id", "tiny", "--layer", "7"]) == 0
    assert (run / "export-neuronpedia" / "tiny" / "7-saekit-40" / "features" / "batch-0.jsonl.gz").exists()
    assert main(["export", str(run), "--format", "csv"]) == 2
    assert "--format must be one of" in capsys.readouterr().err
    assert main(["export", str(run / "nowhere"), "--format", "neuronpedia"]) == 2
    assert "python -m sae dashboard" in capsys.readouterr().err
