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
import os
import sys
import warnings
from pathlib import Path

import sae_lens
import sae_lens.loading.pretrained_sae_loaders as saelens_loaders
import torch
import yaml
from huggingface_hub import hf_hub_download
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
from safetensors import safe_open
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


COMMIT = "0123456789abcdef0123456789abcdef01234567"
REGISTRY = {  # SAELens release -> (sae id, repo)
    "gemma-scope-2-1b-pt-transcoders-all": ("layer_3_width_16k_l0_big_affine", "google/gemma-scope-2-1b-pt"),
    "mwhanna-qwen3-0.6b-transcoders-lowl0": ("layer_1", "mwhanna/qwen3-0.6b-transcoders-lowl0"),
    "mntss-gemma-2-2b-2.5m-clt-as-per-layer": ("layer_1", "mntss/clt-gemma-2-2b-2.5M"),
}


def snapshot(repo: str) -> Path:
    """An (empty) cached snapshot of `repo` under $HF_HUB_CACHE, its main ref set."""
    base = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(COMMIT)
    (base / "snapshots" / COMMIT).mkdir(parents=True, exist_ok=True)
    return base / "snapshots" / COMMIT


def cached_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
    with safe_open(hf_hub_download(repo_id, filename), framework="pt") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


def from_registry(x: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)

    def rnd(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    folder = snapshot("google/gemma-scope-2-1b-pt") / "transcoder_all" / "layer_3_width_16k_l0_big_affine"
    folder.mkdir(parents=True)
    gemma = {"w_enc": rnd(D, N), "w_dec": rnd(N, O), "b_enc": rnd(N, scale=0.1), "b_dec": rnd(O), "threshold": rnd(N).abs()}
    save_file({**gemma, "affine_skip_connection": rnd(D, O)}, folder / "params.safetensors")
    qwen = snapshot("mwhanna/qwen3-0.6b-transcoders-lowl0")
    save_file({"W_enc": rnd(N, D), "W_dec": rnd(N, D), "b_enc": rnd(N, scale=0.1), "b_dec": rnd(D)}, qwen / "layer_1.safetensors")
    sites = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out", "model_name": "Qwen/Qwen3-0.6B"}
    (qwen / "config.yaml").write_text(yaml.safe_dump({"model_kind": "transcoder_set", **sites}))
    sizes = {"d_model": {"value": D}, "d_feature": {"value": N}, "batch_size": {"value": 64}}
    (qwen / "wandb-config.yaml").write_text(yaml.safe_dump(sizes))
    clt = snapshot("mntss/clt-gemma-2-2b-2.5M")  # a ReLU CLT over 3 layers: SAELens reads layer 1 alone
    (clt / "config.yaml").write_text(
        yaml.safe_dump({"model_kind": "cross_layer_transcoder", **sites, "model_name": "gemma-2-2b"})
    )
    save_file({"W_enc_1": rnd(N, D), "b_enc_1": rnd(N, scale=0.1), "b_dec_1": rnd(D)}, clt / "W_enc_1.safetensors")
    save_file({"W_dec_1": rnd(N, 2, D)}, clt / "W_dec_1.safetensors")
    saelens_loaders.get_safetensors_tensor_shapes = cached_shapes
    out = {}
    for release, (sae_id, _) in REGISTRY.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the mntss loader warns that it sums the decoders
            sae = SAE.from_pretrained(release, sae_id, device="cpu")
        out.update({f"registry/{release}/{sae_id}.{k}": v for k, v in saelens_outputs(sae, x).items()})
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
    theirs = {**build_theirs(work / "theirs", x), **from_registry(x)}
    save_file({k: v.contiguous() for k, v in theirs.items()}, work / "theirs.safetensors")
    ours, seen = read_ours(work / "ours", x)
    seen["_saelens_registry"] = str(Path(sae_lens.__file__).with_name("pretrained_saes.yaml"))
    save_file({k: v.contiguous() for k, v in ours.items()}, work / "ours_in_theirs.safetensors")
    (work / "ours_in_theirs.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
