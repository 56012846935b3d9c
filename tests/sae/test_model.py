import pytest
import torch

from sae.config import SAEConfig
from sae.init import geometric_median, init_from_sample
from sae.model import SparseAutoencoder


def test_parameter_names_and_shapes_follow_saelens(tiny_sae):
    shapes = {n: tuple(p.shape) for n, p in tiny_sae.named_parameters()}
    assert shapes == {"W_enc": (32, 128), "b_enc": (128,), "W_dec": (128, 32), "b_dec": (32,)}


def test_init_is_tied_and_unit_norm(tiny_sae):
    torch.testing.assert_close(tiny_sae.W_enc, tiny_sae.W_dec.T)
    torch.testing.assert_close(tiny_sae.W_dec.norm(dim=1), torch.ones(128))


def test_topk_code_matches_reference(tiny_sae, acts):
    x = acts[:64]
    with torch.no_grad():
        tiny_sae.b_enc.normal_()
        tiny_sae.b_dec.normal_()
    pre = (x - tiny_sae.b_dec) @ tiny_sae.W_enc + tiny_sae.b_enc
    torch.testing.assert_close(tiny_sae.pre_activations(x), pre)
    ref = torch.zeros_like(pre)
    top = pre.topk(4, dim=1)
    ref.scatter_(1, top.indices, top.values.relu())
    dense = tiny_sae.encode_dense(x)
    torch.testing.assert_close(dense, ref)
    assert ((dense != 0).sum(1) <= 4).all()
    torch.testing.assert_close(tiny_sae.decode(tiny_sae.encode(x)), ref @ tiny_sae.W_dec + tiny_sae.b_dec)


def test_forward_loss_is_fvu_plus_weighted_aux(tiny_sae, acts):
    x = acts[:256]
    dead = torch.zeros(128, dtype=torch.bool)
    dead[::2] = True
    out = tiny_sae(x, dead=dead)
    err = (x - out.x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.fvu, err, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.fvu + out.aux_loss / 32)
    assert out.aux_loss > 0


def test_auxk_trains_dead_latents_encoder_rows(tiny_sae, acts):
    x = acts[:256]
    dead = torch.zeros(128, dtype=torch.bool)
    dead[64:] = True
    live_code = tiny_sae.encode(x)
    assert not dead[live_code.indices].all()
    out = tiny_sae(x, dead=dead)
    (out.aux_loss).backward()
    grad_rows = tiny_sae.W_enc.grad.abs().sum(0)
    assert (grad_rows[64:] > 0).sum() > 0, "AuxK must send gradient into dead latents' encoder columns"
    assert (grad_rows[:64] == 0).all(), "AuxK only uses dead latents"


def test_remove_parallel_grad_leaves_orthogonal_component(tiny_sae, acts):
    tiny_sae(acts[:128]).loss.backward()
    tiny_sae.remove_parallel_grad()
    dots = (tiny_sae.W_dec.grad * tiny_sae.W_dec).sum(1)
    assert dots.abs().max() < 1e-6


def test_geometric_median_resists_outliers():
    x = torch.randn(1000, 4, dtype=torch.float64) * 0.1
    x[:50] += 100.0
    m = geometric_median(x)
    assert m.norm() < 0.2 < x.mean(0).norm()


def test_input_scale_makes_mean_squared_norm_d(tiny_sae, acts):
    init_from_sample(tiny_sae, acts)
    scaled = acts * tiny_sae.input_scale
    assert abs(scaled.pow(2).sum(1).mean().item() - 32) < 1e-3


def test_fold_input_scale_preserves_the_function(tiny_sae, acts):
    init_from_sample(tiny_sae, acts)
    with torch.no_grad():
        tiny_sae.b_enc.normal_()
    x = acts[:128]
    before = tiny_sae(x).x_hat, tiny_sae.encode_dense(x)
    tiny_sae.fold_input_scale()
    assert float(tiny_sae.input_scale) == 1.0
    torch.testing.assert_close(tiny_sae(x).x_hat, before[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tiny_sae.encode_dense(x), before[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["layer_norm", "unit_norm", "none"])
def test_other_normalisations_reconstruct_raw_space(mode, acts):
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=128, k=128, normalize=mode), seed=0)
    x = acts[:64]
    out = sae(x)
    assert out.x_hat.shape == x.shape and torch.isfinite(out.x_hat).all()
    # with k = n and tied weights the reconstruction is not trivially zero: compare scale to the input
    assert out.x_hat.norm() > 0.1 * x.norm()


def test_wrong_width_is_a_clear_error(tiny_sae):
    with pytest.raises(ValueError, match=r"shape \(4, 31\).*d_in=32"):
        tiny_sae(torch.randn(4, 31))
    with pytest.raises(ValueError, match="empty batch"):
        tiny_sae.encode(torch.randn(0, 32))


@pytest.mark.parametrize("k", [0, -3, 129, 2.0])
def test_encode_refuses_a_k_out_of_range(tiny_sae, acts, k):
    with pytest.raises(ValueError, match=rf"encode: k={k!r}; expected an int with 1 <= k <= n_latents=128"):
        tiny_sae.encode(acts[:8], k=k)
