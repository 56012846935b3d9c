"""circuit-tracer's half of the transcoder interop tests; runs in .venv-circuit (circuit-tracer 0.5.0), never imports
saekit. It drives circuit-tracer's transcoder classes and loaders (no model: they are what reads and runs the files).

    python peer_circuit.py WORKDIR

1. Builds transcoder sets (SingleLayerTranscoder per layer, JumpReLU + W_skip, and ReLU) and CLTs (JumpReLU and
   ReLU) with random weights, saved by their own `to_safetensors` under WORKDIR/theirs/NAME with a config.yaml as
   the Hub repos have it; lays out Gemma Scope 2 transcoder_all and CLT files and a Gemma Scope transcoder npz.
   Records what circuit-tracer's loaders (`load_transcoders` from the config, `load_clt`, its Gemma Scope loaders)
   compute on WORKDIR/x.safetensors (x [L, B, d]: layer l's input at x[l]).
2. Loads what saekit saved under WORKDIR/ours/NAME (WORKDIR/ours/manifest.json) through its config.yaml, as
   `load_transcoders` does, and records what that computes.
Outputs: WORKDIR/theirs.safetensors and WORKDIR/ours_in_theirs.safetensors, keys NAME.codes [L, B, F] and NAME.out
[L, B, d] (skip terms included), and WORKDIR/ours_in_theirs.json (the hooks and kinds circuit-tracer read).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder, load_clt, load_gemma_scope_2_clt
from circuit_tracer.transcoder.single_layer_transcoder import (
    SingleLayerTranscoder,
    TranscoderSet,
    load_gemma_scope_2_transcoder,
    load_gemma_scope_transcoder,
)
from circuit_tracer.utils.hf_utils import load_transcoders
from safetensors.torch import load_file, save_file

L, D, N = 3, 16, 40
CPU = torch.device("cpu")
SITES = {"feature_input_hook": "hook_mlp_in", "feature_output_hook": "hook_mlp_out"}


def randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("threshold"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.3)
            else:
                scale = 0.4 if name.startswith(("W_enc", "W_dec")) else 0.2 if name == "W_skip" else 0.1
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def write_config(folder: Path, kind: str) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump({"model_kind": kind, **SITES, "model_name": "tiny"}))


def load_from_config(folder: Path):
    """What `load_transcoders` builds from a folder's config.yaml (a transcoder set's files listed, as a config's
    `transcoders` key lists them; a CLT read from its folder as load_transcoders reads a snapshot)."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    if config["model_kind"] == "transcoder_set":
        files = sorted(folder.glob("layer_*.safetensors"), key=lambda f: int(f.stem.split("_")[1]))
        config.update(transcoders=[str(f) for f in files], scan="test", repo_id="")
        return load_transcoders(config, device=CPU, dtype=torch.float32, lazy_encoder=False, lazy_decoder=False), config
    clt = load_clt(
        str(folder),
        feature_input_hook=config["feature_input_hook"],
        feature_output_hook=config["feature_output_hook"],
        device=CPU,
        dtype=torch.float32,
    )
    return clt, config


def run(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """codes [L, B, F] and prediction [L, B, d] of a TranscoderSet or a CrossLayerTranscoder."""
    with torch.no_grad():
        if isinstance(model, TranscoderSet):
            codes = model.encode(x)
            return {"codes": codes, "out": model.decode(codes, x)}
        codes = model.encode(x)
        return {"codes": codes, "out": model.decode(codes, x if model.W_skip is not None else None)}


def build_theirs(root: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for seed, (name, jump) in enumerate({"set_jumprelu_skip": True, "set_relu": False}.items()):
        layers = {}
        for layer in range(L):
            act = JumpReLU(torch.zeros(N), 0.1) if jump else F.relu
            layers[layer] = SingleLayerTranscoder(D, N, act, layer, skip_connection=jump, device=CPU, dtype=torch.float32)
            randomise(layers[layer], 10 * seed + layer)
        TranscoderSet(layers, **SITES).to_safetensors(str(root / name))
        write_config(root / name, "transcoder_set")
        out.update({f"{name}.{k}": v for k, v in run(load_from_config(root / name)[0], x).items()})
    for seed, (name, act) in enumerate({"clt_jumprelu": "jump_relu", "clt_relu": "relu"}.items()):
        clt = CrossLayerTranscoder(L, N, D, act, lazy_decoder=False, device=CPU, dtype=torch.float32)
        randomise(clt, 50 + seed)
        clt.to_safetensors(str(root / name))
        write_config(root / name, "cross_layer_transcoder")
        out.update({f"{name}.{k}": v for k, v in run(load_from_config(root / name)[0], x).items()})
    out.update(gemma_scope(root, x))
    return out


def gemma_params(g: torch.Generator, w_dec_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {
        "w_enc": torch.randn(D, N, generator=g) * 0.4,
        "w_dec": torch.randn(*w_dec_shape, generator=g) * 0.4,
        "b_enc": torch.randn(N, generator=g) * 0.1,
        "b_dec": torch.randn(D, generator=g) * 0.1,
        "threshold": torch.rand(N, generator=g) * 0.3,
        "affine_skip_connection": torch.randn(D, D, generator=g) * 0.2,
    }


def gemma_scope(root: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gemma Scope 2 and Gemma Scope transcoder files in the repos' layouts, read by circuit-tracer's loaders."""
    g = torch.Generator().manual_seed(99)
    out: dict[str, torch.Tensor] = {}
    layers = {}
    for layer in range(L):
        folder = root / "gemma-scope-2" / "transcoder_all" / f"layer_{layer}_width_16k_l0_small_affine"
        folder.mkdir(parents=True)
        save_file(gemma_params(g, (N, D)), folder / "params.safetensors")
        layers[layer] = load_gemma_scope_2_transcoder(str(folder / "params.safetensors"), layer, device=CPU)
    out.update({f"gs2_transcoder_all.{k}": v for k, v in run(TranscoderSet(layers, **SITES), x).items()})
    clt = root / "gemma-scope-2" / "clt" / "width_16k_l0_small_affine"
    clt.mkdir(parents=True)
    paths = {}
    for layer in range(L):
        params = gemma_params(g, (N, L, D))
        params["w_dec"][:, :layer] = 0  # a feature writes into its own and later layers only
        paths[layer] = str(clt / f"params_layer_{layer}.safetensors")
        save_file(params, paths[layer])
    # circuit-tracer 0.5.0's load_gemma_scope_2_clt reads layers range(max(paths)): one key past the last reads all
    model = load_gemma_scope_2_clt({**paths, L: ""}, **SITES, device=CPU, dtype=torch.float32)
    out.update({f"gs2_clt.{k}": v for k, v in run(model, x).items()})
    npz = root / "gemma-scope-2b-pt-transcoders" / "layer_1" / "width_16k" / "average_l0_8"
    npz.mkdir(parents=True)
    arrays = {"W_enc": torch.randn(D, N, generator=g) * 0.4, "W_dec": torch.randn(N, D, generator=g) * 0.4}
    arrays.update(b_enc=torch.randn(N, generator=g) * 0.1, b_dec=torch.randn(D, generator=g) * 0.1)
    arrays["threshold"] = torch.rand(N, generator=g) * 0.3
    np.savez(npz / "params.npz", **{k: v.numpy() for k, v in arrays.items()})
    one = load_gemma_scope_transcoder(str(npz / "params.npz"), 1, device=CPU)
    with torch.no_grad():
        codes = one.encode(x[1])
        out.update({"gs_transcoder.codes": codes, "gs_transcoder.out": one.decode(codes)})
    return out


def read_ours(root: Path, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    out, seen = {}, {}
    for name in json.loads((root / "manifest.json").read_text()):
        model, config = load_from_config(root / name)
        out.update({f"{name}.{k}": v for k, v in run(model, x).items()})
        seen[name] = {
            "kind": type(model).__name__,
            "hooks": [model.feature_input_hook, model.feature_output_hook],
            "skip": model.skip_connection,
            "model_name": config.get("model_name"),
        }
    return out, seen


def main(work: Path) -> None:
    x = load_file(work / "x.safetensors")["x"]
    save_file({k: v.contiguous() for k, v in build_theirs(work / "theirs", x).items()}, work / "theirs.safetensors")
    ours, seen = read_ours(work / "ours", x)
    save_file({k: v.contiguous() for k, v in ours.items()}, work / "ours_in_theirs.safetensors")
    (work / "ours_in_theirs.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
