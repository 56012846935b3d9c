"""splice / ablate / steer: what they do at the hook, and that leaving the block restores the model exactly."""

import pytest
import torch

from activations import load_model
from sae.analysis.interventions import ablate, splice, steer
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def ids():
    return torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def sae():
    return SparseAutoencoder(SAEConfig(d_in=64, n_latents=256, k=8, hook_name=HOOK), seed=0).eval()


@pytest.fixture(scope="module")
def bridge(tiny_gpt2_path):
    return load_model(tiny_gpt2_path)


@pytest.mark.parametrize("backend", ["transformer_lens", "hf"])
def test_each_intervention_edits_the_hook_and_restores_the_model(tiny_gpt2_path, bridge, ids, sae, backend):
    model = bridge if backend == "transformer_lens" else load_model(tiny_gpt2_path, backend=backend)
    clean, x = model.forward(ids), model.run(ids, [HOOK])[HOOK]
    flat = x.reshape(-1, 64)
    z = sae.encode_dense(flat)
    latents = z.abs().sum(0).topk(3).indices.tolist()

    with splice(model, sae):
        torch.testing.assert_close(model.run(ids, [HOOK])[HOOK], sae(flat).x_hat.reshape(x.shape))
        assert not torch.allclose(model.forward(ids), clean, atol=1e-3)
    with splice(model, sae, error_term=True):
        torch.testing.assert_close(model.forward(ids), clean, atol=1e-5, rtol=1e-5)
    with ablate(model, sae, latents):
        expected = flat - z[:, latents] @ sae.W_dec[latents]
        torch.testing.assert_close(model.run(ids, [HOOK])[HOOK], expected.reshape(x.shape), atol=1e-5, rtol=1e-5)
    means = torch.rand(256)
    with ablate(model, sae, latents, "mean", means=means):
        expected = flat + (means[latents] - z[:, latents]) @ sae.W_dec[latents]
        torch.testing.assert_close(model.run(ids, [HOOK])[HOOK], expected.reshape(x.shape), atol=1e-5, rtol=1e-5)
    with steer(model, sae, latents[0], alpha=2.0):
        expected = x + 2.0 * x.norm(dim=-1, keepdim=True) * sae.W_dec[latents[0]]
        torch.testing.assert_close(model.run(ids, [HOOK])[HOOK], expected)
    with splice(model, sae), steer(model, sae, latents[0], alpha=1.0):  # several at once, in order
        x_hat = sae(flat).x_hat.reshape(x.shape)
        torch.testing.assert_close(model.run(ids, [HOOK])[HOOK], x_hat + x_hat.norm(dim=-1, keepdim=True) * sae.W_dec[latents[0]])
    assert torch.equal(model.forward(ids), clean)
    assert torch.equal(model.run(ids, [HOOK])[HOOK], x)


def test_a_mask_limits_the_edit_to_its_positions(bridge, ids, sae):
    model = bridge
    x = model.run(ids, [HOOK])[HOOK]
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[:, 3:] = True
    with splice(model, sae, mask=mask):
        edited = model.run(ids, [HOOK])[HOOK]
    assert torch.equal(edited[:, :3], x[:, :3]) and not torch.allclose(edited[:, 3:], x[:, 3:])


def test_the_model_is_restored_after_an_error_inside_the_block(bridge, ids, sae):
    model = bridge
    clean = model.forward(ids)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, sae, 0, alpha=5.0):
            raise RuntimeError("boom")
    assert torch.equal(model.forward(ids), clean)


def test_bad_interventions_are_refused(bridge, sae):
    model = bridge
    with pytest.raises(ValueError, match=r"latents \[256\] out of range for a dictionary of 256 latents"):
        ablate(model, sae, [1, 256])
    with pytest.raises(ValueError, match="mode='mean' needs means"):
        ablate(model, sae, [1], "mean")
    with pytest.raises(ValueError, match="ablation mode must be 'zero' or 'mean', got 'half'"):
        ablate(model, sae, [1], "half")
    wide = SparseAutoencoder(SAEConfig(d_in=32, n_latents=64, k=4, hook_name=HOOK))
    with pytest.raises(ValueError, match=r"d_in=32 but hook 'blocks.1.hook_resid_pre' has width 64"):
        with splice(model, wide):
            pass
