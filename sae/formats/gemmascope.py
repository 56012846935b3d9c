"""Gemma Scope (Lieberum et al. 2024): params.npz per (layer, width, L0) folder; Gemma Scope 2 (Gemma 3) folders.

JumpReLU on x W_enc + b_enc (no b_dec subtraction), raw activations; arrays read with allow_pickle=False. Read in
the terms of SAELens 6.54's `gemma_2`, `gemma_2_transcoder` and `gemma_3` loaders and circuit-tracer 0.5.0's
Gemma Scope 2 loaders; their JumpReLU is ReLU(pre) * 1[pre > theta], ours pre * 1[pre > theta]: equal once the
thresholds are clamped at 0 (Gemma Scope's are positive by construction).

- Gemma Scope transcoders (`google/gemma-scope-2b-pt-transcoders`): the same params.npz, told apart only by the
  repo's name (as SAELens and circuit-tracer tell them): a path with a `gemma-scope-*-transcoders` folder, or
  format="gemma-scope-transcoder". They read `blocks.{l}.ln2.hook_normalized` and predict `blocks.{l}.hook_mlp_out`.
- Gemma Scope 2 folders: params.safetensors (w_enc [d, n], w_dec [n, d_out], b_enc, b_dec, threshold) and an
  optional config.json (when absent, inferred from the folder's name, as SAELens does). A folder under
  `transcoder/` or `transcoder_all/` (or a config with `affine_connection`, or weights with an
  `affine_skip_connection`) is a transcoder `blocks.{l}.hook_mlp_in` -> `blocks.{l}.hook_mlp_out`; its affine skip
  [d_in, d_out] is our W_skip transposed.
- Gemma Scope 2 CLTs (`clt/<width_l0>/` folders): one safetensors file per layer (its name holds `layer_{l}`),
  each with w_enc [d, n], b_enc, b_dec (the bias of output layer l), threshold, w_dec [n, L, d_out] (circuit-tracer
  keeps the slices l.. of source layer l; a file holding [n, L - l, d_out] is read as it is) and optionally
  affine_skip_connection [d, d_out] (x @ affine, per layer). Every layer from 0 to the last must have its file.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from sae.formats.common import block_hook, clamp_threshold, layer_hook, layer_of, raw_cfg, tensor_of, tensor_shapes
from sae.io import Format, read_json, read_safetensors
from sae.model import SparseAutoencoder

GEMMA_SCOPE_FILE = "params.npz"
TRANSCODER_REPO = re.compile(r"(models--google--)?gemma-scope-[\w.-]*transcoders")  # the repo's (cache) folder


def load_gemma_scope(
    path: Path,
    device: torch.device | str | None = None,
    dtype: str | None = None,
    hook_name: str = "",
    model_name: str = "",
    transcoder: bool = False,
) -> SparseAutoencoder:
    """A Gemma Scope params.npz (a file or the folder holding it); `transcoder`: one of Gemma Scope's transcoders."""
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
    layer = next((p for p in file.parts if p.startswith("layer_")), "")  # layer_20/width_16k/average_l0_71/params.npz
    pair: dict = {}
    if transcoder:
        W_dec = tensor_of(arrays, "W_dec", file)
        number = layer_of(layer)
        pair = {"d_out": int(W_dec.shape[-1]), "target_hook": block_hook(number, "hook_mlp_out") if number is not None else ""}
        hook_name = hook_name or (block_hook(number, "ln2.hook_normalized") if number is not None else "")
    elif not hook_name:
        hook_name = layer_hook(layer) if layer else ""
    cfg = raw_cfg(
        file,
        d_in=d,
        d_sae=n,
        dtype=dtype,
        hook_name=hook_name,
        model_name=model_name,
        **pair,
    )
    tensors = {name: tensor_of(arrays, name, file) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    tensors["threshold"] = clamp_threshold(tensors["threshold"])
    return SparseAutoencoder.from_tensors(cfg, tensors, file, device=device)


GEMMA_SCOPE_2_FILE = "params.safetensors"
GEMMA_SCOPE_2_CFG = "config.json"
GEMMA_SCOPE_2_HOOKS = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out"}
GEMMA_SCOPE_2_NAMES = (("W_enc", "w_enc"), ("W_dec", "w_dec"), ("b_enc", "b_enc"), ("b_dec", "b_dec"), ("threshold", "threshold"))
AFFINE = "affine_skip_connection"


def _gemma_scope_2_cfg(folder: Path) -> dict:
    """A Gemma Scope 2 folder's config.json, or the one SAELens infers from the folder's name when it has none; its
    architecture must be jump_relu."""
    file = folder / GEMMA_SCOPE_2_CFG
    raw = read_json(file) if file.exists() else {"architecture": "jump_relu"}
    if raw.get("architecture") != "jump_relu":
        raise ValueError(f"{file}: architecture {raw.get('architecture')!r}; expected 'jump_relu'")
    return raw


def _affine_skip(state: dict[str, torch.Tensor], d_in: int, d_out: int, source: Path) -> torch.Tensor | None:
    """Our W_skip [d_out, d_in] from an affine_skip_connection [d_in, d_out] (x @ affine), or None without one."""
    affine = state.get(AFFINE)
    if affine is None:
        return None
    if tuple(affine.shape) != (d_in, d_out):
        raise ValueError(f"{source}: {AFFINE} has shape {tuple(affine.shape)}, expected [d_in={d_in}, d_out={d_out}]")
    return affine.T


def load_gemma_scope_2(folder: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    """A Gemma Scope 2 folder (Gemma 3): params.safetensors with w_enc [d, n], w_dec [n, d_out], b_enc, b_dec,
    threshold (and an affine skip for `_affine` transcoders) + config.json {"architecture": "jump_relu", ...}: an
    SAE, or a transcoder for `transcoder`/`transcoder_all` folders."""
    folder = Path(folder)
    raw = _gemma_scope_2_cfg(folder)
    where = f"{folder.parent.name}/{folder.name}"  # the site folder and the dictionary's, as in the repo
    file = folder / GEMMA_SCOPE_2_FILE
    state = read_safetensors(file)
    transcoder = "transcoder" in where or "affine_connection" in raw or "hf_hook_point_out" in raw or AFFINE in state
    W_enc, W_dec = tensor_of(state, "w_enc", file), tensor_of(state, "w_dec", file)
    if W_enc.dim() != 2:
        raise ValueError(f"{file}: w_enc has shape {tuple(W_enc.shape)}; expected [d_in, d_sae]")
    layer = layer_of(folder.name)
    pair: dict = {}
    if transcoder:
        d_out = int(W_dec.shape[-1])
        if raw.get("affine_connection") is True and AFFINE not in state:
            raise ValueError(f"{folder / GEMMA_SCOPE_2_CFG} says affine_connection but {file} holds no {AFFINE}")
        pair = {"d_out": d_out, "skip": AFFINE in state}
        hook_name = block_hook(layer, "hook_mlp_in") if layer is not None else str(raw.get("hf_hook_point_in", ""))
        pair["target_hook"] = block_hook(layer, "hook_mlp_out") if layer is not None else str(raw.get("hf_hook_point_out", ""))
    else:
        site = next((hook for key, hook in GEMMA_SCOPE_2_HOOKS.items() if key in where), None)
        hook_name = block_hook(layer, site) if layer is not None and site else str(raw.get("hf_hook_point_in", ""))
    cfg = raw_cfg(
        folder / GEMMA_SCOPE_2_CFG,
        d_in=W_enc.shape[0],
        d_sae=W_enc.shape[1],
        dtype=dtype,
        hook_name=hook_name,
        model_name=str(raw.get("model_name", "")),
        **pair,
    )
    tensors = {ours: tensor_of(state, theirs, file) for ours, theirs in GEMMA_SCOPE_2_NAMES}
    tensors["threshold"] = clamp_threshold(tensors["threshold"])
    skip = _affine_skip(state, cfg.d_in, cfg.out_width, file)
    if skip is not None:
        tensors["W_skip"] = skip
    return SparseAutoencoder.from_tensors(cfg, tensors, file, device=device)


def clt_layer_files(folder: Path) -> dict[int, Path]:
    """A Gemma Scope 2 CLT folder's per-layer safetensors files, by the layer their names hold."""
    found: dict[int, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        layer = layer_of(file.stem)
        if layer is not None:
            if layer in found:
                raise ValueError(f"{folder}: two files for layer {layer}: {found[layer].name} and {file.name}")
            found[layer] = file
    return found


def _clt_decoder(w_dec: torch.Tensor, layer: int, layers: int, file: Path) -> torch.Tensor:
    """Source layer `layer`'s decoder [n, L - l, d_out] from a file's w_dec: [n, L, d_out] (slices l.., as
    circuit-tracer keeps them) or already [n, L - l, d_out]."""
    if w_dec.shape[1] == layers - layer:
        return w_dec
    earlier = w_dec[:, :layer]
    if earlier.numel() and bool(earlier.ne(0).any()):
        warnings.warn(
            f"{file}: w_dec of layer {layer} writes into earlier layers (max |w| = {earlier.abs().max().item():.3g}); "
            "a CLT's feature writes only into its own and later layers, so those slices are dropped, as circuit-tracer "
            "drops them",
            stacklevel=3,
        )
    return w_dec[:, layer:]


def load_gemma_scope_2_clt(folder: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    """A Gemma Scope 2 CLT folder (one file per layer) as one CLT over all its layers."""
    folder = Path(folder)
    raw = _gemma_scope_2_cfg(folder)
    files = clt_layer_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no per-layer safetensors files (names with layer_<n>)")
    L = max(files) + 1
    missing = sorted(set(range(L)) - set(files))
    if missing:
        raise ValueError(
            f"{folder}: a CLT needs one file per layer 0..{L - 1}; layers {missing} are missing (found {sorted(files)})"
        )
    shapes = {layer: tensor_shapes(file) for layer, file in files.items()}
    first = shapes[0]
    for name in ("w_enc", "w_dec", "b_enc", "b_dec", "threshold"):
        if name not in first:
            raise ValueError(f"{files[0]} lacks tensor {name!r}; it holds {sorted(first)}")
    if len(first["w_enc"]) != 2 or len(first["w_dec"]) != 3:
        raise ValueError(
            f"{files[0]}: w_enc {first['w_enc']} and w_dec {first['w_dec']}; expected [d_in, n] and [n, L={L}, d_out]"
        )
    (d_in, n), d_out = first["w_enc"], first["w_dec"][-1]
    skips = [AFFINE in s for s in shapes.values()]
    if any(skips) and not all(skips):
        raise ValueError(f"{folder}: layers {[i for i, s in enumerate(skips) if s]} hold {AFFINE}, the others none")
    for layer, s in shapes.items():
        if s.get("w_dec", (0, 0))[1:2] not in ((L,), (L - layer,)):
            raise ValueError(
                f"{files[layer]}: w_dec has shape {s.get('w_dec')}, expected [n, L={L} (or {L - layer}), d_out] for "
                f"layer {layer} of {L}"
            )
    cfg = raw_cfg(
        folder / GEMMA_SCOPE_2_CFG,
        d_in=d_in,
        d_sae=n,
        dtype=dtype,
        hook_name=block_hook("{}", "hook_mlp_in"),
        target_hook=block_hook("{}", "hook_mlp_out"),
        model_name=str(raw.get("model_name", "")),
        d_out=d_out,
        layers=L,
        skip=all(skips),
    )
    per_layer = [read_safetensors(files[layer]) for layer in range(L)]
    tensors = {
        "W_enc": torch.stack([tensor_of(s, "w_enc", files[i]) for i, s in enumerate(per_layer)]),
        "b_enc": torch.stack([tensor_of(s, "b_enc", files[i]) for i, s in enumerate(per_layer)]),
        "b_dec": torch.stack([tensor_of(s, "b_dec", files[i]) for i, s in enumerate(per_layer)]),
        "threshold": clamp_threshold(torch.stack([tensor_of(s, "threshold", files[i]) for i, s in enumerate(per_layer)])),
    }
    for layer, state in enumerate(per_layer):
        tensors[f"W_dec_{layer}"] = _clt_decoder(tensor_of(state, "w_dec", files[layer]), layer, L, files[layer])
    if cfg.skip:
        skips_t = [_affine_skip(state, d_in, d_out, files[i]) for i, state in enumerate(per_layer)]
        tensors["W_skip"] = torch.stack([t for t in skips_t if t is not None])
    return SparseAutoencoder.from_tensors(cfg, tensors, folder, device=device)


def _npz_of(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".npz" else None
    return path / GEMMA_SCOPE_FILE if (path / GEMMA_SCOPE_FILE).exists() else None


def detect(path: Path) -> bool:
    """A params.npz (or any .npz file), or a folder holding params.npz."""
    return _npz_of(path) is not None


def detect_transcoder(path: Path) -> bool:
    """A Gemma Scope params.npz under a `gemma-scope-*-transcoders` folder (the repo, or its Hub cache folder)."""
    return _npz_of(path) is not None and any(TRANSCODER_REPO.fullmatch(part) for part in Path(path).absolute().parts)


def detect_2(path: Path) -> bool:
    """A folder holding params.safetensors (and, usually, config.json)."""
    return path.is_dir() and (path / GEMMA_SCOPE_2_FILE).exists()


def detect_2_clt(path: Path) -> bool:
    """A folder of per-layer safetensors files (names with layer_<n>) holding Gemma Scope 2's w_enc [d, n] and
    w_dec [n, L, d_out] (circuit-tracer's layer files hold W_enc instead)."""
    if not path.is_dir() or (path / "config.yaml").exists():
        return False
    files = [f for f in sorted(path.glob("*.safetensors")) if layer_of(f.stem) is not None]
    shapes = tensor_shapes(files[0]) if files else {}
    return len(shapes.get("w_enc", ())) == 2 and len(shapes.get("w_dec", ())) == 3


def _load_transcoder(path: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    return load_gemma_scope(path, device=device, dtype=dtype, transcoder=True)


FORMAT = Format("gemma-scope", GEMMA_SCOPE_FILE, detect=detect, load=load_gemma_scope)
TRANSCODER_FORMAT = Format(
    "gemma-scope-transcoder",
    f"{GEMMA_SCOPE_FILE} under gemma-scope-*-transcoders",
    detect=detect_transcoder,
    load=_load_transcoder,
)
FORMAT_2 = Format("gemma-scope-2", f"{GEMMA_SCOPE_2_FILE} (+ {GEMMA_SCOPE_2_CFG})", detect=detect_2, load=load_gemma_scope_2)
CLT_FORMAT_2 = Format(
    "gemma-scope-2-clt",
    "layer_<l>.safetensors files with w_enc, w_dec [n, L, d_out]",
    detect=detect_2_clt,
    load=load_gemma_scope_2_clt,
)
