"""Bad input gets a clear error before expensive work: pickles, absurd sizes, NaN/inf, unknown layouts."""

import json
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sae import SAEConfig, SparseAutoencoder, load_pretrained


class Planted:
    """Unpickling this runs os.system: a loader that executes pickles would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["openai", "dictionary_learning"])
def test_malicious_pickle_runs_nothing(tmp_path, layout):
    marker = tmp_path / "MARKER"
    if layout == "openai":
        target = tmp_path / "sae.pt"
        torch.save({"encoder.weight": torch.zeros(4, 2), "payload": Planted(marker)}, target)
    else:
        target = tmp_path / "dl"
        target.mkdir()
        torch.save({"encoder.weight": torch.zeros(4, 2), "payload": Planted(marker)}, target / "ae.pt")
        (target / "config.json").write_text(
            json.dumps({"trainer": {"dict_class": "AutoEncoder", "activation_dim": 2, "dict_size": 4}})
        )
    with pytest.raises(ValueError, match="weights_only=True"):
        load_pretrained(target)
    assert not marker.exists()


@pytest.mark.parametrize(
    "cfg",
    [
        {"d_in": 768, "d_sae": 10**12, "architecture": "standard"},
        {"d_in": 768, "d_sae": -5, "architecture": "standard"},
        {"d_in": "768", "d_sae": 24576, "architecture": "standard"},
    ],
)
def test_absurd_sizes_refused_before_allocation(tmp_path, cfg):
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "metadata": {"sae_lens_version": "6.0.0"}}))
    save_file({"W_enc": torch.zeros(1)}, tmp_path / "sae_weights.safetensors")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="d_sae|d_in"):
        load_pretrained(tmp_path)
    assert time.perf_counter() - t0 < 5  # refused, not allocated (10^12 x 768 floats would not fit in memory)


def test_absurd_size_in_our_own_cfg_refused(tmp_path):
    SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2)).save(tmp_path)
    raw = json.loads((tmp_path / "cfg.json").read_text())
    raw["saekit"]["n_latents"] = 10**12
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="over the limit"):
        SparseAutoencoder.load(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_refused_with_tensor_name(tmp_path, bad):
    SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2), seed=0).save(tmp_path)
    t = load_file(tmp_path / "sae_weights.safetensors")
    t["b_dec"][3] = bad
    save_file(t, tmp_path / "sae_weights.safetensors")
    with pytest.raises(ValueError, match="tensor 'b_dec' holds 1 NaN or inf"):
        SparseAutoencoder.load(tmp_path)
    with pytest.raises(ValueError, match="tensor 'b_dec'"):
        load_pretrained(tmp_path)


def test_non_finite_weights_refused_in_other_layouts(tmp_path):
    p = {
        "W_enc": np.zeros((4, 8), np.float32),
        "W_dec": np.zeros((8, 4), np.float32),
        "b_enc": np.zeros(8, np.float32),
        "b_dec": np.zeros(4, np.float32),
        "threshold": np.full(8, np.nan, np.float32),
    }
    np.savez(tmp_path / "params.npz", **p)
    with pytest.raises(ValueError, match="tensor 'threshold' holds 8 NaN or inf"):
        load_pretrained(tmp_path / "params.npz")
    folder = tmp_path / "layers.0"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"k": 2, "num_latents": 8, "d_in": 4}))
    save_file(
        {
            "encoder.weight": torch.full((8, 4), float("inf")),
            "encoder.bias": torch.zeros(8),
            "W_dec": torch.zeros(8, 4),
            "b_dec": torch.zeros(4),
        },
        folder / "sae.safetensors",
    )
    with pytest.raises(ValueError, match="tensor 'W_enc' holds 32 NaN or inf"):
        load_pretrained(folder)


def test_wrong_tensor_shape_refused_from_the_header(tmp_path):
    SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2), seed=0).save(tmp_path)
    t = load_file(tmp_path / "sae_weights.safetensors")
    t["W_dec"] = torch.zeros(16, 9)
    save_file(t, tmp_path / "sae_weights.safetensors")
    with pytest.raises(ValueError, match=r"tensor W_dec has shape \(16, 9\), expected \(16, 8\)"):
        SparseAutoencoder.load(tmp_path)


def test_undetectable_folder_lists_what_it_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"cannot tell the format .*notes.txt.*weights.bin.*known formats: saelens"):
        load_pretrained(tmp_path)


def test_unknown_format_and_dtype_named(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'safetensor'"):
        load_pretrained(tmp_path, format="safetensor")
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_pretrained(tmp_path, dtype="float8")


def test_dtype_and_device_arguments(tmp_path):
    SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2), seed=0).save(tmp_path)
    sae = load_pretrained(tmp_path, dtype=torch.float64, device="cpu")
    assert sae.W_enc.dtype == torch.float64 and sae.family.cfg.dtype == "float64"


def test_missing_local_path_is_not_sent_to_the_hub():
    with pytest.raises(FileNotFoundError, match="neither a local path, a release id"):
        load_pretrained("./no/such/folder")


@pytest.mark.parametrize("family", ["adaptivek", "topafa", "vsae"])
def test_saelens_strict_refuses_families_it_cannot_represent(tmp_path, family):
    kw = {"k": None} if family == "topafa" else {"k": 2}
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, family=family, **kw))
    with pytest.raises(ValueError, match=f"family '{family}' cannot be saved for SAELens"):
        sae.save(tmp_path / "strict", format="saelens-strict")
    assert not (tmp_path / "strict" / "cfg.json").exists()
    sae.save(tmp_path / "ours")  # our own layout keeps everything
    assert SparseAutoencoder.load(tmp_path / "ours").cfg.family == family


def test_saelens_strict_refuses_unestimated_threshold_and_inexact_normalisation(tmp_path):
    with pytest.raises(ValueError, match="threshold has not been estimated"):
        SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, family="batchtopk", k=2)).save(tmp_path, format="saelens-strict")
    with pytest.raises(ValueError, match="normalize='layer_norm' has no exact SAELens twin"):
        SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2, normalize="layer_norm")).save(tmp_path, format="saelens-strict")


def test_sparsify_save_refuses_what_sparsify_cannot_encode(tmp_path):
    with pytest.raises(ValueError, match="family 'batchtopk' cannot be saved for sparsify"):
        SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, family="batchtopk", k=2)).save(tmp_path, format="sparsify")
    with pytest.raises(ValueError, match="unknown save format 'parquet'"):
        SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2)).save(tmp_path, format="parquet")


def test_transcoders_that_a_layout_cannot_hold_are_refused_in_one_line(tmp_path):
    def tc(**kw):
        return SparseAutoencoder(SAEConfig(**{"d_in": 8, "d_out": 8, "n_latents": 16, "k": 2, **kw}))

    with pytest.raises(ValueError, match="d_out=6 from d_in=8: sparsify's SparseCoder has one width"):
        tc(d_out=6).save(tmp_path, format="sparsify")
    with pytest.raises(ValueError, match="a CLT cannot be saved for sparsify"):
        tc(layers=2).save(tmp_path, format="sparsify")
    with pytest.raises(
        ValueError, match="family 'topk' has no class there, and this dictionary is a transcoder: save it with format='saelens'"
    ):
        tc().save(tmp_path, format="saelens-strict")
    with pytest.raises(ValueError, match="SAELens has no cross-layer transcoder class"):
        tc(family="jumprelu", k=None, layers=2).save(tmp_path, format="saelens-strict")
    negative = tc(family="jumprelu", k=None)
    with torch.no_grad():  # the thresholds are trained parameters
        negative.family.threshold.fill_(-0.1)
    with pytest.raises(ValueError, match="16 JumpReLU thresholds are negative"):
        negative.save(tmp_path, format="saelens-strict")
    assert not any(tmp_path.iterdir())


def test_sparsify_save_round_trips_through_our_loader(tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2, normalize="dataset_scalar"), seed=0)
    sae.input_scale.fill_(1.5)
    sae.save(tmp_path / "layers.4", format="sparsify")
    back = load_pretrained(tmp_path / "layers.4")
    x = torch.randn(16, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x).x_hat, sae(x).x_hat)
    assert back.cfg.hook_name == "blocks.4.hook_resid_post"


@pytest.mark.parametrize("dict_size", [None, 10**12])
def test_dictionary_learning_threshold_spread_only_over_a_checked_size(tmp_path, dict_size):
    """BatchTopKSAE's one inference threshold becomes a [dict_size] tensor only after dict_size is checked."""
    state = {"encoder.weight": torch.zeros(4, 2), "encoder.bias": torch.zeros(4), "decoder.weight": torch.zeros(2, 4)}
    torch.save({**state, "b_dec": torch.zeros(2), "k": torch.tensor(1), "threshold": torch.tensor(0.5)}, tmp_path / "ae.pt")
    trainer = {"dict_class": "BatchTopKSAE", "activation_dim": 2}
    if dict_size is not None:
        trainer["dict_size"] = dict_size
    (tmp_path / "config.json").write_text(json.dumps({"trainer": trainer}))
    with pytest.raises(ValueError, match="config.json: .*d_sae"):
        load_pretrained(tmp_path)


def test_a_hook_asked_of_a_one_dictionary_folder_must_be_the_one_it_records(tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2, hook_name="blocks.3.hook_resid_pre"), seed=0)
    sae.save(tmp_path / "d")
    assert load_pretrained(tmp_path / "d", hook="blocks.3.hook_resid_pre").cfg.hook_name == "blocks.3.hook_resid_pre"
    with pytest.raises(ValueError, match=r"hook='blocks.5.hook_resid_pre'\): the dictionary there records hook 'blocks.3"):
        load_pretrained(tmp_path / "d", hook="blocks.5.hook_resid_pre")
    SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2), seed=0).save(tmp_path / "bare")  # records no hook
    assert load_pretrained(tmp_path / "bare", hook="layers.4").cfg.hook_name == "blocks.4.hook_resid_post"
