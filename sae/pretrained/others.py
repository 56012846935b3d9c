"""The single-file formats: Gemma Scope params.npz, Llama Scope, OpenAI sparse_autoencoder .pt, dictionary_learning ae.pt.

Each becomes one of our families with its preprocessing made explicit:
- Gemma Scope (Lieberum et al. 2024): JumpReLU on x W_enc + b_enc (no b_dec subtraction), raw activations.
- Llama Scope (He et al. 2024): JumpReLU with one scalar threshold, inputs scaled by sqrt(d) / the dataset's
  average input norm (`dataset_average_activation_norm.in`); the output scale, when it differs, is folded.
- OpenAI sparse_autoencoder (Gao et al. 2024): (x - pre_bias) W^T + latent_bias, TopK(k) then ReLU, decoder +
  pre_bias; TopK files get the per-token LN its loader switches on (centre, divide by unbiased std + 1e-5).
- dictionary_learning (Marks et al.): AutoEncoder (ReLU, `bias` as b_dec), GatedAutoEncoder, AutoEncoderTopK,
  BatchTopKSAE and MatryoshkaBatchTopKSAE (a constant inference threshold), JumpReluAutoEncoder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae.io import build_sae, read_json, read_safetensors
from sae.model import SparseAutoencoder
from sae.pretrained.common import clamp_threshold, layer_hook, make_cfg, tensor_of, torch_load_weights

GEMMA_SCOPE_FILE = "params.npz"
LLAMA_SCOPE_CFG = "hyperparams.json"
LLAMA_SCOPE_WEIGHTS = "checkpoints/final.safetensors"
DICT_LEARNING_WEIGHTS = "ae.pt"
DICT_LEARNING_CFG = "config.json"


def load_gemma_scope(
    path: Path, device: torch.device | str | None = None, dtype: str | None = None, hook_name: str = "", model_name: str = ""
) -> SparseAutoencoder:
    """A Gemma Scope params.npz (a file or the folder holding it)."""
    path = Path(path)
    file = path / GEMMA_SCOPE_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {name: torch.from_numpy(np.array(npz[name])) for name in npz.files}
    except (ValueError, OSError) as e:
        raise ValueError(f"{file} is not a readable numpy .npz archive: {e}") from e
    W_enc = tensor_of(arrays, "W_enc", file)
    if W_enc.dim() != 2:
        raise ValueError(f"{file}: W_enc has shape {tuple(W_enc.shape)}; expected [d_in, d_sae]")
    d, n = W_enc.shape
    if not hook_name:  # layer_20/width_16k/average_l0_71/params.npz
        layer = next((p for p in file.parts if p.startswith("layer_")), "")
        hook_name = layer_hook(layer) if layer else ""
    cfg = make_cfg(file, d_in=d, d_sae=n, dtype=dtype or "float32", family="jumprelu", k=None, normalize="none",
                   options={"apply_b_dec_to_input": False}, hook_name=hook_name, model_name=model_name)
    tensors = {name: tensor_of(arrays, name, file) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    tensors["threshold"] = clamp_threshold(tensors["threshold"])
    return build_sae(cfg, tensors, file, device=device)


def load_llama_scope(
    folder: Path, device: torch.device | str | None = None, dtype: str | None = None, model_name: str = ""
) -> SparseAutoencoder:
    """A Llama Scope folder: hyperparams.json + checkpoints/final.safetensors (nn.Linear naming)."""
    folder = Path(folder)
    cfg_path = folder / LLAMA_SCOPE_CFG
    hp = read_json(cfg_path)
    d, n = hp.get("d_model"), hp.get("d_sae")
    norms = hp.get("dataset_average_activation_norm") or {}
    norm_in, norm_out = norms.get("in"), norms.get("out", norms.get("in"))
    threshold = hp.get("jump_relu_threshold")
    for name, v in (("dataset_average_activation_norm.in", norm_in), ("dataset_average_activation_norm.out", norm_out),
                    ("jump_relu_threshold", threshold)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (name != "jump_relu_threshold" and v <= 0):
            raise ValueError(f"{cfg_path}: {name}={v!r}; expected a finite positive number")
    cfg = make_cfg(cfg_path, d_in=d, d_sae=n, dtype=dtype or "float32", family="jumprelu", k=None,
                   normalize="dataset_scalar", options={"apply_b_dec_to_input": False},
                   hook_name=str(hp.get("hook_point_in", "")), model_name=model_name or str(hp.get("model_name", "")))
    state = read_safetensors(folder / LLAMA_SCOPE_WEIGHTS)
    s_in, s_out = math.sqrt(d) / norm_in, math.sqrt(d) / norm_out
    # the model divides its normalised reconstruction by s_in; Llama Scope divides by s_out: fold the ratio
    ratio = s_in / s_out
    tensors = {
        "W_enc": tensor_of(state, "encoder.weight", folder / LLAMA_SCOPE_WEIGHTS).T,
        "b_enc": tensor_of(state, "encoder.bias", folder / LLAMA_SCOPE_WEIGHTS),
        "W_dec": tensor_of(state, "decoder.weight", folder / LLAMA_SCOPE_WEIGHTS).T.double() * ratio,
        "b_dec": tensor_of(state, "decoder.bias", folder / LLAMA_SCOPE_WEIGHTS).double() * ratio,
        "threshold": clamp_threshold(torch.full((n,), float(threshold))),
    }
    return build_sae(cfg, tensors, folder / LLAMA_SCOPE_WEIGHTS, device=device, input_scale=s_in)


def load_openai(
    file: Path, device: torch.device | str | None = None, dtype: str | None = None, hook_name: str = "", model_name: str = ""
) -> SparseAutoencoder:
    """An OpenAI sparse_autoencoder state dict (.pt), read with weights_only=True."""
    file = Path(file)
    state = torch_load_weights(file)
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}; expected an OpenAI sparse_autoencoder state dict")
    activation = state.get("activation", "ReLU")
    act_state = state.get("activation_state_dict") or {}
    enc = tensor_of(state, "encoder.weight", file)
    if enc.dim() != 2:
        raise ValueError(f"{file}: encoder.weight has shape {tuple(enc.shape)}; expected [n_latents, d]")
    n, d = enc.shape
    if activation == "TopK":
        if act_state.get("postact_fn", "ReLU") != "ReLU":
            raise ValueError(f"{file}: TopK with postact_fn={act_state.get('postact_fn')!r} is not supported; expected 'ReLU'")
        family, k, normalize = "topk", act_state.get("k"), "layer_norm_std"
        if isinstance(k, torch.Tensor):
            k = int(k)
    elif activation == "ReLU":
        family, k, normalize = "standard", None, "none"
    else:
        raise ValueError(f"{file}: activation {activation!r} is not supported; expected 'TopK' or 'ReLU'")
    cfg = make_cfg(file, d_in=d, d_sae=n, dtype=dtype or "float32", family=family, k=k, normalize=normalize,
                   hook_name=hook_name, model_name=model_name)
    tensors = {
        "W_enc": enc.T,
        "b_enc": tensor_of(state, "latent_bias", file),
        "W_dec": tensor_of(state, "decoder.weight", file).T,
        "b_dec": tensor_of(state, "pre_bias", file),
    }
    return build_sae(cfg, tensors, file, device=device)


def _dl_cfg(folder: Path) -> dict[str, Any]:
    raw = read_json(folder / DICT_LEARNING_CFG)
    trainer = raw.get("trainer")
    if not isinstance(trainer, dict):
        raise ValueError(f"{folder / DICT_LEARNING_CFG} has no 'trainer' object; expected dictionary_learning's config.json")
    return trainer


DL_CLASSES = ("AutoEncoder", "GatedAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder",
              "MatryoshkaBatchTopKSAE")


def load_dictionary_learning(
    folder: Path, device: torch.device | str | None = None, dtype: str | None = None
) -> SparseAutoencoder:
    """A dictionary_learning folder: ae.pt (state dict, weights_only) + config.json {"trainer": {...}}."""
    folder = Path(folder)
    trainer = _dl_cfg(folder)
    cls = trainer.get("dict_class")
    if cls not in DL_CLASSES:
        raise ValueError(f"{folder / DICT_LEARNING_CFG}: dict_class {cls!r} is not supported; expected one of {DL_CLASSES}")
    file = folder / DICT_LEARNING_WEIGHTS
    state = torch_load_weights(file)
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}; expected a state dict")
    d, n = trainer.get("activation_dim"), trainer.get("dict_size")
    layer, submodule = trainer.get("layer"), trainer.get("submodule_name")
    hook = f"blocks.{layer}.hook_resid_post" if isinstance(layer, int) and submodule in (None, "resid_post") else ""
    common = {"hook_name": hook, "model_name": str(trainer.get("lm_name", "")), "normalize": "none"}
    k = state.get("k", trainer.get("k"))
    k = int(k) if isinstance(k, (int, torch.Tensor)) else k
    t = lambda name: tensor_of(state, name, file)  # noqa: E731
    if cls in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        tensors = {"W_enc": t("W_enc"), "b_enc": t("b_enc"), "W_dec": t("W_dec"), "b_dec": t("b_dec")}
    elif cls == "GatedAutoEncoder":
        tensors = {"W_enc": t("encoder.weight").T, "b_enc": t("gate_bias"), "W_dec": t("decoder.weight").T,
                   "b_dec": t("decoder_bias"), "r_mag": t("r_mag"), "b_mag": t("mag_bias")}
    else:
        tensors = {"W_enc": t("encoder.weight").T, "b_enc": t("encoder.bias"), "W_dec": t("decoder.weight").T,
                   "b_dec": t("bias") if cls == "AutoEncoder" else t("b_dec")}
    options: dict[str, Any] = {}
    if cls == "AutoEncoder":
        family, k = "standard", None
    elif cls == "GatedAutoEncoder":
        family, k = "gated", None
    elif cls == "AutoEncoderTopK":
        family = "topk"
    elif cls == "JumpReluAutoEncoder":
        family, k = "jumprelu", None
        options = {"apply_b_dec_to_input": bool(trainer.get("apply_b_dec_to_input", False))}
        tensors["threshold"] = clamp_threshold(t("threshold"))
    else:  # BatchTopK and Matryoshka: a scalar inference threshold, a JumpReLU at inference
        family = "batchtopk" if cls == "BatchTopKSAE" else "matryoshka"
        thr = float(t("threshold").reshape(-1)[0])
        if thr < 0:
            raise ValueError(f"{file}: the inference threshold is {thr} (never estimated); this dictionary cannot encode one token")
        tensors["threshold"] = torch.full((int(n),), thr)
        if cls == "MatryoshkaBatchTopKSAE":
            sizes = [int(v) for v in t("group_sizes").tolist()]
            options = {"prefixes": [int(v) for v in np.cumsum(sizes)]}
    cfg = make_cfg(folder / DICT_LEARNING_CFG, d_in=d, d_sae=n, dtype=dtype or "float32", family=family, k=k,
                   options=options, **common)
    return build_sae(cfg, tensors, file, device=device)
