"""The command line end to end on a tiny GPT-2: a skip transcoder (--target-hook --skip) and a CLT (--clt --layers)
trained through the one trainer, recorded in run.json, resumed, refused where their hooks cannot pair, then
evaluated (`python -m sae eval`) and browsed (`python -m sae dashboard`)."""

import json

import pytest

from sae.cli import main
from sae.model import SparseAutoencoder

SMALL = ["--tokens", "2048", "--batch-size", "512", "--n-latents", "64", "--k", "4", "--context-len", "32"]
HELD_OUT = ["--eval-tokens", "256", "--pca-tokens", "1024"]


def _metrics(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
def test_train_eval_and_browse_a_transcoder_and_a_clt(tiny_gpt2_path, tmp_path, capsys):
    model = ["--model", tiny_gpt2_path]
    tc_argv = ["train", *model, "--hook", "blocks.1.hook_mlp_in", "--target-hook", "blocks.1.hook_mlp_out", "--skip"]
    tc_dir, clt_dir = tmp_path / "tc", tmp_path / "clt"
    assert main([*tc_argv, *SMALL, *HELD_OUT, "--out", str(tc_dir)]) == 0
    tc = SparseAutoencoder.load(tc_dir)
    assert (tc.cfg.hook_name, tc.cfg.target_hook, tc.cfg.d_out, tc.cfg.skip) == (
        "blocks.1.hook_mlp_in",
        "blocks.1.hook_mlp_out",
        64,
        True,
    )
    identity = json.loads((tc_dir / "run.json").read_text())
    assert identity["data"]["target_hooks"] == ["blocks.1.hook_mlp_out"] and identity["data"]["clt"] is False
    m = _metrics(tc_dir)
    assert m["eval_target_hook"] == "blocks.1.hook_mlp_out" and m["pca_of"] == "target" and 0 < m["l0"] <= 4
    assert m["ce_loss_spliced_with_error"] == pytest.approx(m["ce_loss_clean"], abs=1e-6)
    assert {"fvu", "dead_latents", "dense_latents", "loss_recovered_zero", "kl_div_score"} <= set(m)

    assert main([*tc_argv, *SMALL, *HELD_OUT, "--out", str(tc_dir), "--resume"]) == 0  # finished: no steps
    other = [*tc_argv[:-2], "blocks.0.hook_mlp_out", "--skip"]
    assert main([*other, *SMALL, *HELD_OUT, "--out", str(tc_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "data target_hooks: run ['blocks.1.hook_mlp_out'], this run ['blocks.0.hook_mlp_out']" in err
    backwards = ["train", *model, "--hook", "blocks.1.hook_mlp_in", "--target-hook", "blocks.0.hook_mlp_out"]
    assert main([*backwards, *SMALL, "--out", str(tmp_path / "bad")]) == 2
    assert "target hook 'blocks.0.hook_mlp_out' runs before its input hook 'blocks.1.hook_mlp_in'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

    assert main(["train", *model, "--clt", "--layers", "0-1", *SMALL, *HELD_OUT, "--out", str(clt_dir)]) == 0
    clt = SparseAutoencoder.load(clt_dir)
    assert (clt.cfg.layers, clt.cfg.hook_name, clt.cfg.target_hook) == (2, "blocks.{}.hook_mlp_in", "blocks.{}.hook_mlp_out")
    assert json.loads((clt_dir / "run.json").read_text())["data"]["clt"] is True
    c = _metrics(clt_dir)
    assert len(c["fvu_per_layer"]) == 2 and c["spliced_hooks"] == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    capsys.readouterr()

    for folder in (tc_dir, clt_dir):
        trained = _metrics(folder)
        assert main(["eval", str(folder), "--no-probe"]) == 0  # the recorded hooks and held-out tokens
        again = _metrics(folder)
        assert again["fvu"] == trained["fvu"] and again["l0"] == trained["l0"]
        assert again["ce_loss_spliced"] == pytest.approx(trained["ce_loss_spliced"], rel=1e-6)
        assert main(["dashboard", str(folder), "--tokens", "512", "--context-len", "32"]) == 0
        assert (folder / "browser" / "index.html").exists()
    capsys.readouterr()
