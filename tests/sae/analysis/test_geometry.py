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


def test_geometry_reports_every_measure(tiny_sae, acts):
    m = geometry(tiny_sae, acts[:512], torch.rand(128))
    assert {"effective_features", "superposition_ratio", "afa_eps_lbo", "decoder_max_abs_cos",
            "decoder_top_pairs", "decoder_cos_hist"} <= set(m)
    assert 0 <= m["decoder_mean_abs_cos"] <= m["decoder_max_abs_cos"] <= 1
