"""Gemma Scope's and Gemma Scope 2's transcoders and Gemma Scope 2's CLTs in their published layouts (random
weights, folder and key names as SAELens 6.54's gemma_2_transcoder / gemma_3 loaders and circuit-tracer 0.5.0's
Gemma Scope 2 loaders read them), against their forward written here: ReLU(pre) * 1[pre > theta], the affine skip
x @ affine."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae import load_pretrained

D, N, O, L = 10, 32, 10, 3
g = torch.Generator().manual_seed(0)


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def params(affine=False, d_out=O, w_dec=None):
    p = {"w_enc": rnd(D, N), "w_dec": w_dec if w_dec is not None else rnd(N, d_out), "b_enc": rnd(N, scale=0.1)}
    p.update(b_dec=rnd(d_out), threshold=rnd(N).abs() * 0.5)
    if affine:
        p["affine_skip_connection"] = rnd(D, d_out, scale=0.3)
    return p


def jump(p, x):
    pre = x @ p["w_enc"] + p["b_enc"]
    return pre.relu() * (pre > p["threshold"])


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_gemma_scope_2_transcoder_folders(tmp_path, affine):
    p = params(affine)
    suffix = "_affine" if affine else ""
    folder = tmp_path / "transcoder_all" / f"layer_4_width_16k_l0_small{suffix}"  # no config.json: inferred
    folder.mkdir(parents=True)
    save_file(p, folder / "params.safetensors")
    sae = load_pretrained(folder).eval()
    assert (sae.cfg.hook_name, sae.cfg.target_hook, sae.cfg.skip) == ("blocks.4.hook_mlp_in", "blocks.4.hook_mlp_out", affine)
    x = rnd(16, D, scale=2)
    z = jump(p, x)
    y = z @ p["w_dec"] + p["b_dec"] + (x @ p["affine_skip_connection"] if affine else 0)
    with torch.no_grad():
        close(sae.encode_dense(x), z)
        close(sae.predict(x), y)


def test_gemma_scope_2_clt_folder(tmp_path):
    folder = tmp_path / "clt" / "width_16k_l0_medium_affine"
    folder.mkdir(parents=True)
    ps = []
    for layer in range(L):
        w_dec = rnd(N, L, O, scale=0.5)
        w_dec[:, :layer] = 0  # a feature writes into its own and later layers
        ps.append(params(affine=True, w_dec=w_dec))
        save_file(ps[-1], folder / f"params_layer_{layer}.safetensors")
    sae = load_pretrained(folder).eval()
    assert sae.cfg.is_clt and sae.cfg.layers == L and sae.cfg.skip and sae.cfg.target_hook == "blocks.{}.hook_mlp_out"
    x = rnd(16, L, D, scale=2)
    zs = [jump(p, x[:, i]) for i, p in enumerate(ps)]
    y = torch.stack([p["b_dec"] + x[:, i] @ p["affine_skip_connection"] for i, p in enumerate(ps)], 1)
    for z, p in zip(zs, ps):
        y = y + torch.einsum("bn,njd->bjd", z, p["w_dec"])
    with torch.no_grad():
        close(sae.encode_dense(x), torch.cat(zs, 1))
        close(sae.predict(x), y)


def test_gemma_scope_2_refusals(tmp_path):
    folder = tmp_path / "clt" / "width_16k"
    folder.mkdir(parents=True)
    for layer in (0, 1, 3):
        save_file(params(w_dec=rnd(N, 4, O)), folder / f"params_layer_{layer}.safetensors")
    with pytest.raises(ValueError, match=r"one file per layer 0..3; layers \[2\] are missing"):
        load_pretrained(folder)
    bad = tmp_path / "transcoder" / "layer_2_width_16k_affine"
    bad.mkdir(parents=True)
    p = params(affine=True)
    p["affine_skip_connection"] = rnd(D + 1, O)
    save_file(p, bad / "params.safetensors")
    with pytest.raises(ValueError, match=r"affine_skip_connection has shape \(11, 10\), expected \[d_in=10, d_out=10\]"):
        load_pretrained(bad)


def test_gemma_scope_transcoders_npz(tmp_path):
    p = {"W_enc": rnd(D, N), "W_dec": rnd(N, D), "b_enc": rnd(N, scale=0.1), "b_dec": rnd(D), "threshold": rnd(N).abs()}
    folder = tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_5" / "width_16k" / "average_l0_88"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in p.items()})
    sae = load_pretrained(folder).eval()
    assert (sae.cfg.hook_name, sae.cfg.target_hook) == ("blocks.5.ln2.hook_normalized", "blocks.5.hook_mlp_out")
    x = rnd(16, D, scale=2)
    pre = x @ p["W_enc"] + p["b_enc"]
    z = pre.relu() * (pre > p["threshold"])
    with torch.no_grad():
        close(sae.encode_dense(x), z)
        close(sae.predict(x), z @ p["W_dec"] + p["b_dec"])
    assert load_pretrained(folder / "params.npz", format="gemma-scope").cfg.target_hook == ""  # read as an SAE on request
