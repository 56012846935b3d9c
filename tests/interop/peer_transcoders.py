"""The peers' half of the transcoder interop tests; runs in .venv-interop (sae-lens, eai-sparsify), never imports
saekit.

    python peer_transcoders.py WORKDIR

1. Builds transcoders with SAELens's four transcoder classes and sparsify's SparseCoder (transcode, skip_connection,
   and a skip SAE), random weights, saved by their own savers under WORKDIR/theirs/NAME, and records what their
   loaders' reloaded objects compute on WORKDIR/x.safetensors.
2. Loads every transcoder saekit saved under WORKDIR/ours/NAME (WORKDIR/ours/manifest.json: NAME -> layout) with
   their loaders and records what those compute.
Outputs: WORKDIR/theirs.safetensors and WORKDIR/ours_in_theirs.safetensors, keys NAME.codes and NAME.out (the
prediction, skip term included), and WORKDIR/ours_in_theirs.json (what their loaders made of ours).
"""

import json
import sys
from pathlib import Path

import torch
from sae_lens import (
    SAE,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    Transcoder,
    TranscoderConfig,
)
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder, SparseCoderConfig

D, O, N, K = 16, 12, 48, 4  # SAELens's transcoders may change width; sparsify's have one (d_out = d_in = D)
HOOKS = {"hook_name": "blocks.3.hook_mlp_in", "hook_name_out": "blocks.3.hook_mlp_out", "model_name": "tiny"}


def randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = {"W_enc": 0.4, "encoder.weight": 0.4, "W_dec": 0.3, "W_skip": 0.2}.get(name, 0.1)
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if hasattr(module, "threshold"):
            module.threshold.copy_(torch.rand(module.threshold.shape, generator=g) * 0.2)


def saelens_outputs(sae: SAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {"codes": sae.encode(x), "out": sae(x)}


def sparsify_outputs(coder: SparseCoder, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        enc = coder.encode(x)
        codes = torch.zeros(x.shape[0], coder.num_latents).scatter(1, enc.top_indices, enc.top_acts)
        return {"codes": codes, "out": coder(x).sae_out}


def build_theirs(root: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    makers = {
        "transcoder": lambda: Transcoder(TranscoderConfig(d_in=D, d_sae=N, d_out=O, apply_b_dec_to_input=False)),
        "skip_transcoder": lambda: SkipTranscoder(SkipTranscoderConfig(d_in=D, d_sae=N, d_out=O, apply_b_dec_to_input=False)),
        "jumprelu_transcoder": lambda: JumpReLUTranscoder(
            JumpReLUTranscoderConfig(d_in=D, d_sae=N, d_out=O, apply_b_dec_to_input=False)
        ),
        "jumprelu_skip_transcoder": lambda: JumpReLUSkipTranscoder(
            JumpReLUSkipTranscoderConfig(d_in=D, d_sae=N, d_out=O, apply_b_dec_to_input=False)
        ),
    }
    out = {}
    for i, (name, make) in enumerate(makers.items()):
        sae = make()
        for key, value in HOOKS.items():
            setattr(sae.cfg.metadata, key, value)
        randomise(sae, i)
        sae.save_model(root / name)
        reloaded = SAE.load_from_disk(root / name)
        assert type(reloaded) is type(sae), (type(reloaded), type(sae))
        out.update({f"{name}.{k}": v for k, v in saelens_outputs(reloaded, x).items()})
    # sparsify: a transcoder folder is named after the module it wraps; a skip SAE after its layer
    coders = {
        "sparsify_transcoder/layers.3.mlp": SparseCoderConfig(k=K, num_latents=N, transcode=True),
        "sparsify_skip_transcoder/layers.3.mlp": SparseCoderConfig(k=K, num_latents=N, transcode=True, skip_connection=True),
        "sparsify_skip_sae/layers.3": SparseCoderConfig(k=K, num_latents=N, skip_connection=True),
    }
    for i, (name, cfg) in enumerate(coders.items()):
        coder = SparseCoder(D, cfg)
        randomise(coder, 100 + i)
        coder.save_to_disk(root / name)
        out.update({f"{name}.{k}": v for k, v in sparsify_outputs(SparseCoder.load_from_disk(root / name), x).items()})
    return out


def read_ours(root: Path, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    out, seen = {}, {}
    for name, layout in json.loads((root / "manifest.json").read_text()).items():
        if layout == "sparsify":
            coder = SparseCoder.load_from_disk(root / name)
            result = sparsify_outputs(coder, x)
            seen[name] = {"transcode": coder.cfg.transcode, "skip": coder.W_skip is not None}
        else:
            sae = SAE.load_from_disk(root / name)
            result = saelens_outputs(sae, x)
            seen[name] = {"architecture": sae.cfg.architecture(), "hook_name_out": sae.cfg.metadata.hook_name_out}
        out.update({f"{name}.{k}": v for k, v in result.items()})
    return out, seen


def main(work: Path) -> None:
    x = load_file(work / "x.safetensors")["x"]
    save_file({k: v.contiguous() for k, v in build_theirs(work / "theirs", x).items()}, work / "theirs.safetensors")
    ours, seen = read_ours(work / "ours", x)
    save_file({k: v.contiguous() for k, v in ours.items()}, work / "ours_in_theirs.safetensors")
    (work / "ours_in_theirs.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
