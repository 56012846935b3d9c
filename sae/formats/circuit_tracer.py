"""circuit-tracer 0.5.0's transcoders: a folder with a config.yaml (`model_kind`, `feature_input_hook`,
`feature_output_hook`; other keys ignored), read from `circuit_tracer/transcoder/*.py` and `utils/hf_utils.py`.

- `model_kind: transcoder_set`: one `layer_{l}.safetensors` per layer l = 0..L-1, each one transcoder: W_enc [F, d]
  (rows are features: pre = x W_enc^T + b_enc), b_enc [F], W_dec [F, d], b_dec [d], optional
  `activation_function.threshold` [F] (JumpReLU x * 1[x > theta], exactly ours, negative thresholds included;
  ReLU without it: our `standard`), optional W_skip [d, d] applied as x W_skip^T (ours). Each layer file is one of
  our dictionaries (`load_pretrained(folder, hook="blocks.3.hook_mlp_in")` or `hook="layer_3"`); `load_transcoder_set`
  reads them all; `save_transcoder_set({layer: transcoder}, folder)` writes one.
- `model_kind: cross_layer_transcoder`: `W_enc_{l}.safetensors` holding W_enc_{l} [F, d], b_enc_{l} [F], b_dec_{l}
  [d] (the bias of output layer l) and optional threshold_{l} [F]; `W_dec_{l}.safetensors` holding W_dec_{l}
  [F, L - l, d] (slice j writes into layer l + j: our W_dec_l). Layers are counted from the files, from 0. A ReLU
  CLT is read as our JumpReLU with zero thresholds (pre * 1[pre > 0] is ReLU). circuit-tracer's `load_clt` never
  reads a W_skip from disk (and its CLT would apply x @ W_skip, where its per-layer transcoders apply x @ W_skip.T),
  so a CLT file holding one is refused rather than read in an orientation the layout does not fix, and a skip CLT
  is not saved in this layout (our own layout holds it).
- `format="circuit-tracer-clt-layer"` (SAELens's `mntss_clt_layer_transcoder`): one layer of such a CLT, from its
  W_enc_{l}.safetensors (W_dec_{l} beside it), as a one-layer transcoder whose decoder is the sum over the layers
  it writes to, as SAELens reads it: for feature activations, not for reconstruction.

Hooks: `blocks.{l}.{feature_input_hook}` -> `blocks.{l}.{feature_output_hook}` (a CLT: templates with `{}`).
circuit-tracer's transcoders have one width d (d_in = d_out); its TopK cannot be loaded from disk, so only ReLU and
JumpReLU selections (ours: standard, jumprelu, and the threshold families at inference) are saved in its layout.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from sae.families.batchtopk import ThresholdInference
from sae.families.jumprelu import JumpReLU
from sae.formats.common import block_hook, layer_of, raw_cfg, site_of, tensor_of, tensor_shapes
from sae.io import Format, read_safetensors, write_safetensors
from sae.model import SparseAutoencoder

CONFIG = "config.yaml"
MODEL_KINDS = ("transcoder_set", "cross_layer_transcoder")
LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors")
THRESHOLD = "activation_function.threshold"
LAYER_TENSORS = frozenset({"W_enc", "b_enc", "W_dec", "b_dec", THRESHOLD, "W_skip"})


def read_config(folder: Path) -> dict[str, Any] | None:
    """A folder's config.yaml (None without one); a file that is not a mapping, or an unknown model_kind, is
    refused in one line naming it."""
    file = folder / CONFIG
    if not file.exists():
        return None
    import yaml

    try:
        raw = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{file} holds a YAML {type(raw).__name__}; expected a mapping with model_kind")
    kind = raw.get("model_kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"{file}: model_kind {kind!r} is not one circuit-tracer 0.5.0 loads; expected one of {MODEL_KINDS}")
    return raw


def _hook_sites(raw: dict[str, Any] | None) -> tuple[str, str]:
    """(feature_input_hook, feature_output_hook) of a config ('' for each without one)."""
    raw = raw or {}
    return str(raw.get("feature_input_hook") or ""), str(raw.get("feature_output_hook") or "")


def _hooks(layer: int | str, raw: dict[str, Any] | None) -> dict[str, str]:
    site_in, site_out = _hook_sites(raw)
    return {
        "hook_name": block_hook(layer, site_in) if site_in else "",
        "target_hook": block_hook(layer, site_out) if site_out else "",
        "model_name": str((raw or {}).get("model_name") or ""),
    }


# --- reading -------------------------------------------------------------------------------
def load_layer(path: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    """One `layer_{l}.safetensors` of a transcoder set (config.yaml beside it, when there is one) as our transcoder."""
    path = Path(path)
    m = LAYER_FILE.fullmatch(path.name)
    if m is None:
        raise ValueError(f"{path}: a circuit-tracer transcoder file is named layer_<l>.safetensors")
    raw = read_config(path.parent)
    if raw is not None and raw["model_kind"] != "transcoder_set":
        raise ValueError(f"{path.parent / CONFIG}: model_kind {raw['model_kind']!r}, but {path.name} is a transcoder set's file")
    state = read_safetensors(path)
    extra = sorted(set(state) - LAYER_TENSORS)
    if extra:
        raise ValueError(f"{path} holds tensors {extra} that circuit-tracer's SingleLayerTranscoder has no place for")
    W_enc = tensor_of(state, "W_enc", path)
    if W_enc.dim() != 2:
        raise ValueError(f"{path}: W_enc has shape {tuple(W_enc.shape)}; expected [d_transcoder, d_model]")
    n, d_in = W_enc.shape
    d_out = int(tensor_of(state, "b_dec", path).shape[0])
    jump = THRESHOLD in state
    cfg = raw_cfg(
        path,
        d_in=d_in,
        d_sae=n,
        dtype=dtype,
        family="jumprelu" if jump else "standard",
        d_out=d_out,
        skip="W_skip" in state,
        **_hooks(int(m.group(1)), raw),
    )
    tensors = {name: tensor_of(state, name, path) for name in ("b_enc", "W_dec", "b_dec")}
    tensors["W_enc"] = W_enc.T
    if jump:
        tensors["threshold"] = state[THRESHOLD].float()  # x * 1[x > theta], as ours: no clamp
    if cfg.skip:
        tensors["W_skip"] = state["W_skip"]
    return SparseAutoencoder.from_tensors(cfg, tensors, path, device=device)


def clt_files(folder: Path) -> tuple[int, dict[int, Path], dict[int, Path]]:
    """(L, encoder files, decoder files) of a CLT folder; a file set with a missing layer is refused in one line."""
    encoders = {int(m.group(1)): f for f in folder.iterdir() if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", f.name))}
    decoders = {int(m.group(1)): f for f in folder.iterdir() if (m := re.fullmatch(r"W_dec_(\d+)\.safetensors", f.name))}
    if not encoders:
        raise FileNotFoundError(f"{folder} holds no W_enc_<l>.safetensors: not a circuit-tracer CLT")
    L = max(max(encoders), max(decoders, default=-1)) + 1
    for what, files in (("W_enc", encoders), ("W_dec", decoders)):
        missing = sorted(set(range(L)) - set(files))
        if missing:
            raise ValueError(
                f"{folder}: a CLT over layers 0..{L - 1} needs {what}_<l>.safetensors for each; layers {missing} are "
                f"missing (found {sorted(files)})"
            )
    return L, encoders, decoders


def _clt_layer_tensors(layer: int, enc_file: Path) -> dict[str, torch.Tensor]:
    """One W_enc_{l}.safetensors's tensors by their names without the layer suffix; unknown ones refused."""
    state = read_safetensors(enc_file)
    known = {f"{name}_{layer}": name for name in ("W_enc", "b_enc", "b_dec", "threshold")}
    extra = sorted(set(state) - set(known))
    if extra:
        skip = [name for name in extra if "skip" in name.lower()]
        why = (
            "circuit-tracer's load_clt never reads a W_skip from disk, and the layout does not fix its orientation"
            if skip
            else "circuit-tracer's CrossLayerTranscoder has no place for them"
        )
        raise ValueError(f"{enc_file} holds tensors {extra}: {why}")
    return {known[name]: t for name, t in state.items()}


def load_clt(folder: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    """A circuit-tracer CLT folder (config.yaml + W_enc_{l} / W_dec_{l} files) as our CLT over all its layers."""
    folder = Path(folder)
    raw = read_config(folder)
    if raw is not None and raw["model_kind"] != "cross_layer_transcoder":
        raise ValueError(f"{folder / CONFIG}: model_kind {raw['model_kind']!r}; a folder of W_enc_<l> files is a CLT")
    L, encoders, decoders = clt_files(folder)
    shape = tensor_shapes(encoders[0]).get("W_enc_0")
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"{encoders[0]} lacks a 2-D W_enc_0 [d_transcoder, d_model]; it holds {sorted(tensor_shapes(encoders[0]))}"
        )
    n, d = shape
    for layer, file in decoders.items():  # headers first: a wrong decoder is refused before anything is read
        got = tensor_shapes(file).get(f"W_dec_{layer}")
        if got is None or tuple(got) != (n, L - layer, d):
            raise ValueError(f"{file}: W_dec_{layer} has shape {got}, expected [{n}, {L - layer}, {d}] (layer {layer} of {L})")
    layers = [_clt_layer_tensors(i, encoders[i]) for i in range(L)]
    has_threshold = ["threshold" in t for t in layers]
    if any(has_threshold) and not all(has_threshold):
        raise ValueError(f"{folder}: layers {[i for i, h in enumerate(has_threshold) if h]} hold threshold_<l>, the others none")
    cfg = raw_cfg(
        folder / CONFIG,
        d_in=d,
        d_sae=n,
        dtype=dtype,
        d_out=int(tensor_of(layers[0], "b_dec", encoders[0]).shape[0]),
        layers=L,
        **_hooks("{}", raw),
    )
    stack = {
        name: torch.stack([tensor_of(t, name, encoders[i]) for i, t in enumerate(layers)]) for name in ("W_enc", "b_enc", "b_dec")
    }
    tensors = {"W_enc": stack["W_enc"].transpose(1, 2), "b_enc": stack["b_enc"], "b_dec": stack["b_dec"]}
    if all(has_threshold):
        tensors["threshold"] = torch.stack([t["threshold"].reshape(-1).float() for t in layers])
    else:
        tensors["threshold"] = torch.zeros(L, n)
    for layer, file in decoders.items():
        tensors[f"W_dec_{layer}"] = tensor_of(read_safetensors(file), f"W_dec_{layer}", file)
    return SparseAutoencoder.from_tensors(cfg, tensors, folder, device=device)


def load_clt_layer(path: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    """Layer l of a circuit-tracer CLT (its W_enc_{l}.safetensors; W_dec_{l} beside it) as a one-layer transcoder
    whose decoder sums the layers it writes to (SAELens's mntss_clt_layer_transcoder): for feature activations."""
    path = Path(path)
    m = re.fullmatch(r"W_enc_(\d+)\.safetensors", path.name)
    if m is None:
        raise ValueError(f"{path}: one CLT layer is read from its W_enc_<l>.safetensors")
    layer = int(m.group(1))
    raw = read_config(path.parent)
    t = _clt_layer_tensors(layer, path)
    dec_file = path.with_name(f"W_dec_{layer}.safetensors")
    W_dec = tensor_of(read_safetensors(dec_file), f"W_dec_{layer}", dec_file)
    if W_dec.dim() != 3:
        raise ValueError(f"{dec_file}: W_dec_{layer} has shape {tuple(W_dec.shape)}; expected [d_transcoder, L - l, d_model]")
    warnings.warn(
        f"{path}: CLT layer {layer} read as a one-layer transcoder, its decoders into {W_dec.shape[1]} layers summed (as "
        "SAELens's mntss_clt_layer_transcoder): use it for feature activations, not for reconstruction; the whole CLT "
        "loads from its folder",
        stacklevel=2,
    )
    W_enc = tensor_of(t, "W_enc", path)
    jump = "threshold" in t
    cfg = raw_cfg(
        path,
        d_in=W_enc.shape[1],
        d_sae=W_enc.shape[0],
        dtype=dtype,
        family="jumprelu" if jump else "standard",
        d_out=int(W_dec.shape[-1]),
        **_hooks(layer, raw),
    )
    tensors = {"W_enc": W_enc.T, "b_enc": t["b_enc"], "b_dec": t["b_dec"], "W_dec": W_dec.double().sum(1)}
    if jump:
        tensors["threshold"] = t["threshold"].reshape(-1).float()
    return SparseAutoencoder.from_tensors(cfg, tensors, path, device=device)


def load_transcoder_set(
    folder: str | Path, device: torch.device | str | None = None, dtype: str | None = None
) -> dict[int, SparseAutoencoder]:
    """Every layer of a circuit-tracer transcoder set, by layer; a set with a missing layer is refused."""
    folder = Path(folder)
    files = {int(m.group(1)): f for f in sorted(folder.iterdir()) if (m := LAYER_FILE.fullmatch(f.name))}
    if not files:
        raise FileNotFoundError(f"{folder} holds no layer_<l>.safetensors: not a circuit-tracer transcoder set")
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise ValueError(
            f"{folder}: a transcoder set has one layer_<l>.safetensors per layer from 0; layers {missing} are missing"
        )
    return {layer: load_layer(files[layer], device=device, dtype=dtype) for layer in sorted(files)}


def _load(path: Path, device: torch.device | str | None = None, dtype: str | None = None) -> SparseAutoencoder:
    return load_layer(path, device=device, dtype=dtype) if path.is_file() else load_clt(path, device=device, dtype=dtype)


# --- writing -------------------------------------------------------------------------------
def _threshold(sae: SparseAutoencoder) -> torch.Tensor | None:
    """What circuit-tracer's JumpReLU (x * 1[x > theta]) needs to select as this dictionary does at inference, or
    None for ReLU; a selection it cannot express is refused in one line."""
    family = sae.family
    if sae.cfg.family == "standard":
        return None
    if isinstance(family, JumpReLU):
        return sae.file_tensors()["threshold"].float()  # the same rule, negative thresholds included
    if isinstance(family, ThresholdInference):
        pending = next((p for p in (f.saelens_pending() for f in sae.families) if p), "")
        if pending:
            raise ValueError(f"family {sae.cfg.family!r} cannot be saved for circuit-tracer: {pending}")
        theta = sae.file_tensors()["threshold"].float()  # a latent never selected in training (-1) never fires
        return torch.where(theta >= 0, theta, torch.full_like(theta, torch.finfo(torch.float32).max))
    raise ValueError(
        f"family {sae.cfg.family!r} cannot be saved for circuit-tracer: its transcoders are ReLU or JumpReLU (ours: "
        "standard, jumprelu, and the threshold families at inference), and its TopK cannot be loaded from disk"
    )


def _check_widths(sae: SparseAutoencoder, what: str) -> None:
    cfg = sae.cfg
    if not cfg.is_transcoder:
        raise ValueError(f"{what} is an SAE: circuit-tracer's layouts hold transcoders (SAEConfig d_out=...)")
    if cfg.out_width != cfg.d_in:
        raise ValueError(f"{what} predicts d_out={cfg.out_width} from d_in={cfg.d_in}: circuit-tracer's have one width d_model")
    if cfg.normalize not in ("none", "dataset_scalar"):
        raise ValueError(f"normalize={cfg.normalize!r} cannot be saved for circuit-tracer: it reads raw activations")


def _sites(sae: SparseAutoencoder, layer: int | str, what: str) -> tuple[str, str]:
    """(feature_input_hook, feature_output_hook): the dictionary's hooks as blocks.{layer}.<site>."""
    sites = site_of(sae.cfg.hook_name, layer), site_of(sae.cfg.target_hook, layer)
    if sites[0] is None or sites[1] is None:
        raise ValueError(
            f"{what} reads {sae.cfg.hook_name!r} and predicts {sae.cfg.target_hook!r}: circuit-tracer's config.yaml names "
            f"hooks inside each block, so they must be blocks.{layer}.<hook> (set hook_name and target_hook)"
        )
    return sites[0], sites[1]


def _write_config(folder: Path, kind: str, sites: tuple[str, str], model_name: str) -> None:
    import yaml

    config = {"model_kind": kind, "feature_input_hook": sites[0], "feature_output_hook": sites[1]}
    if model_name:
        config["model_name"] = model_name
    text = yaml.safe_dump(config, sort_keys=False)
    (folder / CONFIG).write_text(text)


def save_transcoder_set(transcoders: dict[int, SparseAutoencoder], folder: str | Path) -> Path:
    """Write one transcoder per layer 0..L-1 as circuit-tracer's transcoder set: config.yaml + layer_{l}.safetensors
    (what `TranscoderSet.to_safetensors` writes and `load_transcoder_set` reads). Every check runs before a file is
    written: the layers 0..L-1 all present, one width and one number of features, hooks blocks.{l}.<same site>."""
    if not isinstance(transcoders, dict) or not transcoders:
        raise ValueError("save_transcoder_set takes {layer: transcoder} with at least one transcoder")
    bad = [k for k in transcoders if isinstance(k, bool) or not isinstance(k, int)]
    if bad:
        raise ValueError(f"save_transcoder_set: layers must be ints, got {bad}")
    missing = sorted(set(range(max(transcoders) + 1)) - set(transcoders))
    if missing:
        raise ValueError(f"a circuit-tracer transcoder set has one transcoder per layer from 0; layers {missing} are missing")
    first = transcoders[0].cfg
    sites = None
    for layer in sorted(transcoders):
        sae, what = transcoders[layer], f"the transcoder of layer {layer}"
        if sae.cfg.is_clt:
            raise ValueError(f"{what} is a CLT: save it alone with sae.save(folder, format='circuit-tracer')")
        _check_widths(sae, what)
        if (sae.cfg.d_in, sae.cfg.n_latents) != (first.d_in, first.n_latents):
            raise ValueError(
                f"{what} has d={sae.cfg.d_in}, {sae.cfg.n_latents} features; layer 0's d={first.d_in}, {first.n_latents}: "
                "circuit-tracer's set has one width and one number of features"
            )
        these = _sites(sae, layer, what)
        if sites is not None and these != sites:
            raise ValueError(f"{what} reads/predicts {these}, layer 0's transcoder {sites}: a set names one pair of hooks")
        sites = these
        _threshold(sae)
    assert sites is not None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for layer in sorted(transcoders):
        sae = transcoders[layer].folded()
        t = sae.file_tensors()
        out = {"W_enc": t["W_enc"].T.contiguous(), "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
        threshold = _threshold(sae)
        if threshold is not None:
            out[THRESHOLD] = threshold.to(t["b_enc"].dtype)
        if sae.cfg.skip:
            out["W_skip"] = t["W_skip"]
        write_safetensors(folder / f"layer_{layer}.safetensors", out)
    _write_config(folder, "transcoder_set", sites, first.model_name)
    return folder


def save(sae: SparseAutoencoder, path: Path) -> Path:
    """A CLT as circuit-tracer's cross_layer_transcoder folder (what `CrossLayerTranscoder.to_safetensors` writes
    and `load_clt` reads); a one-layer transcoder goes into a set with `save_transcoder_set`."""
    cfg = sae.cfg
    if cfg.is_transcoder and not cfg.is_clt:
        raise ValueError(
            "format 'circuit-tracer' saves a CLT; a one-layer transcoder belongs to a transcoder set, one per layer "
            "0..L-1: save them together with sae.formats.save_transcoder_set({layer: transcoder, ...}, folder)"
        )
    _check_widths(sae, "this dictionary")
    if cfg.skip:
        raise ValueError(
            "a skip CLT cannot be saved for circuit-tracer: its load_clt never reads W_skip from disk (it would load "
            "without the skip term); save it with format='saelens' (ours)"
        )
    if cfg.first_layer != 0:
        raise ValueError(
            f"this CLT starts at layer {cfg.first_layer}: circuit-tracer counts a CLT's layers from its files, from 0"
        )
    sites = _sites(sae, "{}", "this CLT")
    _threshold(sae)  # refuses a selection circuit-tracer cannot express before anything is written
    path.mkdir(parents=True, exist_ok=True)
    sae = sae.folded()
    t = sae.file_tensors()
    threshold = _threshold(sae)
    for layer in range(cfg.layers):
        enc = {
            f"W_enc_{layer}": t["W_enc"][layer].T.contiguous(),
            f"b_enc_{layer}": t["b_enc"][layer].contiguous(),
            f"b_dec_{layer}": t["b_dec"][layer].contiguous(),
        }
        if threshold is not None:
            enc[f"threshold_{layer}"] = threshold[layer].to(t["b_enc"].dtype).contiguous()
        write_safetensors(path / f"W_enc_{layer}.safetensors", enc)
        write_safetensors(path / f"W_dec_{layer}.safetensors", {f"W_dec_{layer}": t[f"W_dec_{layer}"].contiguous()})
    _write_config(path, "cross_layer_transcoder", sites, cfg.model_name)
    return path


# --- detection -----------------------------------------------------------------------------
def _config_kind(folder: Path) -> str | None:
    """A folder's model_kind, '' for a config.yaml that is unreadable or names another kind, None without one."""
    try:
        raw = read_config(folder)
    except ValueError:
        return ""
    return None if raw is None else raw["model_kind"]


def detect(path: Path) -> bool:
    """A CLT folder (config.yaml naming a CLT or an unknown model_kind, which load refuses; or W_enc_0.safetensors),
    or a transcoder set's layer_{l}.safetensors file (config.yaml beside it, or W_enc [F, d] in its header)."""
    if path.is_dir():
        kind = _config_kind(path)
        if kind is None:
            return (path / "W_enc_0.safetensors").exists()
        return kind != "transcoder_set"
    if not LAYER_FILE.fullmatch(path.name):
        return False
    kind = _config_kind(path.parent)
    if kind is not None:
        return kind == "transcoder_set"
    shapes = tensor_shapes(path)
    return "W_enc" in shapes and "b_dec" in shapes


def hooks(path: Path) -> list[str]:
    """The hooks the dictionary at `path` reads, from config.yaml and the file names (nothing loaded)."""
    try:
        raw = read_config(path if path.is_dir() else path.parent)
    except ValueError:
        return []
    site_in = _hook_sites(raw)[0]
    if not site_in:
        return []
    if path.is_file():
        layer = layer_of(path.name)
        return [block_hook(layer, site_in)] if layer is not None else []
    layers = [int(m.group(1)) for f in path.iterdir() if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", f.name))]
    return [block_hook(layer, site_in) for layer in sorted(layers)]


FORMAT = Format(
    "circuit-tracer",
    f"{CONFIG} + layer_<l>.safetensors (a transcoder set) or W_enc_<l> / W_dec_<l>.safetensors (a CLT)",
    detect=detect,
    load=_load,
    save=save,
    hooks=hooks,
)
CLT_LAYER = Format(
    "circuit-tracer-clt-layer", "W_enc_<l>.safetensors + W_dec_<l>.safetensors, one CLT layer", load=load_clt_layer
)
