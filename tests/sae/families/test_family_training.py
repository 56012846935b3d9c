"""Every family trains, saves, loads, resumes and evaluates through the same code as TopK."""

import json

import pytest
import torch

from sae.analysis.evaluate import reconstruction_metrics
from sae.config import SAEConfig, TrainConfig
from sae.data import TensorBatches
from sae.model import SparseAutoencoder
from sae.train import train

from .conftest import D, N

TRAINABLE = {
    "topk": {},
    "batchtopk": {"options": {"threshold_start_step": 5, "threshold_beta": 0.9}},
    "abstopk": {},
    "adaptivek": {"options": {"probe_fit_at": 0.3}},
    "featurechoice": {"options": {"threshold_start_step": 5, "threshold_beta": 0.9}},
    "mutualchoice": {"options": {"threshold_start_step": 5, "threshold_beta": 0.9}},
    "topafa": {"k": None},
    "hierarchicaltopk": {"k": 8},
    "matryoshka": {"options": {"threshold_start_step": 5, "threshold_beta": 0.9, "prefixes": [16, 32, 64, 128]}},
    "vsae": {},
    "standard": {"k": None, "options": {"l1_coef": 0.1}},
    "jumprelu": {"k": None},
    "jumprelu_tanh": {"family": "jumprelu", "k": None, "options": {"sparsity_loss": "tanh"}},
    "gated": {"k": None},
}


def sparse_acts(n: int = 4096, seed: int = 0) -> torch.Tensor:
    """Sparse sums of 4 of 96 directions plus an offset: what a dictionary can learn."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(96, D, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    idx = torch.rand(n, 96, generator=g).topk(4, dim=1).indices
    coef = torch.rand(n, 4, generator=g) * 3 + 0.5
    return (coef[..., None] * feats[idx]).sum(1) + 2.0


def build(family: str) -> SparseAutoencoder:
    kw = {"k": 4, "family": family, **TRAINABLE[family]}
    return SparseAutoencoder(SAEConfig(d_in=D, n_latents=N, **kw), seed=1)


def tcfg(steps: int = 40) -> TrainConfig:
    return TrainConfig(
        tokens=256 * steps,
        batch_size=256,
        lr=3e-3,
        dead_window_tokens=2048,
        init_tokens=1024,
        checkpoint_every=10,
        log_every=10,
        seed=3,
        warmup_frac=0.0,
        decay_frac=0.0,
    )


@pytest.fixture(scope="module")
def acts() -> torch.Tensor:
    return sparse_acts()


@pytest.mark.parametrize("family", sorted(TRAINABLE))
def test_training_lowers_the_loss(family, acts, tmp_path):
    sae = build(family)
    held = acts[-1024:]
    train(sae, TensorBatches(acts[:-1024], 256, seed=0), tcfg(1), out_dir=None)  # init + 1 step
    first = reconstruction_metrics(sae, [held])
    train(sae, TensorBatches(acts[:-1024], 256, seed=0), tcfg(80), out_dir=tmp_path)
    last = reconstruction_metrics(sae, [held])
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"], "the training loss must fall"
    if family != "vsae":  # vSAE's mean path lags its noisy training loss on so short a run (see families.md)
        assert last["fvu"] < 0.8 * first["fvu"], (first, last)
    if family in ("topk", "abstopk", "hierarchicaltopk", "vsae"):
        assert last["l0"] <= TRAINABLE[family].get("k", 4) + 1e-6


@pytest.mark.parametrize("family", sorted(TRAINABLE))
def test_save_load_round_trip(family, acts, tmp_path):
    sae = build(family)
    train(sae, TensorBatches(acts, 256, seed=0), tcfg(12), out_dir=None)
    sae.eval()
    x = acts[:128]
    ref = sae(x).x_hat
    sae.save(tmp_path)
    loaded = SparseAutoencoder.load(tmp_path).eval()
    assert loaded.cfg == sae.cfg
    torch.testing.assert_close(loaded(x).x_hat, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", sorted(TRAINABLE))
def test_resume_matches_uninterrupted_run(family, acts, tmp_path):
    full = build(family)
    train(full, TensorBatches(acts, 256, seed=0), tcfg(20), out_dir=tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_at_13(trainer):
        if trainer.step == 13:
            raise Stop

    part = build(family)
    with pytest.raises(Stop):
        train(part, TensorBatches(acts, 256, seed=0), tcfg(20), out_dir=tmp_path / "part", on_step=stop_at_13)
    resumed = build(family)
    train(resumed, TensorBatches(acts, 256, seed=0), tcfg(20), out_dir=tmp_path / "part", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{family}: {name} differs after resume"
