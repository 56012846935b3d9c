"""SAELens's transcoder release ids (its four conversions of them) and ours, resolved offline against a Hugging
Face cache laid out by the test in each repo's layout (tiny random files: the loaders' math is tested in
tests/sae/formats), and `python -m sae pretrained list --kind`."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

import sae.pretrained.registry as registry
from sae import load_pretrained
from sae.cli import main

D, F = 6, 16
g = torch.Generator().manual_seed(0)

# one entry per conversion SAELens 6.54 reads transcoders with, ids and paths as its pretrained_saes.yaml has them
SAELENS_YAML = {
    "gemma-scope-2-1b-pt-transcoders-all": {
        "conversion_func": "gemma_3",
        "model": "google/gemma-3-1b-pt",
        "repo_id": "google/gemma-scope-2-1b-pt",
        "saes": [{"id": "layer_3_width_16k_l0_big_affine", "path": "transcoder_all/layer_3_width_16k_l0_big_affine"}],
    },
    "gemma-scope-2b-pt-transcoders": {
        "conversion_func": "gemma_2_transcoder",
        "model": "gemma-2-2b",
        "repo_id": "google/gemma-scope-2b-pt-transcoders",
        "saes": [{"id": "layer_2/width_16k/average_l0_54", "path": "layer_2/width_16k/average_l0_54"}],
    },
    "mwhanna-qwen3-0.6b-transcoders-lowl0": {
        "conversion_func": "mwhanna_transcoder",
        "model": "qwen3-0.6b",
        "repo_id": "mwhanna/qwen3-0.6b-transcoders-lowl0",
        "saes": [{"id": "layer_1", "path": "layer_1.safetensors"}],
    },
    "mntss-gemma-2-2b-2.5m-clt-as-per-layer": {
        "conversion_func": "mntss_clt_layer_transcoder",
        "model": "gemma-2-2b",
        "repo_id": "mntss/clt-gemma-2-2b-2.5M",
        "saes": [{"id": "layer_1", "path": 1}],
    },
}


def rnd(*shape):
    return torch.randn(*shape, generator=g)


def circuit_tracer_config(snap, kind):
    text = {"model_kind": kind, "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}
    (snap / "config.yaml").write_text(yaml.safe_dump({**text, "model_name": "m"}))


def clt_repo(snap, layers=2):
    circuit_tracer_config(snap, "cross_layer_transcoder")
    for i in range(layers):
        enc = {f"W_enc_{i}": rnd(F, D), f"b_enc_{i}": rnd(F), f"b_dec_{i}": rnd(D), f"threshold_{i}": rnd(F).abs()}
        save_file(enc, snap / f"W_enc_{i}.safetensors")
        save_file({f"W_dec_{i}": rnd(F, layers - i, D)}, snap / f"W_dec_{i}.safetensors")


@pytest.fixture
def their_registry(tmp_path, monkeypatch):
    yaml_file = tmp_path / "pretrained_saes.yaml"
    yaml_file.write_text(yaml.safe_dump(SAELENS_YAML))
    monkeypatch.setattr(registry, "saelens_yaml_path", lambda: yaml_file)
    registry.saelens_releases.cache_clear()
    yield
    registry.saelens_releases.cache_clear()


def test_saelens_transcoder_ids_resolve(hf_cache, their_registry):
    folder = hf_cache("google/gemma-scope-2-1b-pt") / "transcoder_all" / "layer_3_width_16k_l0_big_affine"
    folder.mkdir(parents=True)
    p = {"w_enc": rnd(D, F), "w_dec": rnd(F, D), "b_enc": rnd(F), "b_dec": rnd(D), "threshold": rnd(F).abs()}
    save_file({**p, "affine_skip_connection": rnd(D, D)}, folder / "params.safetensors")
    tc = load_pretrained("gemma-scope-2-1b-pt-transcoders-all", sae_id="layer_3_width_16k_l0_big_affine")
    assert (tc.cfg.target_hook, tc.cfg.skip, tc.cfg.model_name) == ("blocks.3.hook_mlp_out", True, "google/gemma-3-1b-pt")

    npz = hf_cache("google/gemma-scope-2b-pt-transcoders") / "layer_2" / "width_16k" / "average_l0_54"
    npz.mkdir(parents=True)
    arrays = {"W_enc": rnd(D, F), "W_dec": rnd(F, D), "b_enc": rnd(F), "b_dec": rnd(D), "threshold": rnd(F).abs()}
    np.savez(npz / "params.npz", **{k: v.numpy() for k, v in arrays.items()})
    tc = load_pretrained("gemma-scope-2b-pt-transcoders", sae_id="layer_2/width_16k/average_l0_54")
    assert (tc.cfg.hook_name, tc.cfg.target_hook) == ("blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out")

    snap = hf_cache("mwhanna/qwen3-0.6b-transcoders-lowl0")
    circuit_tracer_config(snap, "transcoder_set")
    layer = {"W_enc": rnd(F, D), "b_enc": rnd(F), "W_dec": rnd(F, D), "b_dec": rnd(D)}
    save_file(layer, snap / "layer_1.safetensors")
    tc = load_pretrained("mwhanna-qwen3-0.6b-transcoders-lowl0", sae_id="layer_1")
    assert (tc.cfg.family, tc.cfg.hook_name, tc.cfg.target_hook) == ("standard", "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out")
    assert torch.equal(tc.W_enc, layer["W_enc"].T)

    clt_repo(hf_cache("mntss/clt-gemma-2-2b-2.5M"))
    with pytest.warns(UserWarning, match="summed"):
        one = load_pretrained("mntss-gemma-2-2b-2.5m-clt-as-per-layer", sae_id="layer_1")
    assert (one.cfg.is_clt, one.cfg.family, one.cfg.hook_name) == (False, "jumprelu", "blocks.1.mlp.hook_in")


def test_our_transcoder_releases_resolve_and_list(hf_cache, capsys):
    clt_repo(hf_cache("mntss/clt-gemma-2-2b-2.5M"), layers=3)
    clt = load_pretrained("mntss-clt-gemma-2-2b-2.5m")
    assert clt.cfg.is_clt and clt.cfg.layers == 3 and clt.cfg.model_name == "m"
    assert load_pretrained("mntss/clt-gemma-2-2b-2.5M").cfg.layers == 3  # the repo itself, as a Hub repo id
    kinds = {r.id: r.kind for r in registry.list_releases()}
    assert (
        kinds["gemma-scope-2-1b-pt-transcoders-16k-small-affine"] == "transcoder" and kinds["mntss-clt-gemma-2-2b-2.5m"] == "clt"
    )
    assert main(["pretrained", "list", "--kind", "clt"]) == 0
    out = capsys.readouterr().out
    assert "mntss-clt-gemma-2-2b-2.5m" in out and "gpt2-small-res-jb" not in out
    assert main(["pretrained", "download", "mntss-clt-gemma-2-2b-2.5m"]) == 0
    assert "d_out=6 target='blocks.{}.mlp.hook_out' layers=3" in capsys.readouterr().out


def test_hub_repos_of_transcoders_resolve_a_hook(hf_cache):
    """A circuit-tracer transcoder set and a sparsify transcoder repo, by Hub repo id and hook: the download asks
    for that layer's files (offline here, so what is tested is the choice among the cached ones)."""
    snap = hf_cache("someone/qwen-transcoders")
    circuit_tracer_config(snap, "transcoder_set")
    for layer in range(3):
        save_file({"W_enc": rnd(F, D), "b_enc": rnd(F), "W_dec": rnd(F, D), "b_dec": rnd(D)}, snap / f"layer_{layer}.safetensors")
    tc = load_pretrained("someone/qwen-transcoders", hook="blocks.2.mlp.hook_in")
    assert (tc.cfg.hook_name, tc.cfg.target_hook) == ("blocks.2.mlp.hook_in", "blocks.2.mlp.hook_out")
    snap = hf_cache("someone/sparsify-transcoders")
    for layer in range(2):
        folder = snap / f"layers.{layer}.mlp"
        folder.mkdir()
        cfg = {"activation": "topk", "num_latents": F, "k": 2, "transcode": True, "skip_connection": False, "d_in": D}
        (folder / "cfg.json").write_text(json.dumps(cfg))
        save_file(
            {"encoder.weight": rnd(F, D), "encoder.bias": rnd(F), "W_dec": rnd(F, D), "b_dec": rnd(D)}, folder / "sae.safetensors"
        )
    tc = load_pretrained("someone/sparsify-transcoders", hook="blocks.1.hook_mlp_in")
    assert (tc.cfg.hook_name, tc.cfg.target_hook) == ("blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out")
