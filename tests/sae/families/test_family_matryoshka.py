import pytest
import torch

from sae.config import SAEConfig

from .conftest import N, make


def test_prefix_loss_uses_only_prefix_latents(x):
    sae = make("matryoshka", options={"prefixes": [16, 48, N]})
    assert sae.family.prefixes == [16, 48, N]
    out = sae(x)
    losses = sae.family.prefix_losses(sae, x, out.enc.code)  # input_scale is 1: x_n = x
    assert len(losses) == 3
    used = torch.unique(out.enc.code.indices[out.enc.code.values != 0])
    assert (used >= 16).any() and (used < 16).any()
    losses[0].backward(retain_graph=True)
    assert (sae.W_dec.grad[16:] == 0).all(), "prefix 1 must not read latents past M_1"
    assert (sae.W_dec.grad[:16] != 0).any()
    # changing the decoder rows outside the prefix leaves its loss unchanged
    before = losses[0].item()
    with torch.no_grad():
        sae.W_dec[16:] = torch.randn(N - 16, 32)
    after = sae.family.prefix_losses(sae, x, out.enc.code)[0].item()
    assert after == pytest.approx(before, rel=1e-6)
    torch.testing.assert_close(out.fvu, sum(loss for loss in losses) / 3)


def test_default_prefixes_follow_bussmann_groups():
    sae = make("matryoshka")
    assert sae.family.prefixes == [8, 16, 32, 64, 128]


@pytest.mark.parametrize(
    "prefixes, match",
    [([32, 16, 128], "strictly increasing"), ([16, 32, 100], "do not divide the dictionary"), ([0, 128], "positive")],
)
def test_bad_prefixes_are_refused(prefixes, match):
    with pytest.raises(ValueError, match=match):
        SAEConfig(d_in=32, n_latents=128, family="matryoshka", options={"prefixes": prefixes})


def test_weights_must_match_prefixes():
    with pytest.raises(ValueError, match="expected 2 positive numbers"):
        SAEConfig(d_in=32, n_latents=128, family="matryoshka", options={"prefixes": [64, 128], "weights": [1.0]})
