"""Our layout holds transcoders and CLTs: saved with both scales folded, they give the raw predictions they gave
before saving; bad files are refused with one line naming the value."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae.config import SAEConfig
from sae.formats.saelens import CFG_FILE, WEIGHTS_FILE
from sae.model import SparseAutoencoder
from sae.pretrained import load_pretrained

from .synthetic import D_IN, D_OUT, N, clt, transcoder
from .test_model import randomise


@pytest.mark.parametrize(
    "make",
    [
        lambda: transcoder(),
        lambda: transcoder(skip=True),
        lambda: transcoder(skip=True, family="jumprelu", k=None),
        lambda: clt(skip=True),
        lambda: clt(family="jumprelu", k=None),
    ],
    ids=["transcoder", "skip-transcoder", "skip-jumprelu", "clt-skip", "clt-jumprelu"],
)
def test_save_and_load_give_the_same_raw_predictions(tmp_path, make):
    sae = randomise(make()).eval()
    layers = [sae.cfg.layers] if sae.cfg.is_clt else []
    x = torch.randn(32, *layers, D_IN, generator=torch.Generator().manual_seed(2))
    before = sae.predict(x)
    sae.save(tmp_path / "tc")
    assert float(sae.target_scale.reshape(-1)[0]) != 1.0  # saving folds a copy, not the live model
    loaded = SparseAutoencoder.load(tmp_path / "tc").eval()
    assert loaded.cfg == sae.cfg
    torch.testing.assert_close(loaded.predict(x), before, rtol=1e-5, atol=1e-5)
    again = load_pretrained(tmp_path / "tc").eval()  # detection reads it as ours too
    torch.testing.assert_close(again.predict(x), before, rtol=1e-5, atol=1e-5)
    saved = json.loads((tmp_path / "tc" / CFG_FILE).read_text())
    assert saved["d_out"] == D_OUT and saved["saekit"]["layers"] == sae.cfg.layers
    assert saved["apply_b_dec_to_input"] is False


def test_an_old_saes_folder_loads_unchanged(tmp_path):
    """A cfg.json written before transcoders (no d_out, skip, layers keys) is an SAE."""
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_latents=N, k=4), seed=0)
    sae.save(tmp_path / "old")
    cfg_path = tmp_path / "old" / CFG_FILE
    raw = json.loads(cfg_path.read_text())
    for key in ("d_out", "target_hook", "skip", "layers", "first_layer"):
        del raw["saekit"][key]
    cfg_path.write_text(json.dumps(raw))
    loaded = SparseAutoencoder.load(tmp_path / "old")
    assert not loaded.cfg.is_transcoder and loaded.cfg == sae.cfg
    x = torch.randn(8, D_IN)
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat)


def _edit_weights(folder, edit):
    path = folder / WEIGHTS_FILE
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_a_w_skip_of_the_wrong_shape_is_refused(tmp_path):
    transcoder(skip=True).save(tmp_path / "tc")
    _edit_weights(tmp_path / "tc", lambda t: t.update(W_skip=torch.zeros(D_IN, D_OUT)))
    with pytest.raises(ValueError, match=r"tensor W_skip has shape \(16, 12\), expected \(12, 16\) \(\[d_out=12, d_in=16\]\)"):
        SparseAutoencoder.load(tmp_path / "tc")
    with pytest.raises(ValueError, match=r"tensor W_skip has shape \(16, 12\), expected \(12, 16\) \(\[d_out=12, d_in=16\]\)"):
        SparseAutoencoder.from_tensors(
            transcoder(skip=True).cfg, {**transcoder(skip=True).file_tensors(), "W_skip": torch.zeros(16, 12)}, "mem"
        )


def test_d_out_that_does_not_match_the_saved_tensors_is_refused(tmp_path):
    transcoder().save(tmp_path / "tc")
    cfg_path = tmp_path / "tc" / CFG_FILE
    raw = json.loads(cfg_path.read_text())
    raw["saekit"]["d_out"] = 10
    cfg_path.write_text(json.dumps(raw))
    want = r"W_dec has shape \(64, 12\), expected \(64, 10\) \(the file's decoder writes 12 dimensions, the config's d_out=10\)"
    with pytest.raises(ValueError, match=want):
        SparseAutoencoder.load(tmp_path / "tc")


def test_a_clt_file_set_with_a_missing_layer_is_refused(tmp_path):
    clt(layers=4).save(tmp_path / "clt")
    _edit_weights(tmp_path / "clt", lambda t: t.pop("W_dec_2"))
    with pytest.raises(ValueError, match=r"lacks tensors \['W_dec_2'\] \(the decoders of layers \[2\] of its 4\)"):
        SparseAutoencoder.load(tmp_path / "clt")


def test_saelens_strict_refuses_transcoders(tmp_path):
    with pytest.raises(ValueError, match="this dictionary is a transcoder: save it with format='saelens'"):
        transcoder().save(tmp_path / "s", format="saelens-strict")
    with pytest.raises(ValueError, match="this dictionary is a CLT"):
        clt().save(tmp_path / "c", format="saelens-strict")
