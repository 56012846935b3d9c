"""circuit-tracer 0.5.0's transcoder sets and CLTs written by hand in its layout (random weights), against its
forward written here from its code (pre = x W_enc^T + b_enc; JumpReLU x * 1[x > theta]; decode z W_dec + b_dec
+ x W_skip^T; a CLT's layer l' sums z_l W_dec_l[:, l' - l]); our saves read back; the refusals. The same against
circuit-tracer itself: tests/circuit."""

import pytest
import torch
import yaml
from safetensors.torch import save_file

from sae import SAEConfig, SparseAutoencoder, load_all, load_pretrained
from sae.formats import load_transcoder_set, save_transcoder_set

D, F, L = 8, 24, 3
g = torch.Generator().manual_seed(0)


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def config(folder, kind, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    text = {"model_kind": kind, "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out", **extra}
    (folder / "config.yaml").write_text(yaml.safe_dump(text))


def layer_file(folder, layer, jump=True, skip=False):
    t = {"W_enc": rnd(F, D), "b_enc": rnd(F, scale=0.1), "W_dec": rnd(F, D), "b_dec": rnd(D)}
    if jump:
        t["activation_function.threshold"] = rnd(F, scale=0.3)  # some negative: x * 1[x > theta] keeps them
    if skip:
        t["W_skip"] = rnd(D, D, scale=0.2)
    save_file(t, folder / f"layer_{layer}.safetensors")
    return t


def layer_reference(t, x):
    pre = x @ t["W_enc"].T + t["b_enc"]
    thr = t.get("activation_function.threshold")
    z = pre * (pre > thr) if thr is not None else pre.relu()
    y = z @ t["W_dec"] + t["b_dec"]
    return z, y + x @ t["W_skip"].T if "W_skip" in t else y


def clt_files(folder, jump=True):
    per = []
    for i in range(L):
        enc = {f"W_enc_{i}": rnd(F, D), f"b_enc_{i}": rnd(F, scale=0.1), f"b_dec_{i}": rnd(D)}
        if jump:
            enc[f"threshold_{i}"] = rnd(F, scale=0.3)
        save_file(enc, folder / f"W_enc_{i}.safetensors")
        dec = {f"W_dec_{i}": rnd(F, L - i, D, scale=0.5)}
        save_file(dec, folder / f"W_dec_{i}.safetensors")
        per.append({**{k.rsplit("_", 1)[0]: v for k, v in enc.items()}, "W_dec": dec[f"W_dec_{i}"]})
    return per


def clt_reference(per, x):
    """x [B, L, D] -> (codes [B, L * F], prediction [B, L, D]) as circuit-tracer's CLT computes them."""
    zs, y = [], torch.stack([p["b_dec"] for p in per]).expand(x.shape[0], -1, -1).clone()
    for i, p in enumerate(per):
        pre = x[:, i] @ p["W_enc"].T + p["b_enc"]
        z = pre * (pre > p["threshold"]) if "threshold" in p else pre.relu()
        zs.append(z)
        y[:, i:] += torch.einsum("bf,fjd->bjd", z, p["W_dec"])
    return torch.cat(zs, 1), y


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_transcoder_set_layers_load_by_hook_and_whole(tmp_path):
    folder = tmp_path / "set"
    config(folder, "transcoder_set", model_name="tiny")
    ts = [layer_file(folder, 0, jump=True), layer_file(folder, 1, jump=False, skip=True), layer_file(folder, 2, skip=True)]
    x = rnd(16, D, scale=2)
    for layer, t in enumerate(ts):
        sae = load_pretrained(folder, hook=f"blocks.{layer}.hook_resid_mid").eval()
        assert (sae.cfg.hook_name, sae.cfg.target_hook) == (f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_mlp_out")
        assert sae.cfg.family == ("standard" if layer == 1 else "jumprelu") and sae.cfg.skip == (layer > 0)
        z, y = layer_reference(t, x)
        assert (z < 0).any() or layer == 1  # negative thresholds let negative pre-activations through, as theirs
        with torch.no_grad():
            close(sae.encode_dense(x), z)
            close(sae.predict(x), y)
    assert torch.equal(load_pretrained(folder, hook="layer_2").W_dec, ts[2]["W_dec"])
    assert sorted(load_all(folder)) == [f"layer_{i}.safetensors" for i in range(3)]
    assert sorted(load_transcoder_set(folder)) == [0, 1, 2]
    with pytest.raises(ValueError, match="several dictionaries"):
        load_pretrained(folder)


def test_clt_folder_loads_as_one_clt(tmp_path):
    for jump in (True, False):
        folder = tmp_path / f"clt_{jump}"
        config(folder, "cross_layer_transcoder")
        per = clt_files(folder, jump=jump)
        sae = load_pretrained(folder).eval()
        assert sae.cfg.is_clt and sae.cfg.layers == L and sae.cfg.hook_name == "blocks.{}.hook_resid_mid"
        x = rnd(16, L, D, scale=2)
        z, y = clt_reference(per, x)
        with torch.no_grad():
            close(sae.encode_dense(x), z)
            close(sae.predict(x), y)
        assert load_pretrained(folder, hook="blocks.1.hook_resid_mid").cfg.layers == L


def test_clt_layer_as_a_transcoder_sums_its_decoders(tmp_path):
    folder = tmp_path / "clt"
    config(folder, "cross_layer_transcoder")
    per = clt_files(folder)
    with pytest.warns(UserWarning, match="decoders into 2 layers summed"):
        sae = load_pretrained(folder / "W_enc_1.safetensors", format="circuit-tracer-clt-layer").eval()
    x = rnd(16, D)
    pre = x @ per[1]["W_enc"].T + per[1]["b_enc"]
    z = pre * (pre > per[1]["threshold"])
    with torch.no_grad():
        close(sae.encode_dense(x), z)
        close(sae.predict(x), z @ per[1]["W_dec"].sum(1) + per[1]["b_dec"])


def _transcoder(layer, family="jumprelu", skip=True, seed=0, **kw):
    hooks = dict(hook_name=f"blocks.{layer}.hook_mlp_in", target_hook=f"blocks.{layer}.hook_mlp_out")
    k = {"k": 3} if family == "topk" else {}
    cfg = SAEConfig(d_in=D, d_out=D, n_latents=F, family=family, skip=skip, normalize="dataset_scalar", **hooks, **k, **kw)
    sae = SparseAutoencoder(cfg, seed=seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
        if family == "jumprelu":
            sae.family.threshold.copy_(torch.randn(F, generator=g) * 0.3)
        sae.input_scale.fill_(1.5)
        sae.target_scale.fill_(0.7)
    return sae.eval()


def test_our_transcoder_set_and_clt_round_trip(tmp_path):
    ours = {0: _transcoder(0, seed=1), 1: _transcoder(1, family="standard", skip=False, seed=2)}
    save_transcoder_set(ours, tmp_path / "set")
    assert yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())["feature_input_hook"] == "hook_mlp_in"
    back = load_transcoder_set(tmp_path / "set")
    x = rnd(16, D, scale=2)
    with torch.no_grad():
        for layer, sae in ours.items():
            close(back[layer].encode_dense(x), sae.encode_dense(x))
            close(back[layer].predict(x), sae.predict(x))
    templates = dict(hook_name="blocks.{}.hook_mlp_in", target_hook="blocks.{}.hook_mlp_out")
    clt = SparseAutoencoder(SAEConfig(d_in=D, d_out=D, n_latents=F, family="jumprelu", layers=L, **templates), seed=3)
    with torch.no_grad():
        for layer in range(L):
            clt.families[layer].threshold.copy_(torch.randn(F, generator=g) * 0.3)
        clt.b_enc.add_(0.2)
    clt.save(tmp_path / "clt", format="circuit-tracer")
    assert sorted(p.name for p in (tmp_path / "clt").iterdir())[:2] == ["W_dec_0.safetensors", "W_dec_1.safetensors"]
    again = load_pretrained(tmp_path / "clt")
    xs = rnd(16, L, D, scale=2)
    with torch.no_grad():
        close(again.encode_dense(xs), clt.encode_dense(xs))
        close(again.predict(xs), clt.predict(xs))


def test_refusals_name_the_value(tmp_path):
    folder = tmp_path / "gap"
    config(folder, "cross_layer_transcoder")
    clt_files(folder)
    (folder / "W_dec_1.safetensors").unlink()
    with pytest.raises(ValueError, match=r"needs W_dec_<l>.safetensors for each; layers \[1\] are missing"):
        load_pretrained(folder)
    odd = tmp_path / "odd"
    config(odd, "crosscoder")
    with pytest.raises(ValueError, match="model_kind 'crosscoder' is not one circuit-tracer 0.5.0 loads"):
        load_pretrained(odd)
    skipped = tmp_path / "skip"
    config(skipped, "cross_layer_transcoder")
    clt_files(skipped)
    save_file(
        {"W_enc_0": rnd(F, D), "b_enc_0": rnd(F), "b_dec_0": rnd(D), "W_skip_0": rnd(D, D)}, skipped / "W_enc_0.safetensors"
    )
    with pytest.raises(ValueError, match=r"\['W_skip_0'\]: circuit-tracer's load_clt never reads a W_skip"):
        load_pretrained(skipped)
    wrong = tmp_path / "wrong"
    config(wrong, "transcoder_set")
    t = layer_file(wrong, 0, skip=True)
    save_file({**t, "W_skip": rnd(D, D + 1)}, wrong / "layer_0.safetensors")
    with pytest.raises(ValueError, match=r"W_skip has shape \(8, 9\), expected \(8, 8\) \(\[d_out=8, d_in=8\]\)"):
        load_pretrained(wrong / "layer_0.safetensors")
    with pytest.raises(ValueError, match=r"layers \[1\] are missing"):
        save_transcoder_set({0: _transcoder(0), 2: _transcoder(2)}, tmp_path / "out")
    with pytest.raises(ValueError, match="its TopK cannot be loaded from disk"):
        save_transcoder_set({0: _transcoder(0, family="topk")}, tmp_path / "out")
    with pytest.raises(ValueError, match="save_transcoder_set"):
        _transcoder(0).save(tmp_path / "out", format="circuit-tracer")
    assert not (tmp_path / "out").exists()
    clt = SparseAutoencoder(SAEConfig(d_in=D, d_out=D, n_latents=F, family="jumprelu", layers=L, skip=True))
    with pytest.raises(ValueError, match="never reads W_skip"):
        clt.save(tmp_path / "out", format="circuit-tracer")
    wide = SparseAutoencoder(
        SAEConfig(d_in=D, d_out=D + 2, n_latents=F, family="standard", hook_name="blocks.0.a", target_hook="blocks.0.b")
    )
    with pytest.raises(ValueError, match="d_out=10 from d_in=8: circuit-tracer's have one width"):
        save_transcoder_set({0: wide}, tmp_path / "out")
