"""python -m sae dashboard: statistics file and browser from a saved dictionary; bad --out refused first."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "analysis"))  # tiny_lm.py

from tiny_lm import corpus, tiny_lm  # noqa: E402

from sae import SAEConfig, SparseAutoencoder  # noqa: E402
from sae.analysis.features import FeatureStats  # noqa: E402
from sae.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    lm = tiny_lm()
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    (root / "docs.txt").write_text("\n".join(corpus(200)))
    sae = SparseAutoencoder(
        SAEConfig(d_in=32, n_latents=96, k=4, hook_name="blocks.1.hook_resid_pre", model_name=str(root / "model")), seed=0
    )
    sae.save(root / "sae")
    return root


def test_dashboard_writes_stats_and_browser(saved, capsys):
    argv = [
        "dashboard",
        str(saved / "sae"),
        "--out",
        str(saved / "browser"),
        "--tokens",
        "512",
        "--dataset",
        str(saved / "docs.txt"),
        "--context-len",
        "32",
        "--top-n",
        "3",
        "--quantiles",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"feature browser: {(saved / 'browser' / 'index.html').resolve()}" in out
    stats = FeatureStats.load(saved / "sae")
    assert stats.n_latents == 96 and stats.meta["tokens"] >= 512
    assert len(list((saved / "browser" / "data").glob("shard_*.js"))) == 1
    with pytest.warns(UserWarning, match=r"'test' split .* ran out after \d+ tokens \(asked for 512\)"):
        assert main(argv + ["--split", "test"]) == 0  # every 20th line is held out: too few for 512 tokens


def test_dashboard_refuses_a_file_as_out(saved, capsys):
    (saved / "afile").write_text("x")
    assert main(["dashboard", str(saved / "sae"), "--out", str(saved / "afile")]) == 2
    assert "is a file; the browser needs a folder" in capsys.readouterr().err


def test_dashboard_reads_a_text_column_of_local_files_and_a_hub_dataset_config(saved, monkeypatch, capsys):
    """The dashboard takes the text options `train` and `eval` take: --text-column, --dataset-config."""
    import json

    import datasets

    body = saved / "body.jsonl"
    body.write_text("\n".join(json.dumps({"body": t}) for t in corpus(200)) + "\n")
    common = ["--tokens", "256", "--context-len", "32", "--top-n", "2", "--quantiles", "2"]
    argv = ["dashboard", str(saved / "sae"), "--out", str(saved / "browser-body"), *common]
    assert main([*argv, "--dataset", str(body)]) == 2  # no 'text' column
    assert "text column 'text' not in" in capsys.readouterr().err
    assert main([*argv, "--dataset", str(body), "--text-column", "body"]) == 0
    assert FeatureStats.load(saved / "sae").meta["tokens"] >= 256

    asked = []

    def hub(path, name=None, split=None, streaming=False, **kw):
        asked.append((path, name, split))
        if name != "tiny-config":
            raise ValueError(f"Config name is missing: pick one of ['tiny-config'], got {name!r}")
        return datasets.Dataset.from_dict({"body": corpus(200, seed=1)})

    monkeypatch.setattr(datasets, "load_dataset", hub)
    argv = [
        "dashboard",
        str(saved / "sae"),
        "--out",
        str(saved / "browser-hub"),
        *common,
        "--dataset",
        "someone/tiny-corpus",
        "--text-column",
        "body",
    ]
    assert main(argv) == 2 and "Config name is missing" in capsys.readouterr().err
    assert main([*argv, "--dataset-config", "tiny-config"]) == 0
    assert asked[-1] == ("someone/tiny-corpus", "tiny-config", "train")
    stats = FeatureStats.load(saved / "sae")
    assert stats.meta["identity"]["dataset"] == "hub:someone/tiny-corpus:tiny-config:train"


def test_dashboard_checks_where_it_writes_before_loading_and_takes_stats_elsewhere(saved, capsys, tmp_path):
    unwritable = "/proc/saekit-stats/feature_stats.safetensors"  # no one, root included, creates a folder in /proc
    assert main(["dashboard", str(saved / "sae"), "--stats", unwritable, "--model", "no/such-model"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the statistics into /proc/saekit-stats" in err and "pass --stats" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # refused before the model (absent) loads

    import shutil

    shutil.copytree(saved / "sae", tmp_path / "dictionary")
    before = sorted(p.name for p in (tmp_path / "dictionary").iterdir())
    stats_file = tmp_path / "elsewhere" / "stats.safetensors"
    argv = ["dashboard", str(tmp_path / "dictionary"), "--out", str(tmp_path / "browser"), "--stats", str(stats_file)]
    argv += ["--tokens", "256", "--dataset", str(saved / "docs.txt"), "--context-len", "32", "--top-n", "2", "--quantiles", "2"]
    assert main(argv) == 0
    assert FeatureStats.load(stats_file).n_latents == 96
    assert sorted(p.name for p in (tmp_path / "dictionary").iterdir()) == before  # nothing written beside the dictionary
