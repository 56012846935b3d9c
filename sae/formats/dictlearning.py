"""dictionary_learning (Marks et al.): ae.pt (state dict, weights_only) + config.json {"trainer": {...}}.

Classes: AutoEncoder (ReLU; `bias` is b_dec), GatedAutoEncoder, AutoEncoderTopK, BatchTopKSAE and
MatryoshkaBatchTopKSAE (one scalar inference threshold: a JumpReLU at inference), JumpReluAutoEncoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae.formats.common import clamp_threshold, make_cfg, tensor_of, torch_load_weights
from sae.io import Format, read_json
from sae.model import SparseAutoencoder

DICT_LEARNING_WEIGHTS = "ae.pt"
DICT_LEARNING_CFG = "config.json"


def _dl_cfg(folder: Path) -> dict[str, Any]:
    raw = read_json(folder / DICT_LEARNING_CFG)
    trainer = raw.get("trainer")
    if not isinstance(trainer, dict):
        raise ValueError(f"{folder / DICT_LEARNING_CFG} has no 'trainer' object; expected dictionary_learning's config.json")
    return trainer


DL_CLASSES = (
    "AutoEncoder",
    "GatedAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "JumpReluAutoEncoder",
    "MatryoshkaBatchTopKSAE",
)


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
        tensors = {
            "W_enc": t("encoder.weight").T,
            "b_enc": t("gate_bias"),
            "W_dec": t("decoder.weight").T,
            "b_dec": t("decoder_bias"),
            "r_mag": t("r_mag"),
            "b_mag": t("mag_bias"),
        }
    else:
        tensors = {
            "W_enc": t("encoder.weight").T,
            "b_enc": t("encoder.bias"),
            "W_dec": t("decoder.weight").T,
            "b_dec": t("bias") if cls == "AutoEncoder" else t("b_dec"),
        }
    options: dict[str, Any] = {}
    scalar_threshold: float | None = None  # spread over the latents once the config has checked their number
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
        scalar_threshold = float(t("threshold").reshape(-1)[0])
        if scalar_threshold < 0:
            raise ValueError(
                f"{file}: the inference threshold is {scalar_threshold} (never estimated); this dictionary cannot encode "
                "one token"
            )
        if cls == "MatryoshkaBatchTopKSAE":
            sizes = [int(v) for v in t("group_sizes").tolist()]
            options = {"prefixes": [int(v) for v in np.cumsum(sizes)]}
    cfg = make_cfg(
        folder / DICT_LEARNING_CFG, d_in=d, d_sae=n, dtype=dtype or "float32", family=family, k=k, options=options, **common
    )
    if scalar_threshold is not None:
        tensors["threshold"] = torch.full((cfg.latents,), scalar_threshold)
    return SparseAutoencoder.from_tensors(cfg, tensors, file, device=device)


def detect(path: Path) -> bool:
    """ae.pt beside config.json (the folder, or the ae.pt itself)."""
    if path.is_file():
        return path.name == DICT_LEARNING_WEIGHTS and (path.parent / DICT_LEARNING_CFG).exists()
    return (path / DICT_LEARNING_WEIGHTS).exists() and (path / DICT_LEARNING_CFG).exists()


def _load(path: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    return load_dictionary_learning(path.parent if path.is_file() else path, device=device, dtype=dtype)


FORMAT = Format("dictionary-learning", f"{DICT_LEARNING_WEIGHTS} + {DICT_LEARNING_CFG}", detect=detect, load=_load)
