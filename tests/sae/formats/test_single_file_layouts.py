"""Gemma Scope, Llama Scope, OpenAI sparse_autoencoder and dictionary_learning files in their published layouts
(random weights), each against a reference forward written here from the format's definition."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae import load_pretrained

D, N = 12, 40
g = torch.Generator().manual_seed(0)


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def check(sae, x, z_ref, out_ref):
    assert (z_ref != 0).any()
    sae.eval()
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x).x_hat, out_ref, atol=1e-5, rtol=1e-5)


def test_gemma_scope_npz(tmp_path):
    p = {"W_enc": rnd(D, N), "W_dec": rnd(N, D), "b_enc": rnd(N, scale=0.1), "b_dec": rnd(D), "threshold": rnd(N).abs()}
    folder = tmp_path / "layer_20" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in p.items()})
    sae = load_pretrained(folder)
    assert sae.cfg.hook_name == "blocks.20.hook_resid_post"
    x = rnd(32, D, scale=2)
    pre = x @ p["W_enc"] + p["b_enc"]  # no b_dec subtraction
    z = pre.relu() * (pre > p["threshold"])
    check(sae, x, z, z @ p["W_dec"] + p["b_dec"])


def test_gemma_scope_2_folder(tmp_path):
    p = {"w_enc": rnd(D, N), "w_dec": rnd(N, D), "b_enc": rnd(N, scale=0.1), "b_dec": rnd(D), "threshold": rnd(N).abs()}
    folder = tmp_path / "resid_post" / "layer_7_width_16k_l0_medium"
    folder.mkdir(parents=True)
    save_file(p, folder / "params.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-1b-pt"}))
    sae = load_pretrained(folder)
    assert (sae.cfg.hook_name, sae.cfg.model_name) == ("blocks.7.hook_resid_post", "gemma-v3-1b-pt")
    x = rnd(32, D, scale=2)
    pre = x @ p["w_enc"] + p["b_enc"]
    z = pre.relu() * (pre > p["threshold"])
    check(sae, x, z, z @ p["w_dec"] + p["b_dec"])
    transcoder = tmp_path / "transcoder" / "layer_7_width_16k"
    transcoder.mkdir(parents=True)
    save_file(p, transcoder / "params.safetensors")
    (transcoder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "affine_connection": True}))
    with pytest.raises(ValueError, match="says affine_connection but .* holds no affine_skip_connection"):
        load_pretrained(transcoder)  # Gemma Scope 2's transcoders: tests/sae/formats/test_gemma_scope_transcoders.py


def test_llama_scope_folder(tmp_path):
    folder = tmp_path / "Llama3_1-8B-Base-L5R-8x"
    (folder / "checkpoints").mkdir(parents=True)
    w = {"encoder.weight": rnd(N, D), "encoder.bias": rnd(N, scale=0.1), "decoder.weight": rnd(D, N), "decoder.bias": rnd(D)}
    save_file(w, folder / "checkpoints" / "final.safetensors")
    hp = {
        "d_model": D,
        "d_sae": N,
        "hook_point_in": "blocks.5.hook_resid_post",
        "hook_point_out": "blocks.5.hook_resid_post",
        "jump_relu_threshold": 0.4,
        "dataset_average_activation_norm": {"in": 7.0, "out": 9.0},
    }
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    sae = load_pretrained(folder)
    x = rnd(32, D, scale=3)
    xs = x * math.sqrt(D) / 7.0
    pre = xs @ w["encoder.weight"].T + w["encoder.bias"]
    z = pre.relu() * (pre > 0.4)
    out = (z @ w["decoder.weight"].T + w["decoder.bias"]) * 9.0 / math.sqrt(D)
    sae.eval()
    with torch.no_grad():  # codes are reported in raw-activation units: z / s_in
        torch.testing.assert_close(sae.encode_dense(x), z * 7.0 / math.sqrt(D), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x).x_hat, out, atol=1e-5, rtol=1e-5)


def _openai_state(activation):
    state = {
        "pre_bias": rnd(D),
        "encoder.weight": rnd(N, D),
        "latent_bias": rnd(N, scale=0.1),
        "decoder.weight": rnd(D, N),
        "stats_last_nonzero": torch.zeros(N, dtype=torch.long),
        "latents_activation_frequency": torch.ones(N),
        "latents_mean_square": torch.zeros(N),
        "activation": activation,
    }
    if activation == "TopK":
        state["activation_state_dict"] = {"k": 5, "postact_fn": "ReLU"}
    return state


@pytest.mark.parametrize("activation", ["TopK", "ReLU"])
def test_openai_state_dict(tmp_path, activation):
    s = _openai_state(activation)
    torch.save(s, tmp_path / "v5_32k_layer_8.pt")
    sae = load_pretrained(tmp_path / "v5_32k_layer_8.pt")
    x = rnd(32, D, scale=2) + 1
    xn, mu, std = x, 0.0, 1.0
    if activation == "TopK":  # its loader turns LN on exactly for TopK
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        xn = (x - mu) / (std + 1e-5)
    pre = (xn - s["pre_bias"]) @ s["encoder.weight"].T + s["latent_bias"]
    if activation == "TopK":
        v, i = pre.topk(5, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v.relu())
    else:
        z = pre.relu()
    check(sae, x, z, (z @ s["decoder.weight"].T + s["pre_bias"]) * std + mu)


def _dl(tmp_path, cls, state, **trainer):
    folder = tmp_path / cls
    folder.mkdir()
    torch.save(state, folder / "ae.pt")
    cfg = {
        "trainer": {
            "dict_class": cls,
            "activation_dim": D,
            "dict_size": N,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            "layer": 3,
            "submodule_name": "resid_post",
            **trainer,
        }
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return load_pretrained(folder)


def test_dictionary_learning_classes(tmp_path):
    x = rnd(32, D, scale=2)
    # AutoEncoder: ReLU(encoder(x - bias)), decoder(f) + bias
    s = {"bias": rnd(D), "encoder.weight": rnd(N, D), "encoder.bias": rnd(N, scale=0.1), "decoder.weight": rnd(D, N)}
    z = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
    sae = _dl(tmp_path, "AutoEncoder", s)
    assert (sae.cfg.family, sae.cfg.hook_name) == ("standard", "blocks.3.hook_resid_post")
    check(sae, x, z, z @ s["decoder.weight"].T + s["bias"])
    # AutoEncoderTopK and BatchTopKSAE (threshold at inference)
    s = {
        "b_dec": rnd(D),
        "encoder.weight": rnd(N, D),
        "encoder.bias": rnd(N, scale=0.1),
        "decoder.weight": rnd(D, N),
        "k": torch.tensor(5, dtype=torch.int),
        "threshold": torch.tensor(0.7),
    }
    post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    v, i = post.topk(5, dim=-1)
    z = torch.zeros_like(post).scatter(-1, i, v)
    check(_dl(tmp_path, "AutoEncoderTopK", s), x, z, z @ s["decoder.weight"].T + s["b_dec"])
    z = post * (post > 0.7)
    check(_dl(tmp_path, "BatchTopKSAE", s), x, z, z @ s["decoder.weight"].T + s["b_dec"])
    # JumpReluAutoEncoder (apply_b_dec_to_input false by default) and Matryoshka (threshold, groups)
    s = {"W_enc": rnd(D, N), "b_enc": rnd(N, scale=0.1), "W_dec": rnd(N, D), "b_dec": rnd(D), "threshold": rnd(N).abs()}
    pre = x @ s["W_enc"] + s["b_enc"]
    z = torch.relu(pre * (pre > s["threshold"]))
    check(_dl(tmp_path, "JumpReluAutoEncoder", s), x, z, z @ s["W_dec"] + s["b_dec"])
    s = {**s, "threshold": torch.tensor(0.5), "k": torch.tensor(5), "group_sizes": torch.tensor([8, 12, 20])}
    post = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
    z = post * (post > 0.5)
    sae = _dl(tmp_path, "MatryoshkaBatchTopKSAE", s)
    assert sae.family.prefixes == [8, 20, 40]
    check(sae, x, z, z @ s["W_dec"] + s["b_dec"])
    # GatedAutoEncoder
    s = {
        "decoder_bias": rnd(D),
        "encoder.weight": rnd(N, D),
        "r_mag": rnd(N, scale=0.2),
        "gate_bias": rnd(N, scale=0.1),
        "mag_bias": rnd(N, scale=0.1),
        "decoder.weight": rnd(D, N),
    }
    h = (x - s["decoder_bias"]) @ s["encoder.weight"].T
    z = (h + s["gate_bias"] > 0).float() * torch.relu(s["r_mag"].exp() * h + s["mag_bias"])
    check(_dl(tmp_path, "GatedAutoEncoder", s), x, z, z @ s["decoder.weight"].T + s["decoder_bias"])


def test_dictionary_learning_unknown_class_refused(tmp_path):
    with pytest.raises(ValueError, match="dict_class 'IdentityDict' is not supported"):
        _dl(tmp_path, "IdentityDict", {"x": torch.zeros(1)})


def test_a_lone_file_path_and_its_folder_load_alike(tmp_path):
    """A folder holding one OpenAI .pt, and a dictionary_learning ae.pt given by its file path, load as their
    detected layout does (the loader is handed what it reads)."""
    s = _openai_state("ReLU")
    (tmp_path / "oa").mkdir()
    torch.save(s, tmp_path / "oa" / "v5_32k_layer_8.pt")
    x = rnd(8, D)
    with torch.no_grad():
        torch.testing.assert_close(
            load_pretrained(tmp_path / "oa")(x).x_hat, load_pretrained(tmp_path / "oa" / "v5_32k_layer_8.pt")(x).x_hat
        )
    s = {"bias": rnd(D), "encoder.weight": rnd(N, D), "encoder.bias": rnd(N, scale=0.1), "decoder.weight": rnd(D, N)}
    folder = _dl(tmp_path, "AutoEncoder", s)
    by_file = load_pretrained(tmp_path / "AutoEncoder" / "ae.pt")
    assert by_file.cfg == folder.cfg
    with torch.no_grad():
        torch.testing.assert_close(by_file(x).x_hat, folder(x).x_hat)
