"""The peers' half of the interop tests; runs in .venv-interop (sae-lens, eai-sparsify), never imports saekit.

    python peer_side.py WORKDIR

1. Builds dictionaries with SAELens's and sparsify's own classes (random weights), saves them with their own
   savers under WORKDIR/theirs/NAME, and records what their loaders' reloaded objects compute on WORKDIR/x.safetensors.
2. Loads every dictionary saekit saved under WORKDIR/ours/NAME (listed in WORKDIR/ours/manifest.json) with their
   loaders and records what those compute.
Outputs: WORKDIR/theirs.safetensors and WORKDIR/ours_in_theirs.safetensors, keys NAME.codes and NAME.out.
"""

import json
import sys
from pathlib import Path

import torch
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder, SparseCoderConfig

D, N, K = 24, 96, 6


def randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.3 if name in ("W_enc", "W_dec", "encoder.weight") else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if hasattr(module, "threshold"):
            module.threshold.copy_(torch.rand(N, generator=g) * 0.2)
        if hasattr(module, "topk_threshold"):
            module.topk_threshold.fill_(0.15)


def saelens_outputs(sae: SAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        z = sae.encode(x)
        return {"codes": z, "out": sae.decode(z)}


def build_theirs(root: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    meta = {"hook_name": "blocks.2.hook_resid_pre", "model_name": "tiny"}
    makers = {
        "standard": lambda: StandardSAE(StandardSAEConfig(d_in=D, d_sae=N)),
        "standard_no_b_dec": lambda: StandardSAE(StandardSAEConfig(d_in=D, d_sae=N, apply_b_dec_to_input=False)),
        "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D, d_sae=N, k=K)),
        "topk_rescaled": lambda: TopKSAE(TopKSAEConfig(d_in=D, d_sae=N, k=K, rescale_acts_by_decoder_norm=True)),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=N)),
        "gated": lambda: GatedSAE(GatedSAEConfig(d_in=D, d_sae=N)),
        "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=N, k=K)),
        "matryoshka": lambda: MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=N, k=K, matryoshka_widths=[16, 48, N])
        ),
        "layer_norm_topk": lambda: TopKSAE(TopKSAEConfig(d_in=D, d_sae=N, k=K, normalize_activations="layer_norm")),
    }
    out = {}
    for i, (name, make) in enumerate(makers.items()):
        sae = make()
        for key, value in meta.items():
            setattr(sae.cfg.metadata, key, value)
        randomise(sae, i)
        folder = root / name
        if hasattr(sae, "save_inference_model"):  # training classes publish their inference form
            sae.save_inference_model(folder)
        else:
            sae.save_model(folder)
        reloaded = SAE.load_from_disk(folder)
        out.update({f"{name}.{k}": v for k, v in saelens_outputs(reloaded, x).items()})
        (folder / "architecture.txt").write_text(reloaded.cfg.architecture())
    # sparsify: its SparseCoder saved with its own save_to_disk, one folder per hook as in a release
    for i, name in enumerate(["layers.0", "layers.1"]):
        coder = SparseCoder(D, SparseCoderConfig(k=K, num_latents=N))
        randomise(coder, 100 + i)
        coder.save_to_disk(root / "sparsify_repo" / name)
    for name, coder in SparseCoder.load_many(str(root / "sparsify_repo"), local=True).items():
        out.update({f"sparsify/{name}.{k}": v for k, v in sparsify_outputs(coder, x).items()})
    return out


def sparsify_outputs(coder: SparseCoder, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        enc = coder.encode(x)
        codes = torch.zeros(x.shape[0], coder.num_latents).scatter(1, enc.top_indices, enc.top_acts)
        return {"codes": codes, "out": coder.decode(enc.top_acts, enc.top_indices)}


def read_ours(root: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for name, layout in json.loads((root / "manifest.json").read_text()).items():
        if layout == "sparsify":
            result = sparsify_outputs(SparseCoder.load_from_disk(root / name), x)
        else:
            result = saelens_outputs(SAE.load_from_disk(root / name), x)
        out.update({f"{name}.{k}": v for k, v in result.items()})
    return out


def main(work: Path) -> None:
    x = load_file(work / "x.safetensors")["x"]
    save_file({k: v.contiguous() for k, v in build_theirs(work / "theirs", x).items()}, work / "theirs.safetensors")
    save_file({k: v.contiguous() for k, v in read_ours(work / "ours", x).items()}, work / "ours_in_theirs.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
