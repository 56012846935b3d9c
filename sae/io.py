"""Our save format = SAELens's: cfg.json (SAELens keys plus ours) + sae_weights.safetensors.

Also the one place where tensors read from any file become a SparseAutoencoder (`build_sae`): names,
shapes and finiteness are checked there, and the model is built on the meta device so nothing is
allocated before the file has been found to fit. `save_sae(..., format="sparsify")` writes sparsify's
layout and `format="saelens-strict"` refuses what SAELens would misread.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sae.checkpoint import atomic_write
from sae.config import DTYPES, SAEConfig
from sae.families import get_family
from sae.model import SparseAutoencoder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"
FORMAT_KEY = "saekit"  # our full SAEConfig lives under this key
FAMILY_PREFIX = "family."
SAELENS_NORMALIZE = {
    "dataset_scalar": "none",
    "none": "none",
    "layer_norm": "layer_norm",
    "unit_norm": "unit_norm",
    "layer_norm_std": "layer_norm",
    "constant_norm_rescale": "constant_norm_rescale",
}
# our per-token normalisations that SAELens has no exact twin for (its layer_norm divides by std + eps)
SAELENS_INEXACT_NORMALIZE = {"layer_norm", "unit_norm"}
SAVE_FORMATS = ("saelens", "saelens-strict", "sparsify")
MAX_PARAMETERS = 2**34  # d_in * d_sae above this (64 GiB of fp32 per matrix) is a corrupt or hostile config


def check_size(d_in: Any, d_sae: Any, source: str | Path) -> None:
    """Refuse non-integer or absurd sizes before anything is allocated."""
    for name, v in (("d_in", d_in), ("d_sae", d_sae)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{source}: {name}={v!r}; expected a positive integer")
    if d_in * d_sae > MAX_PARAMETERS:
        raise ValueError(
            f"{source}: d_in={d_in} x d_sae={d_sae} = {d_in * d_sae:.3g} weights per matrix, over the limit of "
            f"{MAX_PARAMETERS:.3g}; refusing to allocate it (a corrupt or hostile config?)"
        )


def _strip(name: str) -> str:
    return name[len(FAMILY_PREFIX):] if name.startswith(FAMILY_PREFIX) else name


def expected_tensors(cfg: SAEConfig) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """File-level tensor names (no 'family.' prefix, no input_scale) with shape and dtype, allocating nothing."""
    check_size(cfg.d_in, cfg.n_latents, "config")
    with torch.device("meta"):
        template = SparseAutoencoder(cfg, device="meta")
    return {_strip(n): (t.shape, t.dtype) for n, t in template.state_dict().items() if n != "input_scale"}


def check_tensors(tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse NaN or inf in loaded weights, naming the tensor (a diverged or corrupt dictionary)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{source}: tensor {name!r} holds {bad} NaN or inf values; refusing to load it")


def build_sae(
    cfg: SAEConfig,
    tensors: dict[str, torch.Tensor],
    source: str | Path,
    *,
    device: torch.device | str | None = None,
    input_scale: float = 1.0,
) -> SparseAutoencoder:
    """A SparseAutoencoder holding exactly `tensors` (our file-level names), checked against `cfg`.

    Missing or extra tensors, wrong shapes and non-finite values raise ValueError naming `source`; each
    tensor is cast to the dtype the model holds it in (cfg.dtype for weights, fp32 for thresholds).
    """
    expected = expected_tensors(cfg)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{source} lacks tensors {missing}; a {cfg.family!r} dictionary needs {sorted(expected)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"{source} holds tensors {extra} that a {cfg.family!r} dictionary has no place for")
    for name, (shape, _) in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}")
    check_tensors(tensors, source)
    with torch.device("meta"):  # the big matrices come from the file: no random init, no allocation here
        sae = SparseAutoencoder(cfg, device="meta")
    sae.family = get_family(cfg.family)(cfg)  # small, and may hold derived non-persistent buffers: built for real
    family_names = {_strip(n) for n in sae.state_dict() if n.startswith(FAMILY_PREFIX)}
    state = {
        (FAMILY_PREFIX + n if n in family_names else n): tensors[n].to(dtype=dtype).contiguous()
        for n, (_, dtype) in expected.items()
    }
    state["input_scale"] = torch.tensor(float(input_scale), dtype=torch.float32)
    sae.load_state_dict(state, assign=True)
    return sae.to(device) if device is not None else sae


def read_safetensors(path: Path, expected: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; with `expected` shapes, the header is checked before anything is read."""
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if expected is not None:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    if name in expected and tuple(f.get_slice(name).get_shape()) != tuple(expected[name][0]):
                        shape = tuple(f.get_slice(name).get_shape())
                        raise ValueError(f"{path}: tensor {name} has shape {shape}, expected {tuple(expected[name][0])}")
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise ValueError(f"weights file {path} is truncated or corrupt: {e}") from e


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
        "rescale_acts_by_decoder_norm": False,  # our TopK selects on the plain pre-activations
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "metadata": meta,
        FORMAT_KEY: cfg.to_dict(),
    }


def _folded(sae: SparseAutoencoder) -> SparseAutoencoder:
    """The dictionary acting on raw activations: a copy with the dataset input scale folded in."""
    if sae.cfg.normalize == "dataset_scalar" and float(sae.input_scale) != 1.0:
        sae = copy.deepcopy(sae)
        sae.fold_input_scale()
    return sae


# the tensors SAELens's inference classes hold (its load_state_dict is strict about extra ones)
SAELENS_TENSORS = {"W_enc", "b_enc", "W_dec", "b_dec"}
SAELENS_EXTRA_TENSORS = {"jumprelu": {"threshold"}, "gated": {"b_gate", "r_mag", "b_mag"}}


def _saelens_tensors(sae: SparseAutoencoder, strict: bool) -> dict[str, torch.Tensor]:
    renames = sae.family.saelens_renames
    keep = SAELENS_TENSORS | SAELENS_EXTRA_TENSORS.get(sae.family.saelens_cfg()["architecture"], set())
    tensors = {}
    for name, t in sae.state_dict().items():
        if name == "input_scale":
            continue
        t = t.detach().contiguous().cpu()
        if strict and _strip(name) == "threshold":
            # our "never selected" marker (-1) must never fire; SAELens's JumpReLU is ReLU(pre) * 1[pre > theta]
            t = torch.where(t < 0, torch.full_like(t, torch.finfo(t.dtype).max), t)
        if name == "b_enc" and not sae.family.uses_b_enc:
            t = torch.zeros_like(t)  # unused by our encoder (AbsTopK): SAELens adds b_enc, so it must read zeros
        saved_name = renames.get(_strip(name), _strip(name))
        if not strict or saved_name in keep:  # strict: training state (firing rates, probes) stays out
            tensors[saved_name] = t
    return tensors


def check_saelens_representable(sae: SparseAutoencoder) -> None:
    """Raise when SAELens would misread this dictionary (format='saelens-strict')."""
    reason = sae.family.saelens_unsupported
    if reason:
        raise ValueError(f"family {sae.cfg.family!r} cannot be saved for SAELens: {reason}")
    if sae.cfg.normalize in SAELENS_INEXACT_NORMALIZE:
        raise ValueError(
            f"normalize={sae.cfg.normalize!r} has no exact SAELens twin (its layer_norm divides by the unbiased std + "
            "1e-5): SAELens would reconstruct differently"
        )
    if getattr(sae.family, "has_threshold", True) is False:
        raise ValueError(
            f"family {sae.cfg.family!r}: the inference threshold has not been estimated yet, and SAELens saves this "
            "family as a JumpReLU with that threshold"
        )


def save_sae(sae: SparseAutoencoder, path: str | Path, format: str = "saelens") -> Path:
    """Write the dictionary so it acts on raw activations (the input scale folded into a copy)."""
    if format not in SAVE_FORMATS:
        raise ValueError(f"unknown save format {format!r}; expected one of {SAVE_FORMATS}")
    if format == "sparsify":
        from sae.pretrained.sparsify import save_sparsify

        return save_sparsify(sae, path)
    if format == "saelens-strict":
        check_saelens_representable(sae)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sae = _folded(sae)
    tensors = _saelens_tensors(sae, strict=format == "saelens-strict")
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    text = json.dumps(saelens_cfg(sae), indent=2)
    atomic_write(path / CFG_FILE, lambda tmp: Path(tmp).write_text(text))
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; errors name the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}; expected an object")
    return raw


def read_cfg(path: Path) -> SAEConfig:
    """SAEConfig from a cfg.json of ours or a plain SAELens one (v6 or the older flat keys)."""
    cfg_path = path / CFG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"no {CFG_FILE} in {path}: expected a folder written by SparseAutoencoder.save")
    raw = read_json(cfg_path)
    if FORMAT_KEY in raw:
        ours = raw[FORMAT_KEY]
        if not isinstance(ours, dict):
            raise ValueError(f"{cfg_path}: '{FORMAT_KEY}' holds {type(ours).__name__}; expected an object")
        if ours.get("n_latents") is not None:
            check_size(ours.get("d_in"), ours["n_latents"], cfg_path)
        try:
            return SAEConfig.from_dict(ours)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{cfg_path}: {e}") from e
    from sae.pretrained.saelens import saelens_config

    return saelens_config(raw, cfg_path).cfg


def load_sae(
    path: str | Path, device: torch.device | str = "cpu", dtype: str | None = None
) -> SparseAutoencoder:
    """Load a dictionary folder of ours (or a plain SAELens one); errors name the file and what was wrong."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dictionary folder {path} does not exist")
    raw = read_json(path / CFG_FILE) if (path / CFG_FILE).exists() else None
    if raw is not None and FORMAT_KEY not in raw:
        from sae.pretrained.saelens import load_saelens

        return load_saelens(path, device=device, dtype=dtype)
    cfg = read_cfg(path)
    if dtype is not None:
        cfg = SAEConfig.from_dict({**cfg.to_dict(), "dtype": check_dtype(dtype)})
    expected = expected_tensors(cfg)
    renames = get_renames(cfg)
    tensors = read_safetensors(path / WEIGHTS_FILE, {renames.get(n, n): v for n, v in expected.items()})
    back = {v: k for k, v in renames.items()}
    tensors = {back.get(n, n): t for n, t in tensors.items()}
    return build_sae(cfg, tensors, path / WEIGHTS_FILE, device=device)


def get_renames(cfg: SAEConfig) -> dict[str, str]:
    return get_family(cfg.family).saelens_renames


def check_dtype(dtype: str | torch.dtype) -> str:
    """The dtype's name in SAEConfig terms; a clear error for an unknown one."""
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"dtype {dtype} is not supported; expected one of {tuple(DTYPES)}")
        return names[dtype]
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    return name
