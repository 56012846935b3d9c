"""SAELens folders (v6 and pre-6.0 cfg.json + sae_weights.safetensors, optional sparsity.safetensors).

Architectures: standard, topk, batchtopk and matryoshka_batchtopk (training files; their inference form is a
JumpReLU with a constant threshold, which is how SAELens saves them), jumprelu, gated, and the transcoders
(`sae_lens/saes/transcoder.py`): transcoder (ReLU: our standard), skip_transcoder, jumprelu_transcoder,
jumprelu_skip_transcoder. A transcoder's cfg.json holds `d_out` and, in its metadata, `hook_name_out` (our
target_hook); its encoder reads x itself (apply_b_dec_to_input is false: b_dec lives in the output's space) and a
skip transcoder adds x W_skip^T, W_skip [d_out, d_in], as ours does. Read from SAELens 6.54's own code: TopK is
ReLU(top-k(pre)) with optional `rescale_acts_by_decoder_norm` (folded into the weights here); JumpReLU is
ReLU(pre) * 1[pre > threshold]; `layer_norm` divides by (unbiased std + 1e-5) and multiplies back by std;
`expected_average_only_in` is identity at inference unless a scale is known (`norm_scaling_factor` in the registry
or an `activation_scaler.json` beside the weights), which is then folded in, as from_pretrained does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae.config import SAEConfig
from sae.families import get_family
from sae.formats.common import clamp_threshold, make_cfg, tensor_shapes
from sae.io import read_json, read_safetensors
from sae.model import SparseAutoencoder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
ARCHITECTURES = ("standard", "topk", "abstopk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated")
# SAELens's transcoder architectures -> (our family, skip)
TRANSCODER_ARCHITECTURES = {
    "transcoder": ("standard", False),
    "skip_transcoder": ("standard", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
# the SAELens architecture of our families' SAEs -> that of their one-layer transcoders (no skip)
TRANSCODER_OF = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}
NORMALIZE = {"none": "none", "layer_norm": "layer_norm_std", "constant_norm_rescale": "constant_norm_rescale"}
SCALER_FILE = "activation_scaler.json"


@dataclass
class SAELensConfig:
    """What a SAELens cfg.json says, in our terms."""

    cfg: SAEConfig
    architecture: str
    apply_b_dec: bool
    rescale_by_decoder_norm: bool
    expected_average: bool  # normalize_activations == expected_average_only_in
    raw: dict[str, Any] = field(default_factory=dict)


def _version_major(raw: dict[str, Any]) -> int:
    v = raw.get("sae_lens_version") or (raw.get("metadata") or {}).get("sae_lens_version")
    try:
        return int(str(v).split(".")[0]) if v else 0
    except ValueError:
        return 0


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """Pre-6.0 flat keys to the v6 ones (hook_point, activation_fn_str, activation_fn_kwargs.k, boolean normalize)."""
    if _version_major(raw) >= 6 and "metadata" in raw:
        return raw
    new = {{"hook_point": "hook_name", "activation_fn_str": "activation_fn"}.get(k, k): v for k, v in raw.items()}
    new.setdefault("apply_b_dec_to_input", True)
    kwargs = new.get("activation_fn_kwargs") or {}
    if new.get("activation_fn") == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        new["architecture"] = "topk"
        new["k"] = kwargs["k"]
    new.setdefault("architecture", "standard")
    norm = new.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        new["normalize_activations"] = "expected_average_only_in" if norm else "none"
    meta = dict(new.get("metadata") or {})
    for key in ("model_name", "hook_name"):
        if key in new and key not in meta:
            meta[key] = new[key]
    new["metadata"] = meta
    return new


def saelens_config(raw: dict[str, Any], source: str | Path, dtype: str | None = None, d_out: int | None = None) -> SAELensConfig:
    """Our config for a SAELens cfg.json; unknown architectures and normalisations are refused by name. A
    transcoder's cfg.json without `d_out` takes `d_out` (its decoder's width, read from the weights' header)."""
    for key in ("metadata", "activation_fn_kwargs"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ValueError(f"{source}: {key!r} holds {type(raw[key]).__name__}; expected an object")
    raw = migrate(raw)
    arch = raw.get("architecture")
    if arch not in ARCHITECTURES and arch not in TRANSCODER_ARCHITECTURES:
        raise ValueError(
            f"{source}: SAELens architecture {arch!r} is not supported; expected one of "
            f"{(*ARCHITECTURES, *TRANSCODER_ARCHITECTURES)}"
        )
    norm = raw.get("normalize_activations", "none")
    if norm not in (*NORMALIZE, "expected_average_only_in"):
        raise ValueError(
            f"{source}: normalize_activations={norm!r} is not supported; expected one of "
            f"{(*NORMALIZE, 'expected_average_only_in')}"
        )
    if raw.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{source}: reshape_activations={raw['reshape_activations']!r} (hook_z) is not supported yet")
    apply_b_dec = raw.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise ValueError(f"{source}: apply_b_dec_to_input={apply_b_dec!r}; expected true or false")
    meta = raw.get("metadata") or {}
    transcoder: dict[str, Any] = {}
    if arch in TRANSCODER_ARCHITECTURES:
        family, skip = TRANSCODER_ARCHITECTURES[arch]
        width = raw.get("d_out", d_out)
        hook_out = meta.get("hook_name_out") or raw.get("hook_name_out") or ""
        transcoder = {"d_out": width, "skip": skip, "target_hook": str(hook_out)}
    else:
        family = {"matryoshka_batchtopk": "batchtopk"}.get(arch, arch)
    family_cls = get_family(family)
    options: dict[str, Any] = dict(family_cls.saelens_load_options)
    if "apply_b_dec_to_input" in family_cls.option_names:
        options["apply_b_dec_to_input"] = apply_b_dec
    k = raw.get("k") if family_cls.uses_k else None
    cfg = make_cfg(
        source,
        d_in=raw.get("d_in"),
        d_sae=raw.get("d_sae"),
        dtype=dtype or raw.get("dtype", "float32"),
        family=family,
        k=k,
        normalize=NORMALIZE.get(norm, "dataset_scalar"),
        options=options,
        hook_name=str(meta.get("hook_name") or raw.get("hook_name") or ""),
        model_name=str(meta.get("model_name") or raw.get("model_name") or ""),
        **transcoder,
    )
    return SAELensConfig(
        cfg,
        arch,
        apply_b_dec,
        bool(raw.get("rescale_acts_by_decoder_norm", False)),
        norm == "expected_average_only_in",
        raw,
    )


def convert_tensors(sl: SAELensConfig, state: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """SAELens tensors to ours: b_gate -> b_enc, thresholds clamped, scaling factors and decoder norms folded."""
    t = dict(state)
    if "b_gate" in t:
        t["b_enc"] = t.pop("b_gate")
    scaling = t.pop("scaling_factor", None)  # pre-6.0 finetuning scale: decode reads z * s @ W_dec
    if scaling is not None and "W_dec" in t:
        t["W_dec"] = t["W_dec"].double() * scaling.double()[:, None]
    if "topk_threshold" in t:  # a BatchTopK training file: one global threshold
        t["threshold"] = t.pop("topk_threshold").reshape(()).expand(sl.cfg.latents).clone()
    if "threshold" in t:
        t["threshold"] = clamp_threshold(t["threshold"])
    if sl.rescale_by_decoder_norm and {"W_enc", "b_enc", "W_dec"} <= set(t):
        # SAELens selects on pre * |W_dec_i| and decodes z / |W_dec_i|: fold the norms into the weights
        W_enc, b_enc, W_dec = (t[n].double() for n in ("W_enc", "b_enc", "W_dec"))
        norm = W_dec.norm(dim=1)
        t["W_enc"], t["b_enc"], t["W_dec"] = W_enc * norm, b_enc * norm, W_dec / norm[:, None]
    reads_x_minus_b_dec = "apply_b_dec_to_input" not in get_family(sl.cfg.family).option_names
    if not sl.apply_b_dec and reads_x_minus_b_dec and {"W_enc", "b_enc", "b_dec"} <= set(t):
        # our top-k families always read x - b_dec: (x - b_dec) W + (b_enc + b_dec W) = x W + b_enc
        t["b_enc"] = t["b_enc"].double() + t["b_dec"].double() @ t["W_enc"].double()
    return t


def decoder_width(path: Path) -> int | None:
    """The width W_dec writes (its last dimension), read from the file's header only; None without a W_dec."""
    shape = tensor_shapes(path).get("W_dec")
    return shape[-1] if shape else None


def transcoder_architecture(sae: SparseAutoencoder) -> str | None:
    """SAELens's architecture for one of our one-layer transcoders, or None where SAELens has no class for it
    (a CLT; a selection that is neither ReLU nor a JumpReLU at inference)."""
    if not sae.cfg.is_transcoder or sae.cfg.is_clt:
        return None
    arch = TRANSCODER_OF.get(sae.family.saelens_cfg().get("architecture", ""))
    if arch is None:
        return None
    return arch.replace("transcoder", "skip_transcoder") if sae.cfg.skip else arch


def read_scale(folder: Path, raw: dict[str, Any]) -> float | None:
    """The dataset input scale of an `expected_average_only_in` dictionary, when it is known."""
    if isinstance(raw.get("norm_scaling_factor"), (int, float)):
        return float(raw["norm_scaling_factor"])
    scaler = folder / SCALER_FILE
    if scaler.exists():
        value = read_json(scaler).get("scaling_factor")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def load_saelens(
    folder: Path,
    device: torch.device | str | None = None,
    dtype: str | None = None,
    norm_scaling_factor: float | None = None,
) -> SparseAutoencoder:
    """A SAELens folder as our dictionary; its log-sparsity, when saved, becomes `sae.firing_frequency`."""
    folder = Path(folder)
    raw = read_json(folder / CFG_FILE)
    d_out = None
    if raw.get("architecture") in TRANSCODER_ARCHITECTURES and "d_out" not in raw:
        d_out = decoder_width(folder / WEIGHTS_FILE)
    sl = saelens_config(raw, folder / CFG_FILE, dtype=dtype, d_out=d_out)
    state = read_safetensors(folder / WEIGHTS_FILE)
    tensors = convert_tensors(sl, state, folder / WEIGHTS_FILE)
    scale = norm_scaling_factor if norm_scaling_factor is not None else read_scale(folder, raw)
    cfg = sl.cfg
    if sl.expected_average and scale is None:
        warnings.warn(
            f"{folder}: normalize_activations is expected_average_only_in but no scaling factor is known (none in the "
            f"registry, no {SCALER_FILE}); loading it without one, as SAELens's load_from_disk does",
            stacklevel=2,
        )
        cfg = SAEConfig.from_dict({**cfg.to_dict(), "normalize": "none"})
    sae = SparseAutoencoder.from_tensors(cfg, tensors, folder / WEIGHTS_FILE, device=device, input_scale=scale or 1.0)
    if sl.expected_average and scale is not None:
        sae.fold_input_scale()
    sparsity = folder / SPARSITY_FILE
    if sparsity.exists():
        log10 = read_safetensors(sparsity).get("sparsity")
        if log10 is None or tuple(log10.shape) != (cfg.latents,):
            raise ValueError(f"{sparsity}: expected one tensor 'sparsity' of shape ({cfg.n_latents},)")
        sae.firing_frequency = (10 ** log10.double()).float()
    return sae
