import pytest
import torch

import sae.pretrained as pretrained
from sae import load_pretrained
from sae.config import SAEConfig
from sae.model import SparseAutoencoder


def _release(root):
    """A release folder with one dictionary per hook, as published repos lay them out."""
    saes = {}
    for layer in (2, 3):
        hook = f"blocks.{layer}.hook_resid_pre"
        s = SparseAutoencoder(SAEConfig(d_in=16, n_latents=32, k=4, hook_name=hook), seed=layer)
        s.save(root / hook)
        saes[hook] = s
    return saes


def test_local_release_by_hook(tmp_path):
    saes = _release(tmp_path)
    got = load_pretrained(tmp_path, hook="blocks.3.hook_resid_pre")
    assert torch.equal(got.W_dec, saes["blocks.3.hook_resid_pre"].W_dec)
    with pytest.raises(ValueError, match="several dictionaries"):
        load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no dictionary for hook 'blocks.9.hook_resid_pre'"):
        load_pretrained(tmp_path, hook="blocks.9.hook_resid_pre")


def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    saes = _release(tmp_path)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    got = pretrained.load_pretrained("someone/saes", hook="blocks.2.hook_resid_pre", revision="v1")
    assert calls == [("someone/saes", "v1", ["blocks.2.hook_resid_pre/*", "cfg.json", "sae_weights.safetensors"])]
    assert torch.equal(got.W_enc, saes["blocks.2.hook_resid_pre"].W_enc)


def test_missing_local_path_is_not_sent_to_the_hub():
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub repo id"):
        load_pretrained("./no/such/folder")
