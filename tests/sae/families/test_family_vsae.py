import pytest
import torch

from sae.families import TrainStep

from .conftest import K, N, make


def test_eval_is_topk_of_the_mean(x):
    vs, tk = make("vsae").eval(), make("topk").eval()
    torch.testing.assert_close(vs.encode_dense(x), tk.encode_dense(x))


def test_training_samples_around_the_mean(x):
    sae = make("vsae")
    torch.manual_seed(0)
    a = sae(x).code.to_dense(N)
    b = sae(x).code.to_dense(N)
    assert not torch.equal(a, b)
    assert ((a != 0).sum(1) <= K).all()
    fixed = make("vsae", options={"learned_var": False})  # the reference's fixed-variance path: z = mu
    torch.testing.assert_close(fixed(x).code.to_dense(N), make("topk")(x).code.to_dense(N))


@pytest.mark.parametrize("learned", [False, True])
def test_kl_term_and_warmup(x, learned):
    sae = make("vsae", options={"kl_coef": 0.5, "kl_warmup": 0.2, "learned_var": learned})
    mu = sae.pre_activations(x).detach()
    var = (x - x.mean(0)).pow(2).sum(1).mean()
    if learned:
        lv = torch.full_like(mu, -2.0)
        kl = 0.5 * (mu.pow(2) + lv.exp() - 1 - lv).sum(1).mean()
    else:
        kl = 0.5 * mu.pow(2).sum(1).mean()
    half_way = TrainStep(index=1, total=10)  # progress 0.1: half-way through the warm-up
    torch.testing.assert_close(sae(x, step=half_way).extras["kl_loss"], 0.25 * kl / var)
    out = sae(x, step=TrainStep(index=5, total=10))
    torch.testing.assert_close(out.extras["kl_loss"], 0.5 * kl / var)
    out.loss.backward()
    if learned:
        assert sae.family.W_enc_var.grad.abs().sum() > 0
