"""Standard (ReLU + decoder-norm-weighted L1) and gated: the forward and the penalty against hand-written math."""

import dataclasses

import pytest
import torch

from sae.config import SAEConfig
from sae.data import TensorBatches
from sae.train import train

from .conftest import D, N, make
from .test_family_training import sparse_acts, tcfg


def test_standard_code_is_relu_of_every_pre_activation(x):
    sae = make("standard", k=None)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), pre.relu())


def test_standard_l1_term_is_decoder_norm_weighted(x):
    sae = make("standard", k=None, normalize="none", options={"l1_coef": 0.5})
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, N)[:, None])  # non-unit rows, as loaded dictionaries have
        z = sae.encode_dense(x)
        rms = (x - x.mean(0)).pow(2).sum(1).mean().sqrt()
        expected = 0.5 * (z * sae.W_dec.norm(dim=1)).sum(1).mean() / rms
        torch.testing.assert_close(sae(x).extras["l1"], expected, rtol=1e-5, atol=1e-6)


def test_stronger_l1_gives_sparser_codes():
    acts = sparse_acts()
    l0 = {}
    for coef in (0.0, 2.0):
        sae = make("standard", k=None, seed=1, options={"l1_coef": coef})
        fast = dataclasses.replace(tcfg(20), lr=3e-2)  # Adam moves b_enc by ~lr a step: give the penalty room
        train(sae, TensorBatches(acts, 256, seed=0), fast, out_dir=None)
        with torch.no_grad():
            l0[coef] = sae.eval().encode(acts[:1024]).l0().float().mean().item()
    assert l0[2.0] < 0.7 * l0[0.0], l0


@pytest.mark.parametrize("bad", [-1.0, "0.1", True])
def test_standard_rejects_bad_l1_coef(bad):
    with pytest.raises(ValueError, match="l1_coef"):
        SAEConfig(d_in=D, n_latents=N, family="standard", k=None, options={"l1_coef": bad})


def test_gated_code_against_its_definition(x):
    sae = make("gated", k=None)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.family.r_mag.copy_(torch.randn(N, generator=g) * 0.3)
        sae.family.b_mag.copy_(torch.randn(N, generator=g) * 0.1)
        h = (x - sae.b_dec) @ sae.W_enc
        ref = (h + sae.b_enc > 0).float() * torch.relu(h * sae.family.r_mag.exp() + sae.family.b_mag)
        torch.testing.assert_close(sae.encode_dense(x), ref)
        torch.testing.assert_close(sae(x).x_hat, ref @ sae.W_dec + sae.b_dec)
