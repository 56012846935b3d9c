import pytest
import torch

from sae.config import SAEConfig
from sae.families import TrainStep

from .conftest import K, make


def test_keeps_k_largest_magnitudes_with_signs(x):
    sae = make("abstopk")
    pre = (x - sae.b_dec) @ sae.W_enc  # no b_enc in AbsTopK
    torch.testing.assert_close(sae.pre_activations(x), pre)
    ref = torch.zeros_like(pre)
    idx = pre.abs().topk(K, dim=1).indices
    ref.scatter_(1, idx, pre.gather(1, idx))
    dense = sae.encode_dense(x)
    torch.testing.assert_close(dense, ref)
    assert (dense < 0).any(), "negative codes must survive (no ReLU)"
    assert ((dense != 0).sum(1) == K).all()


def test_batch_variant_takes_top_k_b_magnitudes_in_training_only(x):
    sae = make("abstopk", options={"batch": True})
    pre = sae.pre_activations(x).detach()
    dense = sae(x).code.to_dense(128).detach()
    kth = pre.abs().flatten().topk(K * x.shape[0]).values[-1]
    torch.testing.assert_close(dense, torch.where(pre.abs() >= kth, pre, torch.zeros_like(pre)))
    sae.eval()
    assert ((sae.encode_dense(x) != 0).sum(1) == K).all()


def test_auxk_selects_dead_latents_by_magnitude(x):
    sae = make("abstopk")
    dead = torch.zeros(128, dtype=torch.bool)
    dead[64:] = True
    out = sae(x, dead=dead, step=TrainStep(k_aux=8))
    aux = out.enc.aux
    pre = sae.pre_activations(x).detach()
    ref = pre[:, 64:].abs().topk(8, dim=1).indices + 64
    assert torch.equal(aux.indices.sort(1).values, ref.sort(1).values)
    assert (aux.values < 0).any()
    out.aux_loss.backward()
    assert (sae.W_enc.grad[:, 64:].abs().sum(0) > 0).any()


def test_bad_batch_option():
    with pytest.raises(ValueError, match="batch='yes'"):
        SAEConfig(d_in=32, n_latents=128, family="abstopk", options={"batch": "yes"})
