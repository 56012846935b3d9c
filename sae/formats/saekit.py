"""Our save format, "saelens": SAELens's layout (cfg.json + sae_weights.safetensors) with our whole SAEConfig under
the 'saekit' key, so SAELens reads the files and we read back exactly what was saved.

"saelens-strict" writes only what SAELens's classes hold and refuses the families and normalisations it would
misread. A folder whose cfg.json has no 'saekit' key is a plain SAELens one (`sae.formats.saelens`).
Transcoders and CLTs are ours too: the same two files, every tensor of the dictionary (a CLT's decoders
W_dec_0 .. W_dec_{L-1} beside its stacked encoders) in the one safetensors file. A one-layer transcoder whose
selection SAELens has a class for (ReLU, JumpReLU) is written under that class's architecture (transcoder,
skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder), so SAELens reads either layout as it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.config import SAEConfig
from sae.families import get_family
from sae.families.jumprelu import JumpReLU
from sae.formats.saelens import CFG_FILE, WEIGHTS_FILE, load_saelens, saelens_config, transcoder_architecture
from sae.io import Format, check_dtype, check_size, read_json, read_safetensors, write_json, write_safetensors
from sae.model import SparseAutoencoder, shape_hint

FORMAT_KEY = "saekit"  # our full SAEConfig lives under this key
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


def saelens_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    """cfg.json contents: SAELens v6 keys, older top-level keys, and our config under 'saekit'."""
    cfg = sae.cfg
    meta = {"model_name": cfg.model_name, "hook_name": cfg.hook_name}
    # a transcoder's encoder reads its input as it is: its b_dec lives in the target's space
    transcoder = {"d_out": cfg.d_out, "hook_name_out": cfg.target_hook, "apply_b_dec_to_input": False}
    if cfg.is_transcoder:
        meta["hook_name_out"] = cfg.target_hook
        arch = transcoder_architecture(sae)
        if arch is not None:
            transcoder["architecture"] = arch
    return {
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": SAELENS_NORMALIZE[cfg.normalize],
        **sae.family.saelens_cfg(),
        **(transcoder if cfg.is_transcoder else {}),
        "rescale_acts_by_decoder_norm": False,  # our TopK selects on the plain pre-activations
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "metadata": meta,
        FORMAT_KEY: cfg.to_dict(),
    }


def saelens_tensors(sae: SparseAutoencoder, strict: bool) -> dict[str, torch.Tensor]:
    """The tensors to write, by SAELens's names; `strict`: only those SAELens's class for the family holds (its
    load_state_dict refuses extra ones), never-selected thresholds made never to fire."""
    family = sae.family
    keep = family.saelens_tensors | ({"W_skip"} if sae.cfg.skip else set())
    tensors = {}
    for name, t in sae.file_tensors().items():
        if strict and name == "threshold":
            # our "never selected" marker (-1) must never fire; SAELens's JumpReLU is ReLU(pre) * 1[pre > theta]
            t = torch.where(t < 0, torch.full_like(t, torch.finfo(t.dtype).max), t)
        if name == "b_enc" and not family.uses_b_enc:
            t = torch.zeros_like(t)  # unused by our encoder (AbsTopK): SAELens adds b_enc, so it must read zeros
        saved_name = family.saelens_renames.get(name, name)
        if not strict or saved_name in keep:  # strict: training state (firing rates, probes) stays out
            tensors[saved_name] = t
    return tensors


def check_saelens_representable(sae: SparseAutoencoder) -> None:
    """Raise when SAELens would misread this dictionary (format='saelens-strict')."""
    if sae.cfg.is_transcoder and transcoder_architecture(sae) is None:
        if sae.cfg.is_clt:
            why, kind = "SAELens has no cross-layer transcoder class (its mntss loader reads one layer, decoders summed)", "a CLT"
        else:
            why = (
                f"SAELens's transcoders are ReLU ('transcoder': family 'standard') or JumpReLU ('jumprelu_transcoder': "
                f"jumprelu and the threshold families at inference), family {sae.cfg.family!r} has no class there"
            )
            kind = "a transcoder"
        raise ValueError(f"format 'saelens-strict': {why}, and this dictionary is {kind}: save it with format='saelens'")
    reason = sae.family.saelens_unsupported
    if reason:
        raise ValueError(f"family {sae.cfg.family!r} cannot be saved for SAELens: {reason}")
    if sae.cfg.normalize in SAELENS_INEXACT_NORMALIZE:
        raise ValueError(
            f"normalize={sae.cfg.normalize!r} has no exact SAELens twin (its layer_norm divides by the unbiased std + "
            "1e-5): SAELens would reconstruct differently"
        )
    pending = sae.family.saelens_pending()
    if pending:
        raise ValueError(f"family {sae.cfg.family!r}: {pending}")
    negative = int((sae.family.threshold < 0).sum()) if isinstance(sae.family, JumpReLU) else 0
    if negative:
        raise ValueError(
            f"{negative} JumpReLU thresholds are negative: ours (and circuit-tracer's) is pre * 1[pre > theta], "
            "SAELens's ReLU(pre) * 1[pre > theta], which differ wherever theta < pre < 0"
        )


def _save(sae: SparseAutoencoder, path: Path, strict: bool) -> Path:
    """Write the dictionary so it acts on raw activations (the input scale folded into a copy)."""
    if strict:
        check_saelens_representable(sae)
    path.mkdir(parents=True, exist_ok=True)
    sae = sae.folded()
    write_safetensors(path / WEIGHTS_FILE, saelens_tensors(sae, strict=strict))
    write_json(path / CFG_FILE, saelens_cfg(sae))
    return path


def save(sae: SparseAutoencoder, path: Path) -> Path:
    """Our layout: everything the dictionary holds, our config under 'saekit'."""
    return _save(sae, path, strict=False)


def save_strict(sae: SparseAutoencoder, path: Path) -> Path:
    """SAELens's layout with only what SAELens reads; refuses what it would misread."""
    return _save(sae, path, strict=True)


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
    return saelens_config(raw, cfg_path).cfg


def load(path: str | Path, device: torch.device | str | None = "cpu", dtype: str | None = None) -> SparseAutoencoder:
    """Load a dictionary folder of ours (or a plain SAELens one); errors name the file and what was wrong."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dictionary folder {path} does not exist")
    raw = read_json(path / CFG_FILE) if (path / CFG_FILE).exists() else None
    if raw is not None and FORMAT_KEY not in raw:
        return load_saelens(path, device=device, dtype=dtype)
    cfg = read_cfg(path)
    if dtype is not None:
        cfg = SAEConfig.from_dict({**cfg.to_dict(), "dtype": check_dtype(dtype)})
    expected = SparseAutoencoder.expected_tensors(cfg)
    renames = get_family(cfg.family).saelens_renames
    saved_names = {renames.get(n, n): v for n, v in expected.items()}
    tensors = read_safetensors(path / WEIGHTS_FILE, saved_names, hint=lambda name, shape: shape_hint(cfg, name, shape))
    back = {v: k for k, v in renames.items()}
    tensors = {back.get(n, n): t for n, t in tensors.items()}
    return SparseAutoencoder.from_tensors(cfg, tensors, path / WEIGHTS_FILE, device=device)


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILE).exists() and (path / WEIGHTS_FILE).exists()


FORMAT = Format("saelens", f"{CFG_FILE} + {WEIGHTS_FILE} (ours too)", detect=detect, load=load, save=save)
STRICT = Format("saelens-strict", f"{CFG_FILE} + {WEIGHTS_FILE}, only what SAELens reads", save=save_strict)
