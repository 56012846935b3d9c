import json

import pytest
import torch

from sae.families import TrainStep
from sae.model import SparseAutoencoder

from .conftest import K, N, make


def test_training_batch_holds_exactly_k_times_b(x):
    sae = make("batchtopk")
    code = sae(x).code
    active = code.values != 0
    assert int(active.sum()) == K * x.shape[0]
    per_row = active.sum(1)
    assert per_row.min() != per_row.max(), "budget should be shared unevenly across tokens"
    # the kept entries are the k*B largest ReLU'd pre-activations of the batch
    pre = sae.pre_activations(x).detach()
    kth = pre.flatten().topk(K * x.shape[0]).values[-1]
    assert (code.values[active] >= kth - 1e-6).all()


def test_threshold_is_ema_of_min_selected_value_and_used_in_eval(x):
    sae = make("batchtopk", options={"threshold_start_step": 2, "threshold_beta": 0.9})
    out = sae(x)
    sae.family.after_step(sae, out.enc, step=TrainStep(index=1))  # before the start step: nothing
    assert (sae.family.threshold == -1).all()
    m1 = out.code.values[out.code.values > 0].min().item()
    sae.family.after_step(sae, out.enc, step=TrainStep(index=2))
    torch.testing.assert_close(sae.family.threshold, torch.full((N,), m1))
    out2 = sae(x * 1.5)
    m2 = out2.code.values[out2.code.values > 0].min().item()
    sae.family.after_step(sae, out2.enc, step=TrainStep(index=3))
    torch.testing.assert_close(sae.family.threshold, torch.full((N,), 0.9 * m1 + 0.1 * m2))

    sae.eval()
    theta = sae.family.threshold[0].item()
    pre = sae.pre_activations(x).detach()
    dense = sae.encode_dense(x)
    torch.testing.assert_close(dense, torch.where(pre > theta, pre, torch.zeros_like(pre)))
    # one token's code does not depend on its batch
    torch.testing.assert_close(sae.encode_dense(x[:1]), dense[:1])


def test_eval_before_threshold_warns_and_uses_batch_rule(x):
    sae = make("batchtopk").eval()
    with pytest.warns(UserWarning, match="threshold has not been estimated"):
        code = sae.encode(x)
    assert int((code.values != 0).sum()) == K * x.shape[0]


def test_threshold_saved_as_saelens_jumprelu_and_folded(x, tmp_path):
    sae = make("batchtopk", options={"threshold_start_step": 0})
    sae.family.after_step(sae, sae(x).enc, step=TrainStep(index=0))
    sae.input_scale.fill_(2.0)
    sae.eval()
    ref = sae(x * 1.0).x_hat
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    loaded = SparseAutoencoder.load(tmp_path).eval()
    torch.testing.assert_close(loaded.family.threshold, sae.family.threshold / 2)
    torch.testing.assert_close(loaded(x).x_hat, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["batchtopk", "matryoshka", "mutualchoice", "featurechoice"])
def test_the_threshold_schedule_scales_with_the_run_so_a_short_run_ends_with_one(x, family):
    """By default the EMA starts at a quarter of the run and averages over about a tenth of it (dictionary_learning's
    step 1000 and beta 0.999 from 10,000 steps on), so a 40-step run saves a threshold, not the batch rule."""
    from sae import TrainConfig, train
    from sae.data import TensorBatches

    sae = make(family)
    assert sae.family.schedule(400) == (100, 1 - 1 / 40)
    assert sae.family.schedule(100_000) == (1000, 0.999)
    assert sae.family.schedule(12) == (3, 0.9)
    assert make(family, options={"threshold_start_step": 7, "threshold_beta": 0.5}).family.schedule(400) == (7, 0.5)
    data = x.repeat(8, 1)
    train(sae, TensorBatches(data, x.shape[0], seed=0), TrainConfig(tokens=40 * x.shape[0], batch_size=x.shape[0]))
    assert sae.family.has_threshold
