"""SAELens folders written in its published layout with random weights, against a reference forward written
here from SAELens's definitions (process_sae_in, the activation of each architecture, decode)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sae import load_pretrained

D, N = 12, 40


def _weights(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(D, N, generator=g) * 0.5,
        "b_enc": torch.randn(N, generator=g) * 0.1,
        "W_dec": torch.randn(N, D, generator=g) * 0.5,  # deliberately not unit-norm
        "b_dec": torch.randn(D, generator=g),
    }
    if arch == "jumprelu":
        t["threshold"] = torch.rand(N, generator=g) * 0.5 - 0.1  # a few negative: ReLU(pre) * 1[pre > theta]
    if arch == "gated":
        t["b_gate"] = t.pop("b_enc")
        t["r_mag"] = torch.randn(N, generator=g) * 0.2
        t["b_mag"] = torch.randn(N, generator=g) * 0.1
    if arch == "batchtopk":
        t["topk_threshold"] = torch.tensor(0.3)
    return t


def reference(cfg: dict, t: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, reconstruction) as SAELens 6 computes them."""
    arch = cfg.get("architecture", "standard")
    sae_in, mu, std = x, None, None
    if cfg.get("normalize_activations") == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        sae_in = (x - mu) / (std + 1e-5)
    if cfg.get("apply_b_dec_to_input", True):
        sae_in = sae_in - t["b_dec"]
    W_dec = t["W_dec"]
    if arch == "gated":
        h = sae_in @ t["W_enc"]
        z = (h + t["b_gate"] > 0).float() * torch.relu(h * t["r_mag"].exp() + t["b_mag"])
    else:
        pre = sae_in @ t["W_enc"] + t["b_enc"]
        if arch in ("topk", "abstopk"):
            k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
            if cfg.get("rescale_acts_by_decoder_norm"):
                pre = pre * W_dec.norm(dim=-1)
            idx = (pre.abs() if arch == "abstopk" else pre).topk(k, dim=-1).indices
            vals = pre.gather(-1, idx)
            z = torch.zeros_like(pre).scatter(-1, idx, vals if arch == "abstopk" else vals.relu())
        elif arch in ("jumprelu", "batchtopk"):
            thr = t["threshold"] if arch == "jumprelu" else t["topk_threshold"]
            z = pre.relu() * (pre > thr)
        else:
            z = pre.relu()
    dz = z / W_dec.norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else z
    out = dz @ W_dec + t["b_dec"]
    if mu is not None:
        out = out * std + mu
    return z, out


CASES = {
    "standard": {"architecture": "standard"},
    "standard_no_b_dec": {"architecture": "standard", "apply_b_dec_to_input": False},
    "topk": {"architecture": "topk", "k": 5},
    "topk_rescaled_no_b_dec": {
        "architecture": "topk",
        "k": 5,
        "rescale_acts_by_decoder_norm": True,
        "apply_b_dec_to_input": False,
    },
    "topk_layer_norm": {"architecture": "topk", "k": 5, "normalize_activations": "layer_norm"},
    "abstopk": {"architecture": "abstopk", "k": 5},
    "jumprelu": {"architecture": "jumprelu"},
    "jumprelu_no_b_dec": {"architecture": "jumprelu", "apply_b_dec_to_input": False},
    "gated": {"architecture": "gated"},
    "batchtopk_training_file": {"architecture": "batchtopk", "k": 5},
}


def write(folder, cfg: dict, tensors: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "sae_weights.safetensors")


@pytest.mark.parametrize("case", sorted(CASES))
def test_v6_layout_matches_reference(case, tmp_path):
    arch = CASES[case]["architecture"]
    cfg = {
        "d_in": D,
        "d_sae": N,
        "dtype": "float32",
        "device": "cpu",
        "normalize_activations": "none",
        "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre", "sae_lens_version": "6.5.0"},
        **CASES[case],
    }
    t = _weights(arch)
    write(tmp_path / case, cfg, t)
    sae = load_pretrained(tmp_path / case).eval()
    assert sae.cfg.hook_name == "blocks.3.hook_resid_pre" and sae.cfg.model_name == "gpt2"
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    z_ref, out_ref = reference(cfg, t, x)
    assert (z_ref != 0).any(), "the reference fires nothing: the case tests nothing"
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x).x_hat, out_ref, atol=1e-5, rtol=1e-5)


def test_pre_6_flat_keys_are_migrated(tmp_path):
    cfg = {
        "d_in": D,
        "d_sae": N,
        "dtype": "torch.float32",
        "hook_point": "blocks.2.hook_resid_pre",
        "model_name": "gpt2",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "normalize_activations": False,
        "apply_b_dec_to_input": True,
    }
    t = _weights("topk")
    t["scaling_factor"] = torch.rand(N) + 0.5  # pre-6 finetuning scale: decode reads z * s @ W_dec
    write(tmp_path, cfg, t)
    sae = load_pretrained(tmp_path).eval()
    assert (sae.cfg.family, sae.cfg.k, sae.cfg.hook_name) == ("topk", 3, "blocks.2.hook_resid_pre")
    x = torch.randn(32, D)
    z, _ = reference({**cfg, "architecture": "topk"}, t, x)
    with torch.no_grad():
        torch.testing.assert_close(sae(x).x_hat, (z * t["scaling_factor"]) @ t["W_dec"] + t["b_dec"], atol=1e-5, rtol=1e-5)


def test_sparsity_file_becomes_firing_frequency(tmp_path):
    cfg = {"d_in": D, "d_sae": N, "architecture": "standard", "metadata": {"sae_lens_version": "6.0.0"}}
    write(tmp_path, cfg, _weights("standard"))
    freq = torch.rand(N) * 0.1
    save_file({"sparsity": torch.log10(freq + 1e-10)}, tmp_path / "sparsity.safetensors")
    torch.testing.assert_close(load_pretrained(tmp_path).firing_frequency, freq, atol=1e-7, rtol=1e-4)


def test_expected_average_scale_from_activation_scaler(tmp_path):
    cfg = {
        "d_in": D,
        "d_sae": N,
        "architecture": "standard",
        "normalize_activations": "expected_average_only_in",
        "metadata": {"sae_lens_version": "6.0.0"},
    }
    t = _weights("standard")
    write(tmp_path, cfg, t)
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5}))
    sae = load_pretrained(tmp_path).eval()
    x = torch.randn(16, D)
    _, out = reference(cfg, t, x * 2.5)  # trained on scaled inputs; outputs scaled back
    with torch.no_grad():
        torch.testing.assert_close(sae(x).x_hat, out / 2.5, atol=1e-5, rtol=1e-5)


def test_expected_average_without_scale_warns(tmp_path):
    cfg = {
        "d_in": D,
        "d_sae": N,
        "architecture": "standard",
        "normalize_activations": "expected_average_only_in",
        "metadata": {"sae_lens_version": "6.0.0"},
    }
    write(tmp_path, cfg, _weights("standard"))
    with pytest.warns(UserWarning, match="no scaling factor is known"):
        load_pretrained(tmp_path)


def test_unknown_architecture_refused(tmp_path):
    cfg = {"d_in": D, "d_sae": N, "architecture": "temporal", "metadata": {"sae_lens_version": "6.0.0"}}
    write(tmp_path, cfg, _weights("standard"))
    with pytest.raises(ValueError, match="architecture 'temporal' is not supported"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"])
def test_transcoders_match_reference_and_save_back(tmp_path, arch):
    """SAELens's transcoders (sae_lens/saes/transcoder.py): pre = x W_enc + b_enc (no b_dec), ReLU or
    ReLU(pre) * 1[pre > theta], y = z W_dec + b_dec (+ x W_skip^T, W_skip [d_out, d_in])."""
    O = 7
    t = _weights("jumprelu" if arch.startswith("jumprelu") else "standard")
    t["W_dec"], t["b_dec"] = t["W_dec"][:, :O].contiguous(), t["b_dec"][:O].contiguous()
    if "skip" in arch:
        t["W_skip"] = torch.randn(O, D, generator=torch.Generator().manual_seed(2)) * 0.3
    meta = {"hook_name": "blocks.3.hook_mlp_in", "hook_name_out": "blocks.3.hook_mlp_out", "sae_lens_version": "6.54.12"}
    cfg = {"d_in": D, "d_sae": N, "d_out": O, "architecture": arch, "apply_b_dec_to_input": False, "metadata": meta}
    write(tmp_path / "theirs", cfg, t)
    sae = load_pretrained(tmp_path / "theirs").eval()
    assert (sae.cfg.d_out, sae.cfg.target_hook, sae.cfg.skip) == (O, "blocks.3.hook_mlp_out", "skip" in arch)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1)) * 2
    pre = x @ t["W_enc"] + t["b_enc"]
    z = pre.relu() * (pre > t["threshold"]) if "threshold" in t else pre.relu()
    y = z @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].T if "W_skip" in t else 0)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.predict(x), y, atol=1e-5, rtol=1e-5)
    for layout in ("saelens", "saelens-strict"):
        sae.save(tmp_path / layout, format=layout)
        written = json.loads((tmp_path / layout / "cfg.json").read_text())
        assert (written["architecture"], written["d_out"], written["apply_b_dec_to_input"]) == (arch, O, False)
        assert written["metadata"]["hook_name_out"] == "blocks.3.hook_mlp_out"
        with torch.no_grad():
            torch.testing.assert_close(load_pretrained(tmp_path / layout).predict(x), y, atol=1e-5, rtol=1e-5)


def test_transcoder_d_out_from_the_weights_and_refused_when_they_disagree(tmp_path):
    t = _weights("standard")
    cfg = {"d_in": D, "d_sae": N, "architecture": "transcoder", "apply_b_dec_to_input": False}
    write(tmp_path / "no_d_out", {**cfg, "metadata": {"sae_lens_version": "6.54.12"}}, t)
    assert load_pretrained(tmp_path / "no_d_out").cfg.d_out == D
    write(tmp_path / "wrong", {**cfg, "d_out": D + 3, "metadata": {"sae_lens_version": "6.54.12"}}, t)
    with pytest.raises(ValueError, match=r"W_dec has shape \(40, 12\), expected \(40, 15\) \(the file's decoder writes 12"):
        load_pretrained(tmp_path / "wrong")
    skip = {**cfg, "architecture": "skip_transcoder", "d_out": D, "metadata": {"sae_lens_version": "6.54.12"}}
    write(tmp_path / "skip", skip, {**t, "W_skip": torch.zeros(D, D + 1)})
    with pytest.raises(ValueError, match=r"W_skip has shape \(12, 13\), expected \(12, 12\) \(\[d_out=12, d_in=12\]\)"):
        load_pretrained(tmp_path / "skip")
