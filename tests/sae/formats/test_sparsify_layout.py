"""sparsify hook folders in eai-sparsify's layout (random weights) against its forward written from its code:
ReLU((x - b_dec) W^T + b) then top-k; decode = W_dec rows + b_dec. Multi-hook repos, old names, refusals."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sae import load_all, load_pretrained

D, N, K = 10, 48, 4


def write(folder, seed: int = 0, **cfg_extra) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {
        "encoder.weight": torch.randn(N, D, generator=g),
        "encoder.bias": torch.randn(N, generator=g) * 0.1,
        "W_dec": torch.randn(N, D, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": N,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
        **cfg_extra,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(t, folder / "sae.safetensors")
    return t


def reference(t, x, signed=False):
    pre = (x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]
    if signed:
        idx = pre.abs().topk(K, dim=-1).indices
        vals = pre.gather(-1, idx)
    else:
        vals, idx = pre.relu().topk(K, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals)
    return z, z @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("extra", [{}, {"multi_topk": True}, {"signed": True}])
def test_hook_folder_matches_reference(tmp_path, extra):
    t = write(tmp_path / "layers.3", **extra)
    sae = load_pretrained(tmp_path / "layers.3").eval()
    assert sae.cfg.hook_name == "blocks.3.hook_resid_post"
    x = torch.randn(32, D)
    z, out = reference(t, x, signed=extra.get("signed", False))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x).x_hat, out, atol=1e-5, rtol=1e-5)


def test_multi_hook_repo_and_old_folder_names(tmp_path):
    ts = {name: write(tmp_path / name, seed=i) for i, name in enumerate(["layer_0", "layer_1", "layers.2"])}
    saes = load_all(tmp_path)
    assert sorted(saes) == ["layer_0", "layer_1", "layers.2"]
    x = torch.randn(8, D)
    for name, t in ts.items():
        with torch.no_grad():
            torch.testing.assert_close(saes[name].eval()(x).x_hat, reference(t, x)[1], atol=1e-5, rtol=1e-5)
    by_folder = load_pretrained(tmp_path, hook="layer_1")
    by_tl_name = load_pretrained(tmp_path, hook="blocks.1.hook_resid_post")
    assert torch.equal(by_folder.W_dec, ts["layer_1"]["W_dec"]) and torch.equal(by_tl_name.W_dec, by_folder.W_dec)
    with pytest.raises(ValueError, match="several dictionaries"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(("transcode", "skip"), [(True, False), (True, True), (False, True)])
def test_transcoders_and_skip_connections_match_reference_and_save_back(tmp_path, transcode, skip):
    """sparsify's SparseCoder.forward: a transcoder encodes x itself (an SAE x - b_dec); a skip connection adds
    x W_skip^T."""
    name = "layers.2.mlp" if transcode else "layers.2"
    t = write(tmp_path / name, transcode=transcode, skip_connection=skip)
    if skip:
        t["W_skip"] = torch.randn(D, D, generator=torch.Generator().manual_seed(5)) * 0.3
        save_file(t, tmp_path / name / "sae.safetensors")
    sae = load_pretrained(tmp_path / name).eval()
    hooks = ("blocks.2.hook_mlp_in", "blocks.2.hook_mlp_out") if transcode else ("blocks.2.hook_resid_post",) * 2
    assert (sae.cfg.hook_name, sae.cfg.target_hook, sae.cfg.skip, sae.cfg.d_out) == (*hooks, skip, D)
    x = torch.randn(32, D)
    pre = (x if transcode else x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]
    vals, idx = pre.relu().topk(K, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals)
    y = z @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].T if skip else 0)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.predict(x), y, atol=1e-5, rtol=1e-5)
    sae.save(tmp_path / "back" / name, format="sparsify")
    written = json.loads((tmp_path / "back" / name / "cfg.json").read_text())
    assert (written["transcode"], written["skip_connection"]) == (transcode, skip)
    with torch.no_grad():
        again = load_pretrained(tmp_path / "back", hook=hooks[0])
        torch.testing.assert_close(again.predict(x), y, atol=1e-5, rtol=1e-5)
    assert (again.cfg.hook_name, again.cfg.target_hook) == hooks


def test_w_skip_tensor_refused_even_when_cfg_is_silent(tmp_path):
    t = write(tmp_path)
    save_file({**t, "W_skip": torch.zeros(D, D)}, tmp_path / "sae.safetensors")
    with pytest.raises(ValueError, match="holds W_skip but .* says skip_connection=false"):
        load_pretrained(tmp_path)


def test_w_skip_of_the_wrong_shape_refused(tmp_path):
    t = write(tmp_path / "layers.1.mlp", transcode=True, skip_connection=True)
    save_file({**t, "W_skip": torch.zeros(D, D - 1)}, tmp_path / "layers.1.mlp" / "sae.safetensors")
    with pytest.raises(ValueError, match=r"W_skip has shape \(10, 9\), expected \(10, 10\) \(\[d_out=10, d_in=10\]\)"):
        load_pretrained(tmp_path / "layers.1.mlp")


def test_cfg_disagreeing_with_weights_refused(tmp_path):
    write(tmp_path, num_latents=N * 2)
    with pytest.raises(ValueError, match=r"encoder.weight has shape \(48, 10\)"):
        load_pretrained(tmp_path)
