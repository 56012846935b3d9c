"""Hub repos and release ids through a Hugging Face cache laid out by the test (conftest.py's hf_cache;
HF_HUB_OFFLINE=1: nothing is downloaded), SAELens's registry read as data, the CLI, and the model-compatibility check."""

import pytest
import torch

import sae.pretrained.registry as registry
from sae import SAEConfig, SparseAutoencoder, check_compatible, load_all, load_pretrained
from sae.cli import main


def _dicts(snap, layers=(0, 1)):
    out = {}
    for layer in layers:
        hook = f"blocks.{layer}.hook_resid_pre"
        out[hook] = SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2, hook_name=hook, normalize="none"), seed=layer)
        out[hook].save(snap / hook)
    return out


def test_hub_repo_by_hook_and_load_all(hf_cache):
    saes = _dicts(hf_cache("someone/tiny-saes"))
    got = load_pretrained("someone/tiny-saes", "blocks.1.hook_resid_pre")
    assert torch.equal(got.W_enc, saes["blocks.1.hook_resid_pre"].W_enc)
    everything = load_all("someone/tiny-saes")
    assert sorted(everything) == sorted(saes)


def test_offline_miss_names_repo_and_cache(hf_cache):
    with pytest.raises(FileNotFoundError, match=rf"someone/absent is not in the Hugging Face cache \({hf_cache.root}\)"):
        load_pretrained("someone/absent", "blocks.0.hook_resid_pre")


def _tiny_release(rid="tiny-res"):
    return registry.Release(
        id=rid,
        repo="someone/tiny-saes",
        format="saelens",
        model="tiny-model",
        saes={f"blocks.{i}.hook_resid_pre": f"blocks.{i}.hook_resid_pre" for i in (0, 1)},
        hooks={f"blocks.{i}.hook_resid_pre": f"blocks.{i}.hook_resid_pre" for i in (0, 1)},
    )


def test_release_id_by_hook_and_sae_id(hf_cache, monkeypatch):
    saes = _dicts(hf_cache("someone/tiny-saes"))
    monkeypatch.setattr(registry, "our_releases", lambda: {"tiny-res": _tiny_release()})
    a = load_pretrained("tiny-res", "blocks.0.hook_resid_pre")
    b = load_pretrained("tiny-res", sae_id="blocks.1.hook_resid_pre")
    assert torch.equal(a.W_dec, saes["blocks.0.hook_resid_pre"].W_dec)
    assert torch.equal(b.W_dec, saes["blocks.1.hook_resid_pre"].W_dec)
    with pytest.raises(ValueError, match="release 'tiny-res' has no dictionary for sae_id 'blocks.7"):
        load_pretrained("tiny-res", sae_id="blocks.7.hook_resid_pre")


def test_saelens_registry_resolves_ids_we_do_not_list(hf_cache, monkeypatch, tmp_path):
    saes = _dicts(hf_cache("someone/tiny-saes"))
    yaml_file = tmp_path / "pretrained_saes.yaml"
    yaml_file.write_text(
        "their-release:\n  conversion_func: null\n  model: tiny-model\n  repo_id: someone/tiny-saes\n  saes:\n"
        "  - id: blocks.1.hook_resid_pre\n    path: blocks.1.hook_resid_pre\n"
        "their-other:\n  conversion_func: deepseek_r1\n  model: m\n  repo_id: x/y\n  saes:\n  - id: a\n    path: a\n"
    )
    monkeypatch.setattr(registry, "saelens_yaml_path", lambda: yaml_file)
    registry.saelens_releases.cache_clear()
    try:
        got = load_pretrained("their-release", sae_id="blocks.1.hook_resid_pre")
        assert torch.equal(got.W_enc, saes["blocks.1.hook_resid_pre"].W_enc)
        with pytest.raises(ValueError, match="converted by SAELens with 'deepseek_r1'"):
            load_pretrained("their-other", sae_id="a")
    finally:
        registry.saelens_releases.cache_clear()


def test_shipped_registry_has_the_required_releases():
    releases = {r.id: r for r in registry.list_releases()}
    formats = {r.format for r in releases.values()}
    assert {"saelens", "gemma-scope", "llama-scope", "sparsify"} <= formats
    assert releases["gpt2-small-res-jb"].hooks["blocks.8.hook_resid_pre"] == "blocks.8.hook_resid_pre"
    assert releases["gemma-scope-2b-pt-res-canonical"].saes["layer_20/width_16k/canonical"] == "layer_20/width_16k/canonical"
    assert [r.id for r in registry.list_releases("pythia")] == ["eleuther-pythia-160m-32x"]


def test_cli_list_and_download(hf_cache, monkeypatch, capsys):
    assert main(["pretrained", "list", "--model", "gemma"]) == 0
    out = capsys.readouterr().out
    assert "gemma-scope-2b-pt-res-canonical" in out and "gpt2-small-res-jb" not in out
    assert main(["pretrained", "download", "gpt2-small-res-jb", "--hook", "blocks.8.hook_resid_pre"]) == 2
    assert "jbloom/GPT2-Small-SAEs-Reformatted is not in the Hugging Face cache" in capsys.readouterr().err
    _dicts(hf_cache("someone/tiny-saes"))
    monkeypatch.setattr(registry, "our_releases", lambda: {"tiny-res": _tiny_release()})
    assert main(["pretrained", "download", "tiny-res", "--hook", "blocks.1.hook_resid_pre"]) == 0
    assert "d_in=8 latents=16" in capsys.readouterr().out


def test_check_compatible_names_both_values():
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2, hook_name="blocks.1.hook_resid_pre"))
    check_compatible(sae, 8, "blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match="d_in=8 .* width 12"):
        check_compatible(sae, 12, "blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match="trained on hook 'blocks.1.hook_resid_pre', not 'blocks.2.hook_resid_pre'"):
        check_compatible(sae, 8, "blocks.2.hook_resid_pre")
    check_compatible(sae, 8, "blocks.2.hook_resid_pre", force=True)
    with pytest.raises(ValueError, match="width 12"):
        check_compatible(sae, 12, "blocks.2.hook_resid_pre", force=True)


def test_check_compatible_probes_a_real_model():
    from activations import load_model

    model = load_model("minilm")
    sae = SparseAutoencoder(SAEConfig(d_in=384, n_latents=32, k=2, hook_name="blocks.3.hook_resid_pre"))
    check_compatible(sae, model, "blocks.3.hook_resid_pre")
    wrong = SparseAutoencoder(SAEConfig(d_in=768, n_latents=32, k=2, hook_name="blocks.3.hook_resid_pre"))
    with pytest.raises(ValueError, match="d_in=768 .*'blocks.3.hook_resid_pre' has width 384"):
        check_compatible(wrong, model, "blocks.3.hook_resid_pre")
