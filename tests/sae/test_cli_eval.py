"""python -m sae eval: defaults to what the run recorded (model, hook, held-out tokens), refuses disagreement."""

import json
import warnings

import pytest

from sae.cli import main
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def run_dir(tiny_gpt2_path, tmp_path_factory):
    """A finished tiny run on the tiny GPT-2 and a local corpus whose test split is far below 65,536 tokens."""
    import pydoc_data.topics as topics

    tmp = tmp_path_factory.mktemp("run")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in list(topics.topics.values())[:200]) + "\n")
    out = tmp / "run"
    argv = [
        "train",
        "--model",
        tiny_gpt2_path,
        "--hook",
        HOOK,
        "--dataset",
        str(corpus),
        "--context-len",
        "32",
        "--tokens",
        "4096",
        "--batch-size",
        "1024",
        "--n-latents",
        "128",
        "--k",
        "4",
        "--eval-tokens",
        "200",
        "--pca-tokens",
        "1024",
        "--harvest-tokens",
        "4096",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


def test_eval_defaults_to_the_recorded_settings_and_reproduces_metrics_json(run_dir, capsys):
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["eval_settings"]["eval_tokens"] == 200 and trained["eval_tokens"] == 200
    assert {"ce_loss_clean", "ce_loss_spliced", "loss_recovered_zero", "kl_div_spliced"} <= set(trained)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "ran out after N tokens": the recorded 200 tokens exist
        assert main(["eval", str(run_dir), "--no-probe"]) == 0
    printed = json.loads(capsys.readouterr().out)
    again = json.loads((run_dir / "metrics.json").read_text())
    assert printed["fvu"] == trained["fvu"] and again["fvu"] == trained["fvu"]
    assert again["ce_loss_spliced"] == pytest.approx(trained["ce_loss_spliced"], rel=1e-6)
    assert again["train_tokens"] == trained["train_tokens"]  # training figures are kept
    assert (run_dir / "eval" / "latents.safetensors").exists()


def test_a_disagreeing_model_or_hook_is_refused_unless_forced(run_dir, capsys):
    assert main(["eval", str(run_dir), "--hook", "blocks.0.hook_resid_pre"]) == 2
    err = capsys.readouterr().err
    assert "--hook 'blocks.0.hook_resid_pre' disagrees with the dictionary's recorded hook 'blocks.1.hook_resid_pre'" in err
    assert "--force" in err
    assert (
        main(
            [
                "eval",
                str(run_dir),
                "--hook",
                "blocks.0.hook_resid_pre",
                "--force",
                "--no-splice",
                "--no-probe",
                "--eval-tokens",
                "128",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["eval_hook"] == "blocks.0.hook_resid_pre"


def test_a_disagreeing_model_is_refused_before_loading_it(tmp_path, capsys):
    SparseAutoencoder(SAEConfig(d_in=384, n_latents=64, k=4, hook_name="blocks.3.hook_resid_pre", model_name="minilm")).save(
        tmp_path
    )
    assert main(["eval", str(tmp_path), "--model", "no-such/model"]) == 2
    assert "--model 'no-such/model' disagrees with the dictionary's recorded model 'minilm'" in capsys.readouterr().err


def test_eval_reads_any_layout_load_pretrained_reads(run_dir, tmp_path, capsys):
    """A sparsify folder (no d_sae in its cfg.json) and a folder of several such dictionaries, picked by --hook."""
    sae = SparseAutoencoder.load(run_dir)
    repo = tmp_path / "repo"
    sae.save(repo / HOOK, format="sparsify")  # sparsify names its folders after the hook points
    sae.save(repo / "blocks.0.hook_resid_pre", format="sparsify")
    args = ["--no-splice", "--no-probe", "--eval-tokens", "128", "--context-len", "32", "--hook", HOOK, "--force"]
    for target in (repo / HOOK, repo):
        assert main(["eval", str(target), *args, "--model", sae.cfg.model_name]) == 0, capsys.readouterr().err
        printed = json.loads(capsys.readouterr().out)
        assert printed["eval_hook"] == HOOK and 0 < printed["fvu"] < 1.5
    assert (repo / HOOK / "metrics.json").exists()
    assert main(["eval", str(repo), "--no-probe"]) == 2
    assert "holds several dictionaries" in capsys.readouterr().err
