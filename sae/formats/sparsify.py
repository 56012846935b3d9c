"""EleutherAI sparsify: one folder per hook point holding cfg.json + sae.safetensors (read from eai-sparsify 1.3).

Tensors: encoder.weight [n, d] (transposed relative to SAELens), encoder.bias [n], W_dec [n, d], b_dec [d].
Encode: ReLU((x - b_dec) W^T + b) then top-k (= our TopK); decode: gather-sum of W_dec rows + b_dec.
`multi_topk` only changes the training loss (inference is top-k). Early files carry `signed` (top-k by
magnitude, sign kept, with an encoder bias): our AbsTopK with its encoder_bias option. Transcoders and
skip connections (W_skip) are refused: they are not dictionaries of the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.families import FAMILIES
from sae.formats.common import layer_hook, make_cfg
from sae.io import Format, read_json, read_safetensors, write_json, write_safetensors
from sae.model import SparseAutoencoder

CFG_FILE = "cfg.json"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"


def load_sparsify(
    folder: Path, device: torch.device | str | None = None, dtype: str | None = None, model_name: str = ""
) -> SparseAutoencoder:
    """One sparsify hook folder as our dictionary (TopK, or AbsTopK for early `signed` files)."""
    folder = Path(folder)
    cfg_path = folder / CFG_FILE
    raw = read_json(cfg_path)
    if raw.get("transcode"):
        raise ValueError(f"{cfg_path}: sparsify transcoders (transcode=true) are not supported yet (only SAEs)")
    if raw.get("skip_connection"):
        raise ValueError(f"{cfg_path}: sparsify skip-connection checkpoints (W_skip) are not supported yet")
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise ValueError(f"{cfg_path}: sparsify activation {activation!r} is not supported; expected 'topk'")
    state = read_safetensors(folder / SPARSIFY_WEIGHTS_FILE)
    if "W_skip" in state:
        raise ValueError(f"{folder / SPARSIFY_WEIGHTS_FILE} holds W_skip: skip-connection checkpoints are not supported yet")
    weight = state.get("encoder.weight")
    if weight is None or weight.dim() != 2:
        raise ValueError(f"{folder / SPARSIFY_WEIGHTS_FILE} lacks a 2-D 'encoder.weight'; it holds {sorted(state)}")
    n, d = weight.shape
    d_in = raw.get("d_in", d)
    num_latents = raw.get("num_latents") or 0
    expected_n = num_latents or (d_in * raw["expansion_factor"] if isinstance(raw.get("expansion_factor"), int) else n)
    if (d_in, expected_n) != (d, n):
        raise ValueError(f"{cfg_path} says d_in={d_in}, {expected_n} latents; encoder.weight has shape {(n, d)}")
    signed = bool(raw.get("signed", False))
    cfg = make_cfg(
        cfg_path,
        d_in=d,
        d_sae=n,
        dtype=dtype or str(weight.dtype),
        family="abstopk" if signed else "topk",
        k=raw.get("k"),
        normalize="none",
        options={"encoder_bias": True} if signed else {},
        hook_name=layer_hook(folder.name),
        model_name=model_name,
    )
    missing = [name for name in ("encoder.bias", "W_dec", "b_dec") if name not in state]
    if missing:
        raise ValueError(f"{folder / SPARSIFY_WEIGHTS_FILE} lacks {missing}; it holds {sorted(state)}")
    tensors = {"W_enc": weight.T, "b_enc": state["encoder.bias"], "W_dec": state["W_dec"], "b_dec": state["b_dec"]}
    return SparseAutoencoder.from_tensors(cfg, tensors, folder / SPARSIFY_WEIGHTS_FILE, device=device)


def sparsify_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    """sparsify's cfg.json for a TopK dictionary (SparseCoderConfig fields plus d_in)."""
    cfg = sae.cfg
    return {
        "activation": "topk",
        "expansion_factor": max(1, cfg.latents // cfg.d_in),
        "normalize_decoder": True,
        "num_latents": cfg.n_latents,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": cfg.d_in,
    }


def save_sparsify(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write one sparsify hook folder; only per-token top-k dictionaries on raw activations fit the layout."""
    if not sae.family.sparsify_export:
        able = " and ".join(name for name, family in FAMILIES.items() if family.sparsify_export)
        raise ValueError(
            f"family {sae.cfg.family!r} cannot be saved for sparsify: its SparseCoder encodes ReLU + per-token top-k "
            f"only (families {able} at its k)"
        )
    if sae.cfg.normalize not in ("none", "dataset_scalar"):
        raise ValueError(f"normalize={sae.cfg.normalize!r} cannot be saved for sparsify: it reads raw activations")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sae = sae.folded()
    tensors = {
        "encoder.weight": sae.W_enc.detach().T.contiguous().cpu(),
        "encoder.bias": sae.b_enc.detach().contiguous().cpu(),
        "W_dec": sae.W_dec.detach().contiguous().cpu(),
        "b_dec": sae.b_dec.detach().contiguous().cpu(),
    }
    write_safetensors(path / SPARSIFY_WEIGHTS_FILE, tensors)
    write_json(path / CFG_FILE, sparsify_cfg(sae))
    return path


def detect(path: Path) -> bool:
    """A folder holding cfg.json and sae.safetensors."""
    return path.is_dir() and (path / CFG_FILE).exists() and (path / SPARSIFY_WEIGHTS_FILE).exists()


FORMAT = Format("sparsify", f"{CFG_FILE} + {SPARSIFY_WEIGHTS_FILE}", detect=detect, load=load_sparsify, save=save_sparsify)
