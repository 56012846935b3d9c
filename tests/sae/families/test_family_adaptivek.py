import pytest
import torch

from sae.config import SAEConfig
from sae.families import TrainStep
from sae.families.adaptivek import fit_probe

from .conftest import K, make


def test_batch_mean_k_equals_target_in_training(x):
    sae = make("adaptivek", options={"k_min": 1, "k_max": 16})
    # a probe that spreads tokens: complexity = 5 + 3 * x_0
    sae.family.set_probe(torch.eye(32)[0] * 3, 5.0)
    k = sae.family.k_per_token(x)
    assert k.float().mean().item() == K  # exactly, not approximately
    assert k.min() >= 1 and k.max() <= 16 and k.min() < K < k.max()
    by_x0 = k[x[:, 0].argsort()].float()
    assert by_x0[:20].mean() + 3 < by_x0[-20:].mean(), "more complex tokens get more latents"
    l0 = sae(x).code.l0()
    assert (l0 <= k).all() and (l0 == k).float().mean() > 0.9  # ReLU may drop a non-positive pick


def test_unfitted_probe_gives_every_token_the_target(x):
    sae = make("adaptivek")
    assert (sae.family.k_per_token(x) == K).all()
    sae.eval()
    assert (sae.family.k_per_token(x) == K).all()


def test_fit_probe_recovers_linear_labels_and_inference_k_is_batch_free():
    sae = make("adaptivek", options={"k_min": 1, "k_max": 16, "probe_target": "labels"})
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(2000, 32, generator=g)
    w = torch.randn(32, generator=g)
    scores = (5 + xs @ w * 0.2 + 0.01 * torch.randn(2000, generator=g)).clamp(0, 10)
    lam = fit_probe(sae, xs, scores)
    assert lam <= 1.0
    torch.testing.assert_close(sae.family.probe_w, w * 0.2, atol=0.01, rtol=0.05)
    sae.eval()
    k_all = sae.family.k_per_token(xs)
    k_one = torch.cat([sae.family.k_per_token(xs[i : i + 1]) for i in range(10)])
    assert torch.equal(k_all[:10], k_one)
    stats = sae.family.k_stats(sae, xs)
    assert stats["k_std"] > 1 and stats["k_min"] >= 1 and stats["k_max"] <= 16


def test_self_supervised_probe_is_fitted_during_training(x):
    sae = make("adaptivek", options={"probe_fit_at": 0.5, "k_min": 1, "k_max": 16})
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for index in range(20):
        step = TrainStep(index=index, total=20)
        out = sae(x, step=step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sae.family.after_step(sae, out.enc, step)
    assert bool(sae.family.probe_fitted)
    assert sae.family.probe_w.abs().sum() > 0
    k = sae.family.k_per_token(x, exact_mean=True)
    assert k.float().mean().item() == K and k.float().std() > 0


def test_bad_k_range():
    with pytest.raises(ValueError, match="k_min <= k <= k_max"):
        SAEConfig(d_in=32, n_latents=128, family="adaptivek", k=8, options={"k_min": 10, "k_max": 20})
