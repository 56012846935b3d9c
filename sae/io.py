"""Our save format = SAELens's: cfg.json (SAELens keys plus ours) + sae_weights.safetensors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae.checkpoint import atomic_write
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FORMAT_KEY = "saekit"  # our full SAEConfig lives under this key
FAMILY_PREFIX = "family."
SAELENS_NORMALIZE = {"dataset_scalar": "none", "none": "none", "layer_norm": "layer_norm", "unit_norm": "unit_norm"}


def saelens_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    """cfg.json contents: SAELens v6 keys, older top-level keys, and our config under 'saekit'."""
    cfg = sae.cfg
    meta = {"model_name": cfg.model_name, "hook_name": cfg.hook_name}
    return {
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": SAELENS_NORMALIZE[cfg.normalize],
        **sae.family.saelens_cfg(),
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "metadata": meta,
        FORMAT_KEY: cfg.to_dict(),
    }


def save_sae(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write the dictionary so it acts on raw activations (the input scale folded into a copy)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if sae.cfg.normalize == "dataset_scalar" and float(sae.input_scale) != 1.0:
        sae = copy.deepcopy(sae)
        sae.fold_input_scale()
    tensors = {
        name: t.detach().contiguous().cpu()
        for name, t in sae.state_dict().items()
        if name != "input_scale"
    }
    tensors = {(n[len(FAMILY_PREFIX):] if n.startswith(FAMILY_PREFIX) else n): t for n, t in tensors.items()}
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    text = json.dumps(saelens_cfg(sae), indent=2)
    atomic_write(path / CFG_FILE, lambda tmp: Path(tmp).write_text(text))
    return path


def read_cfg(path: Path) -> SAEConfig:
    """SAEConfig from a cfg.json of ours or a plain SAELens one (v6 or the older flat keys)."""
    cfg_path = path / CFG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"no {CFG_FILE} in {path}: expected a folder written by SparseAutoencoder.save")
    try:
        raw = json.loads(cfg_path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path} holds a JSON {type(raw).__name__}, expected an object of config keys")
    if FORMAT_KEY in raw:
        return SAEConfig.from_dict(raw[FORMAT_KEY])
    try:
        return _saelens_cfg(raw)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{cfg_path} is not a SAELens or saekit config: {type(e).__name__} {e}") from e


def _saelens_cfg(raw: dict[str, Any]) -> SAEConfig:
    """SAEConfig from a plain SAELens cfg.json (v6 or the older flat keys)."""
    meta = raw.get("metadata", {})
    arch = raw.get("architecture", "topk" if "k" in raw else "standard")
    k = raw.get("k") or raw.get("activation_fn_kwargs", {}).get("k")
    return SAEConfig(
        d_in=raw["d_in"],
        n_latents=raw["d_sae"],
        family=arch,
        k=k,
        dtype=raw.get("dtype", "float32"),
        normalize="none",
        hook_name=meta.get("hook_name", raw.get("hook_name", raw.get("hook_point", ""))),
        model_name=meta.get("model_name", raw.get("model_name", "")),
    )


def load_sae(path: str | Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
    """Load a dictionary folder; errors name the file and what was wrong with it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dictionary folder {path} does not exist")
    cfg = read_cfg(path)
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"weights file {weights} is missing")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"weights file {weights} is truncated or corrupt: {e}") from e
    sae = SparseAutoencoder(cfg, device=device)
    expected = {n: t.shape for n, t in sae.state_dict().items() if n != "input_scale"}
    expected = {(n[len(FAMILY_PREFIX):] if n.startswith(FAMILY_PREFIX) else n): s for n, s in expected.items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{weights} lacks tensors {missing}; expected {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(f"{weights}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}")
    family_names = {n[len(FAMILY_PREFIX):] for n in sae.state_dict() if n.startswith(FAMILY_PREFIX)}
    state = {(FAMILY_PREFIX + n if n in family_names else n): t for n, t in tensors.items() if n in expected}
    state["input_scale"] = torch.ones(())
    sae.load_state_dict(state)
    return sae.to(device)
