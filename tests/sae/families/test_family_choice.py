import pytest
import torch

from sae.config import SAEConfig
from sae.families import TrainStep

from .conftest import K, N, make


def test_feature_choice_gives_no_latent_more_than_m_tokens(x):
    sae = make("featurechoice", options={"m": 3})
    code = sae(x).code
    dense = code.to_dense(N).detach()
    per_latent = (dense != 0).sum(0)
    assert per_latent.max() <= 3
    # each latent's kept tokens are its top 3 positive affinities in the batch
    pre = sae.pre_activations(x).detach()
    top = pre.topk(3, dim=0)
    ref = torch.zeros_like(pre).scatter_(0, top.indices, top.values.relu())
    torch.testing.assert_close(dense, ref)


def test_feature_choice_default_m_spends_about_k_times_b(x):
    sae = make("featurechoice")
    m = sae.family.tokens_per_latent(x.shape[0])
    assert m == -(-K * x.shape[0] // N)
    assert int((sae(x).code.values != 0).sum()) <= m * N


def test_m_larger_than_batch_is_refused():
    with pytest.raises(ValueError, match="m=600 .* batch_size=512"):
        SAEConfig(d_in=32, n_latents=128, family="featurechoice", options={"m": 600, "batch_size": 512})
    sae = make("featurechoice", options={"m": 300})
    with pytest.raises(ValueError, match="m=300 .* batch of 256"):
        sae(torch.randn(256, 32))


def test_mutual_choice_is_batch_topk_selection(x):
    mc, bt = make("mutualchoice"), make("batchtopk")
    torch.testing.assert_close(mc(x).code.to_dense(N), bt(x).code.to_dense(N))


def test_zipf_underused_mask_and_aux(x):
    sae = make("mutualchoice", options={"zipf_fraction": 0.5})
    fam = sae.family
    rate = torch.full((N,), 1e-6)
    rate[:10] = torch.tensor([1.0, 0.9, 0.8, 0.5, 0.4, 0.3, 0.25, 0.1, 0.05, 0.01])
    fam.firing_rate.copy_(rate)
    target = (1 / torch.arange(1, N + 1)) * (K / (1 / torch.arange(1, N + 1)).sum())
    assert torch.equal(fam.underused(), rate < 0.5 * target)
    out = sae(x)  # no dead latents, yet aux_zipf trains the under-used ones
    assert out.enc.aux is not None and out.aux_loss > 0
    real = min(int(fam.underused().sum()), out.enc.aux.indices.shape[1])  # AuxK's padding follows, at index 0
    assert fam.underused()[out.enc.aux.indices[:, :real]].all()
    fam.update_rate(out.enc.code)
    counts = (out.code.to_dense(N) != 0).sum(0).float() / x.shape[0]
    torch.testing.assert_close(fam.firing_rate, 0.99 * rate + 0.01 * counts)


def test_feature_choice_threshold_is_per_latent(x):
    sae = make("featurechoice", options={"threshold_start_step": 0, "m": 4})
    out = sae(x)
    sae.family.after_step(sae, out.enc, TrainStep(index=0))
    dense = out.code.to_dense(N).detach()
    masked = torch.where(dense > 0, dense, torch.full_like(dense, float("inf"))).min(0).values
    seen = torch.isfinite(masked)
    torch.testing.assert_close(sae.family.threshold[seen], masked[seen])
    assert (sae.family.threshold[~seen] == -1).all()
