"""Gated training: the paper's sparsity and auxiliary terms against hand-written math."""

import torch

from sae.families.base import TrainStep

from .conftest import make


def test_gate_losses_against_their_definition(x):
    sae = make("gated", normalize="none")
    out = sae(x, step=TrainStep(sparsity_coef=0.5))
    with torch.no_grad():
        pi_gate = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        rms = (x - x.mean(0)).pow(2).sum(1).mean().sqrt()
        l1 = 0.5 * (pi_gate.relu() * sae.W_dec.norm(dim=1)).sum(1).mean() / rms
        via_gate = pi_gate.relu() @ sae.W_dec + sae.b_dec
        aux = (x - via_gate).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.extras["l1"], l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.extras["gate_aux"], aux, rtol=1e-5, atol=1e-6)


def test_auxiliary_loss_leaves_the_decoder_alone(x):
    """The auxiliary reconstruction goes through a frozen decoder: its gradient reaches the gate only."""
    sae = make("gated", normalize="none")
    aux = sae(x).extras["gate_aux"]
    g_dec, g_enc, g_mag = torch.autograd.grad(aux, [sae.W_dec, sae.W_enc, sae.family.b_mag], allow_unused=True)
    assert g_dec is None and g_mag is None
    assert g_enc is not None and g_enc.abs().sum() > 0


def test_reconstruction_reaches_the_magnitude_path_only(x):
    sae = make("gated", normalize="none")
    out = sae(x)
    (g_gate,) = torch.autograd.grad(out.fvu, [sae.b_enc], allow_unused=True)
    assert g_gate is None  # b_enc is b_gate: the step function passes no gradient
