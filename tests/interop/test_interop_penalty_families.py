"""Trained JumpReLU and gated dictionaries, saved in SAELens's layout, load in SAELens 6 (`SAE.load_from_disk`, run
in .venv-interop) with the codes and reconstructions ours gives (relative error < 1e-5, fp32)."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae import SAEConfig, SparseAutoencoder, TrainConfig, train
from sae.data import TensorBatches

pytestmark = pytest.mark.slow  # runs SAELens in its own environment

D, N = 24, 96
REPO = Path(__file__).resolve().parents[2]
RUNS = {
    "jumprelu_step": ({"family": "jumprelu"}, "saelens-strict"),
    "jumprelu_tanh": ({"family": "jumprelu", "options": {"sparsity_loss": "tanh"}}, "saelens-strict"),
    "jumprelu_no_b_dec": ({"family": "jumprelu", "options": {"apply_b_dec_to_input": False}}, "saelens"),
    "gated": ({"family": "gated"}, "saelens-strict"),
}
# SAELens's side: load each folder with SAE.load_from_disk, write its codes and outputs (never imports saekit)
PEER = """
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
root = Path(sys.argv[1])
x = load_file(root / "x.safetensors")["x"]
out = {}
for folder in sorted(p for p in root.iterdir() if p.is_dir()):
    sae = SAE.load_from_disk(str(folder))
    sae.eval()
    with torch.no_grad():
        out[folder.name + ".codes"] = sae.encode(x).contiguous()
        out[folder.name + ".out"] = sae(x).contiguous()
        out[folder.name + ".arch"] = torch.tensor([len(sae.cfg.architecture())])
save_file(out, root / "theirs.safetensors")
"""


def interop_python() -> Path | None:
    env = os.environ.get("SAEKIT_INTEROP_PYTHON")
    path = Path(env) if env else REPO / ".venv-interop" / "bin" / "python"
    return path if path.exists() else None


def acts(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(48, D, generator=g)
    idx = torch.rand(n, 48, generator=g).topk(3, dim=1).indices
    return (torch.rand(n, 3, 1, generator=g) * 2 * feats[idx]).sum(1) + 0.5


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    python = interop_python()
    if python is None:
        why = "no interop environment: set SAEKIT_INTEROP_PYTHON to a python with sae-lens"
        if os.environ.get("SAEKIT_REQUIRE_INTEROP") == "1":
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("penalty_interop")
    x = acts(64, seed=9)
    save_file({"x": x}, root / "x.safetensors")
    ours = {}
    for i, (name, (kw, layout)) in enumerate(RUNS.items()):
        sae = SparseAutoencoder(SAEConfig(d_in=D, n_latents=N, **kw), seed=i)
        cfg = TrainConfig(tokens=128 * 30, batch_size=128, init_tokens=512, log_every=10**6, checkpoint_every=10**6, target_l0=8)
        train(sae, TensorBatches(acts(2048, seed=i), 128, seed=0), cfg)
        sae.eval().save(root / name, format=layout)
        ours[name] = sae
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-c", PEER, str(root)], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"SAELens failed to load ours ({python}):\n{done.stderr[-4000:]}")
    return {"x": x, "ours": ours, "theirs": load_file(root / "theirs.safetensors")}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_trained_dictionary_loads_in_saelens(work, name):
    sae, x = work["ours"][name], work["x"]
    codes, out = work["theirs"][f"{name}.codes"], work["theirs"][f"{name}.out"]
    with torch.no_grad():
        ours_codes = sae.encode_dense(x)
        assert (ours_codes != 0).sum(1).float().mean() > 1, "the trained dictionary fires (almost) nothing"
        assert rel_err(codes, ours_codes) < 1e-5
        assert rel_err(out, sae(x).x_hat) < 1e-5
    if sae.cfg.family == "jumprelu":
        assert sae.family.threshold.min() >= 0 and sae.family.threshold.max() > 0, "every threshold is 0: a ReLU, not a JumpReLU"
