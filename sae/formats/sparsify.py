"""EleutherAI sparsify: one folder per hook point holding cfg.json + sae.safetensors (read from eai-sparsify 1.3).

Tensors: encoder.weight [n, d] (transposed relative to SAELens), encoder.bias [n], W_dec [n, d], b_dec [d], and
W_skip [d, d] with `skip_connection`. Encode: ReLU((x - b_dec) W^T + b) then top-k (= our TopK); a transcoder
(`transcode`: trained on a module's input to predict its output) reads x itself, without the b_dec subtraction;
decode: gather-sum of W_dec rows + b_dec, plus x W_skip^T with a skip connection. `multi_topk` only changes the
training loss (inference is top-k). Early files carry `signed` (top-k by magnitude, sign kept, with an encoder
bias): our AbsTopK with its encoder_bias option.

sparsify's SparseCoder has one width: a transcoder's d_out equals its d_in, and a skip connection without
`transcode` (an SAE that reconstructs its input, plus x W_skip^T) is read as our skip transcoder whose target is
its own hook, b_dec W^T folded into the encoder bias. A transcoder's folder is named after the module it wraps
(`layers.3.mlp`, `h.3.mlp`): its hooks are that block's MLP input and output (`blocks.3.hook_mlp_in` ->
`blocks.3.hook_mlp_out`). Saving refuses what the layout cannot hold: CLTs, d_out != d_in, selections other than
per-token top-k.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sae.families import FAMILIES
from sae.formats.common import block_hook, layer_hook, make_cfg
from sae.io import Format, read_json, read_safetensors, write_json, write_safetensors
from sae.model import SparseAutoencoder

CFG_FILE = "cfg.json"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"
MLP_MODULE = re.compile(r"(?:.*\.)?(?:layers|h)\.(\d+)\.mlp")  # HF module paths of a block's MLP


def transcoder_hooks(module: str) -> tuple[str, str]:
    """(input hook, target hook) of a sparsify transcoder trained on `module` (its folder name): a block's MLP
    gives our MLP hooks; any other module keeps its name as the input hook and no target name."""
    m = MLP_MODULE.fullmatch(module)
    if m is None:
        return module, ""
    return block_hook(m.group(1), "hook_mlp_in"), block_hook(m.group(1), "hook_mlp_out")


def _hooks_of(folder: Path, raw: dict[str, Any]) -> tuple[str, str]:
    """(hook_name, target_hook) of a hook folder: a transcoder's module hooks, or the folder's hook twice for a
    skip SAE (a transcoder of its own input), or the hook and "" for an SAE."""
    if raw.get("transcode"):
        return transcoder_hooks(folder.name)
    hook = layer_hook(folder.name)
    return hook, hook if raw.get("skip_connection") else ""


def load_sparsify(
    folder: Path, device: torch.device | str | None = None, dtype: str | None = None, model_name: str = ""
) -> SparseAutoencoder:
    """One sparsify hook folder as our dictionary (TopK, or AbsTopK for early `signed` files; a transcoder or skip
    transcoder with `transcode` / `skip_connection`)."""
    folder = Path(folder)
    cfg_path = folder / CFG_FILE
    raw = read_json(cfg_path)
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise ValueError(f"{cfg_path}: sparsify activation {activation!r} is not supported; expected 'topk'")
    transcode, skip = bool(raw.get("transcode", False)), bool(raw.get("skip_connection", False))
    weights = folder / SPARSIFY_WEIGHTS_FILE
    state = read_safetensors(weights)
    if "W_skip" in state and not skip:
        raise ValueError(f"{weights} holds W_skip but {cfg_path} says skip_connection=false (sparsify refuses it too)")
    if skip and "W_skip" not in state:
        raise ValueError(f"{cfg_path} says skip_connection=true but {weights} holds no W_skip; it holds {sorted(state)}")
    weight = state.get("encoder.weight")
    if weight is None or weight.dim() != 2:
        raise ValueError(f"{weights} lacks a 2-D 'encoder.weight'; it holds {sorted(state)}")
    n, d = weight.shape
    d_in = raw.get("d_in", d)
    num_latents = raw.get("num_latents") or 0
    expected_n = num_latents or (d_in * raw["expansion_factor"] if isinstance(raw.get("expansion_factor"), int) else n)
    if (d_in, expected_n) != (d, n):
        raise ValueError(f"{cfg_path} says d_in={d_in}, {expected_n} latents; encoder.weight has shape {(n, d)}")
    signed = bool(raw.get("signed", False))
    hook_name, target_hook = _hooks_of(folder, raw)
    transcoder = {"d_out": d, "skip": skip, "target_hook": target_hook} if transcode or skip else {}
    cfg = make_cfg(
        cfg_path,
        d_in=d,
        d_sae=n,
        dtype=dtype or str(weight.dtype),
        family="abstopk" if signed else "topk",
        k=raw.get("k"),
        normalize="none",
        options={"encoder_bias": True} if signed else {},
        hook_name=hook_name,
        model_name=model_name,
        **transcoder,
    )
    missing = [name for name in ("encoder.bias", "W_dec", "b_dec") if name not in state]
    if missing:
        raise ValueError(f"{weights} lacks {missing}; it holds {sorted(state)}")
    tensors = {"W_enc": weight.T, "b_enc": state["encoder.bias"], "W_dec": state["W_dec"], "b_dec": state["b_dec"]}
    if skip:
        tensors["W_skip"] = state["W_skip"]
        if not transcode:  # its encoder reads x - b_dec, ours (a transcoder's) x: fold b_dec W^T into the bias
            fold = state["b_dec"].double() @ weight.double().T
            tensors["b_enc"] = (state["encoder.bias"].double() - fold).to(weight.dtype)
    return SparseAutoencoder.from_tensors(cfg, tensors, weights, device=device)


def transcodes(sae: SparseAutoencoder) -> bool:
    """Whether sparsify's `transcode` describes it: a transcoder that predicts another hook than it reads (one
    whose target is its own hook, a skip SAE, is written as sparsify's skip SAE, b_dec W_enc folded back)."""
    cfg = sae.cfg
    return cfg.is_transcoder and not (cfg.target_hook and cfg.target_hook == cfg.hook_name)


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
        "skip_connection": cfg.skip,
        "transcode": transcodes(sae),  # our transcoders read x itself, as sparsify's do when transcoding
        "d_in": cfg.d_in,
    }


def check_sparsify_representable(sae: SparseAutoencoder) -> None:
    """Raise, in one line, when sparsify's SparseCoder cannot hold this dictionary."""
    cfg = sae.cfg
    if cfg.is_clt:
        raise ValueError("a CLT cannot be saved for sparsify: its SparseCoder is one encoder and one decoder")
    if cfg.is_transcoder and cfg.out_width != cfg.d_in:
        raise ValueError(
            f"this transcoder predicts d_out={cfg.out_width} from d_in={cfg.d_in}: sparsify's SparseCoder has one "
            "width (W_dec [n, d_in], b_dec [d_in]), so it cannot be saved for sparsify"
        )
    if not sae.family.sparsify_export:
        able = " and ".join(name for name, family in FAMILIES.items() if family.sparsify_export)
        raise ValueError(
            f"family {cfg.family!r} cannot be saved for sparsify: its SparseCoder encodes ReLU + per-token top-k "
            f"only (families {able} at its k)"
        )
    if cfg.normalize not in ("none", "dataset_scalar"):
        raise ValueError(f"normalize={cfg.normalize!r} cannot be saved for sparsify: it reads raw activations")


def save_sparsify(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write one sparsify hook folder; only per-token top-k dictionaries on raw activations fit the layout."""
    check_sparsify_representable(sae)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sae = sae.folded()
    tensors = {
        "encoder.weight": sae.W_enc.detach().T.contiguous().cpu(),
        "encoder.bias": sae.b_enc.detach().contiguous().cpu(),
        "W_dec": sae.W_dec.detach().contiguous().cpu(),
        "b_dec": sae.b_dec.detach().contiguous().cpu(),
    }
    if sae.cfg.is_transcoder and not transcodes(sae):  # sparsify's SAE encoder reads x - b_dec
        fold = tensors["b_dec"].double() @ sae.W_enc.detach().cpu().double()
        tensors["encoder.bias"] = (tensors["encoder.bias"].double() + fold).to(tensors["encoder.bias"].dtype)
    if sae.cfg.skip:
        tensors["W_skip"] = sae.W_skip.detach().contiguous().cpu()
    write_safetensors(path / SPARSIFY_WEIGHTS_FILE, tensors)
    write_json(path / CFG_FILE, sparsify_cfg(sae))
    return path


def detect(path: Path) -> bool:
    """A folder holding cfg.json and sae.safetensors."""
    return path.is_dir() and (path / CFG_FILE).exists() and (path / SPARSIFY_WEIGHTS_FILE).exists()


def hooks(path: Path) -> list[str]:
    """The hook a hook folder's dictionary reads, from its name and cfg.json (nothing loaded)."""
    try:
        raw = read_json(path / CFG_FILE)
    except (ValueError, FileNotFoundError):
        return []
    return [_hooks_of(path, raw)[0]]


FORMAT = Format(
    "sparsify", f"{CFG_FILE} + {SPARSIFY_WEIGHTS_FILE}", detect=detect, load=load_sparsify, save=save_sparsify, hooks=hooks
)
