import math

import pytest
import torch

from sae.analysis.geometry import decoder_similarity, effective_features, geometry
from sae.config import SAEConfig
from sae.model import SparseAutoencoder


def test_effective_features_by_hand():
    assert effective_features(torch.ones(64), 16)["effective_features"] == pytest.approx(64, rel=1e-6)
    one_hot = effective_features(torch.tensor([5.0, 0, 0, 0]), 2)
    assert one_hot["effective_features"] == pytest.approx(1.0, abs=1e-6)
    p = torch.tensor([0.5, 0.25, 0.25])
    expected = math.exp(-(p * p.log()).sum().item())
    got = effective_features(p * 7, 3)
    assert got["effective_features"] == pytest.approx(expected, rel=1e-6)
    assert got["superposition_ratio"] == pytest.approx(expected / 3, rel=1e-6)
    with pytest.raises(ValueError, match="no latent fired"):
        effective_features(torch.zeros(8), 4)


def test_decoder_similarity_finds_the_planted_pair():
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=40, k=4), seed=0)
    with torch.no_grad():
        sae.W_dec[17] = -sae.W_dec[3]  # an antiparallel pair: |cos| = 1
    sim = decoder_similarity(sae, top=3, bins=20)
    a, b, c = sim["top_pairs"][0]
    assert (a, b) == (3, 17) and c == pytest.approx(-1.0, abs=1e-6)
    assert sum(sim["cos_hist_counts"]) == 40 * 39 // 2 and sim["cos_hist_counts"][0] >= 1
    assert len(sim["cos_hist_edges"]) == 21


def test_geometry_matches_a_float64_computation(tiny_sae, acts):
    """Every measure against its definition, computed here in float64 from the dense code and the decoder."""
    x = acts[:512]
    mass = torch.rand(128, generator=torch.Generator().manual_seed(3))
    m = geometry(tiny_sae, x, mass)

    p = mass.double() / mass.double().sum() + 1e-10
    p = p / p.sum()
    assert m["effective_features"] == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-9)
    assert m["superposition_ratio"] == pytest.approx(m["effective_features"] / 32, rel=1e-12)

    W = tiny_sae.W_dec.detach().double()
    dnorm = W.norm(dim=1)
    cos = (W / dnorm[:, None]) @ (W / dnorm[:, None]).T
    off = ~torch.eye(128, dtype=torch.bool)
    assert m["decoder_max_abs_cos"] == pytest.approx(cos.abs()[off].max().item(), rel=1e-5)
    assert m["decoder_mean_abs_cos"] == pytest.approx(cos.abs()[off].mean().item(), rel=1e-5)
    upper = torch.triu(torch.ones(128, 128, dtype=torch.bool), 1)
    i, j = divmod(int(torch.where(upper, cos.abs(), -1.0).argmax()), 128)
    assert m["decoder_top_pairs"][0][:2] == [i, j]
    assert m["decoder_top_pairs"][0][2] == pytest.approx(cos[i, j].item(), abs=1e-6)
    assert m["decoder_cos_hist"]["counts"] == torch.histc(cos[upper].float(), bins=50, min=-1, max=1).long().tolist()

    z = tiny_sae.encode_dense(x).double()  # b_dec is zero here, so |x - b_dec| = |x|
    f = z * dnorm
    x_norm, f_norm, l1 = x.double().norm(dim=1), f.norm(dim=1), f.abs().sum(1)
    eps = (x_norm.pow(2) - f_norm.pow(2)).abs() / (l1.pow(2) - f_norm.pow(2)).clamp_min(1e-12)
    assert m["afa_eps_lbo"] == pytest.approx(eps.mean().item(), rel=1e-4)
    assert m["afa_over_activated_fraction"] == pytest.approx((f_norm > x_norm).double().mean().item(), abs=1e-9)
