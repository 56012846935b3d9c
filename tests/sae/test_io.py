import json

import pytest
import torch

from sae.config import SAEConfig
from sae.init import init_from_sample
from sae.model import SparseAutoencoder


def test_round_trip_is_bit_exact(tiny_sae, tmp_path):
    with torch.no_grad():
        tiny_sae.b_enc.normal_()
        tiny_sae.b_dec.normal_()
    tiny_sae.save(tmp_path)
    loaded = SparseAutoencoder.load(tmp_path)
    assert loaded.cfg == tiny_sae.cfg
    for (name, a), b in zip(tiny_sae.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_saved_dictionary_acts_on_raw_activations(tiny_sae, acts, tmp_path):
    init_from_sample(tiny_sae, acts * 7)
    x = acts[:64] * 7
    tiny_sae.save(tmp_path)
    assert float(tiny_sae.input_scale) != 1.0  # saving folds a copy, not the live model
    loaded = SparseAutoencoder.load(tmp_path)
    torch.testing.assert_close(loaded(x).x_hat, tiny_sae(x).x_hat, rtol=1e-4, atol=1e-4)


def test_cfg_json_has_saelens_keys(tiny_sae, tmp_path):
    tiny_sae.cfg.hook_name = "blocks.3.hook_resid_pre"
    tiny_sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["d_in"] == 32 and cfg["d_sae"] == 128 and cfg["architecture"] == "topk" and cfg["k"] == 4
    assert cfg["hook_name"] == cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_pre"
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True


def test_plain_saelens_folder_loads(tiny_sae, tmp_path):
    tiny_sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["saekit"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = SparseAutoencoder.load(tmp_path)
    assert loaded.cfg.family == "topk" and loaded.cfg.k == 4 and loaded.cfg.n_latents == 128
    assert torch.equal(loaded.W_dec, tiny_sae.W_dec)


def test_missing_weights_file(tiny_sae, tmp_path):
    tiny_sae.save(tmp_path)
    (tmp_path / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors is missing"):
        SparseAutoencoder.load(tmp_path)


def test_truncated_weights_file(tiny_sae, tmp_path):
    tiny_sae.save(tmp_path)
    f = tmp_path / "sae_weights.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SparseAutoencoder.load(tmp_path)


def test_wrong_shape_in_weights_file(tiny_sae, tmp_path):
    tiny_sae.save(tmp_path)
    other = SparseAutoencoder(SAEConfig(d_in=32, n_latents=64, k=4))
    other.save(tmp_path / "o")
    (tmp_path / "sae_weights.safetensors").write_bytes((tmp_path / "o" / "sae_weights.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"tensor W_dec has shape \(64, 32\), expected \(128, 32\)"):
        SparseAutoencoder.load(tmp_path)


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SparseAutoencoder.load("/nonexistent/dictionary")


def test_a_cfg_json_holding_auxk_settings_still_loads(tiny_sae, tmp_path):
    """Files written when SAEConfig held k_aux and aux_coef (now training settings) load as before."""
    tiny_sae.save(tmp_path)
    raw = json.loads((tmp_path / "cfg.json").read_text())
    raw["saekit"].update(k_aux=64, aux_coef=0.125)
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    loaded = SparseAutoencoder.load(tmp_path)
    assert loaded.cfg == tiny_sae.cfg
    assert torch.equal(loaded.W_enc, tiny_sae.W_enc)
