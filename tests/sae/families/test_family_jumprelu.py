import json

import torch

from sae.model import SparseAutoencoder

from .conftest import N, make


def test_threshold_rule_with_and_without_b_dec(x, tmp_path):
    for apply in (True, False):
        sae = make("jumprelu", options={"apply_b_dec_to_input": apply}).eval()
        with torch.no_grad():
            sae.family.threshold.uniform_(0, 0.5)
        pre = (x - sae.b_dec if apply else x) @ sae.W_enc + sae.b_enc
        ref = torch.where(pre > sae.family.threshold, pre, torch.zeros_like(pre))
        torch.testing.assert_close(sae.encode_dense(x), ref)
        sae.save(tmp_path / str(apply))
        cfg = json.loads((tmp_path / str(apply) / "cfg.json").read_text())
        assert cfg["architecture"] == "jumprelu" and cfg["apply_b_dec_to_input"] is apply
        loaded = SparseAutoencoder.load(tmp_path / str(apply))
        torch.testing.assert_close(loaded.encode_dense(x), ref)


def test_straight_through_gradients_match_the_paper(x):
    """dz/dtheta = -(theta / eps) K((a - theta) / eps) and dL0/dtheta = -(1 / eps) K(...), K the rectangle."""
    from sae.families.base import TrainStep

    eps = 0.5
    sae = make("jumprelu", options={"bandwidth": eps, "init_threshold": 0.2}, normalize="none")
    a = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    out = sae(x, step=TrainStep(sparsity_coef=1.0))
    kernel = ((a - 0.2).abs() < eps / 2).float()
    l0_grad = torch.autograd.grad(out.extras["l0_loss"], sae.family.threshold, retain_graph=True)[0]
    torch.testing.assert_close(l0_grad, -(kernel / eps).sum(0) / x.shape[0])
    torch.testing.assert_close(out.extras["l0_loss"], (a > 0.2).float().sum(1).mean())
    z = sae.encode_dense(x)
    torch.testing.assert_close(z, torch.where(a > 0.2, a, torch.zeros_like(a)))
    (g,) = torch.autograd.grad(out.fvu, sae.family.threshold, retain_graph=True)
    # the reconstruction's threshold gradient: -(theta / eps) K * dFVU/dz, dFVU/dz = 2 (x_hat - x) W_dec^T / var
    dz = 2 * (out.x_hat - x).detach() @ sae.W_dec.detach().T / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(g, (-(0.2 / eps) * kernel * dz).sum(0), rtol=1e-4, atol=1e-6)


def test_tanh_penalty_is_a_smooth_count(x):
    from sae.families.base import TrainStep

    sae = make("jumprelu", options={"sparsity_loss": "tanh", "init_threshold": 0.1}, normalize="none")
    out = sae(x, step=TrainStep(sparsity_coef=2.0))
    z = sae.encode_dense(x).detach()
    torch.testing.assert_close(out.extras["l0_loss"].detach(), 2.0 * torch.tanh(4.0 * z).sum(1).mean(), rtol=1e-5, atol=1e-6)


def test_threshold_is_saved_and_trained(x, tmp_path):
    sae = make("jumprelu", options={"init_threshold": 0.3})
    assert isinstance(sae.family.threshold, torch.nn.Parameter)
    assert any(p is sae.family.threshold for p in sae.parameters())
    sae.save(tmp_path)
    loaded = SparseAutoencoder.load(tmp_path)
    torch.testing.assert_close(loaded.family.threshold.detach(), torch.full((sae.cfg.latents,), 0.3))


def test_thresholds_set_from_a_sample_reach_an_l0_near_n(x):
    """Asked to start at 90% of the latents firing, the sample's L0 is about that: theta stays at least a bandwidth
    above 0 and b_enc rises where the firing quantile is below it (theta clamped at 0 capped L0 at the latents whose
    pre-activation is positive, about half)."""
    for l0 in (0.9 * N, 0.1 * N):
        sae = make("jumprelu", normalize="none")
        b_enc = sae.b_enc.detach().clone()
        sae.family.init_from_sample(sae, x, l0)
        with torch.no_grad():
            got = sae.eval().encode(x).l0().float().mean().item()
        assert abs(got - l0) <= 0.03 * N, (l0, got)
        assert (sae.family.threshold >= sae.family.bandwidth).all()
        raised = sae.b_enc.detach() - b_enc
        assert (raised >= 0).all() and (raised > 0).any() == (l0 > N / 2)
