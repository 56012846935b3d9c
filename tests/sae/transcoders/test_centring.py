"""A transcoder's centred input: the encoder and the skip term read the normalised input minus its mean over the
init sample, so an input with large per-dimension offsets (an MLP's post-LayerNorm input) trains as a centred
one does; the offset folds into b_enc (and b_dec) on save, and a transcoder's default learning rate is 4x."""

import pytest
import torch

from sae.config import TrainConfig
from sae.data import PairBatches
from sae.init import init_from_sample
from sae.model import SparseAutoencoder
from sae.train import Trainer, train

from .synthetic import D_IN, D_OUT, N, clt, pair_data, sparse_inputs, transcoder

STEPS = 20
SHIFT = 10.0  # per-dimension input offsets this many times a unit normal: larger than the signal


def shifted_pairs(rows: int = 2560, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, shift): sparse inputs, targets a ReLU of a linear map of them, and a large per-dimension shift."""
    g = torch.Generator().manual_seed(seed)
    x = sparse_inputs(rows, D_IN, 48, 3, g).double()
    A = torch.randn(D_OUT, D_IN, generator=g, dtype=torch.float64) / D_IN**0.5
    y = torch.relu(x @ A.T) + 0.05 * torch.randn(rows, D_OUT, generator=g, dtype=torch.float64)
    return x, y, SHIFT * torch.randn(D_IN, generator=g, dtype=torch.float64)


def trained(x: torch.Tensor, y: torch.Tensor, skip: bool) -> SparseAutoencoder:
    """Trained with defaults, but no dataset scale (which, of the raw input, would follow the shift)."""
    tc = transcoder(skip=skip, dtype="float64", normalize="none")
    cfg = TrainConfig(tokens=256 * STEPS, batch_size=256, init_tokens=1024, log_every=1000, checkpoint_every=1000)
    train(tc, PairBatches(x, y, 256, seed=0), cfg)
    return tc.eval()


def heldout(tc: SparseAutoencoder, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(FVU of y, fraction of latents that never fire) on held-out pairs."""
    with torch.no_grad():
        code = tc.encode(x)
        fired = torch.zeros(N, dtype=torch.bool)
        fired[code.indices[code.values != 0]] = True
        fvu = ((tc.predict(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()
    return fvu, 1 - fired.double().mean().item()


def test_an_input_offset_changes_nothing_the_transcoder_learns():
    """Trained on x + shift, a skip transcoder (its encoder and its skip term both read the input) predicts from
    x + shift what the one trained on x predicts from x, with as many silent latents: uncentred, the shift drags
    every encoder column towards it (on these pairs, before centring: an FVU above 1, most latents dead)."""
    x, y, shift = shifted_pairs()
    train_x, train_y, held_x, held_y = x[:2048], y[:2048], x[2048:], y[2048:]
    reference = trained(train_x, train_y, skip=True)
    moved = trained(train_x + shift, train_y, skip=True)
    torch.testing.assert_close(moved.predict(held_x + shift), reference.predict(held_x), rtol=1e-5, atol=1e-5)
    fvu, silent = heldout(moved, held_x + shift, held_y)
    assert (fvu, silent) == pytest.approx(heldout(reference, held_x, held_y), abs=1e-5)
    assert fvu < 0.6 and silent < 0.25  # and it learnt something


def test_the_offset_is_the_normalised_inputs_mean():
    x, y = pair_data(2048)
    x = x + 5.0
    tc = transcoder(skip=True)
    init_from_sample(tc, x, y)
    s = float(tc.input_scale)
    assert (x * s).pow(2).sum(1).mean().item() == pytest.approx(D_IN, rel=1e-4)  # the scale: of the raw input
    torch.testing.assert_close(tc.input_offset, x.mean(0) * s, rtol=1e-5, atol=1e-5)
    x_n, _ = tc._prepare(x)
    torch.testing.assert_close(x_n.mean(0), torch.zeros(D_IN), rtol=0, atol=1e-4)


def test_only_single_transcoders_whose_encoder_b_enc_absorbs_the_offset_are_centred():
    from sae.config import SAEConfig

    assert transcoder().centres_input and transcoder(skip=True, family="batchtopk").centres_input
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_latents=N, k=4))
    assert not sae.centres_input and "input_offset" not in sae.state_dict()  # an SAE is as it was
    for other in (clt(), transcoder(family="jumprelu", k=None), transcoder(family="vsae"), transcoder(family="abstopk")):
        assert not other.centres_input, other.cfg.family


def test_a_centred_transcoder_saves_the_usual_tensors_and_loads_back_equal(tmp_path):
    x, y = pair_data(2048, d_out=D_IN)  # sparsify's layout holds one width
    x = x + 5.0
    tc = transcoder(skip=True, d_out=D_IN)
    init_from_sample(tc, x, y)
    with torch.no_grad():
        tc.b_enc.add_(0.3)
    before = tc.eval().predict(x[:64])
    for layout in ("saelens", "sparsify"):
        folder = tc.save(tmp_path / layout, format=layout)
        assert not any("offset" in name for name in SparseAutoencoder.expected_tensors(tc.cfg))
        from sae.pretrained import load_pretrained

        loaded = load_pretrained(folder).eval()
        assert not loaded.input_offset.any()  # folded into b_enc and b_dec
        torch.testing.assert_close(loaded.predict(x[:64]), before, rtol=1e-5, atol=1e-5)
    assert tc.input_offset.any()  # saving folds a copy


def test_an_older_state_without_an_offset_loads_as_uncentred():
    tc = transcoder(skip=True)
    state = {k: v for k, v in tc.state_dict().items() if k != "input_offset"}
    again = transcoder(skip=True, seed=3)
    again.load_state_dict(state)
    assert not again.input_offset.any() and torch.equal(again.W_enc, tc.W_enc)


def test_a_transcoders_default_learning_rate_is_four_times_an_saes():
    cfg = TrainConfig(tokens=4096 * 98)
    assert cfg.learning_rate(3072, transcoder=True) == pytest.approx(4 * cfg.learning_rate(3072)) == pytest.approx(1.6e-2)
    assert TrainConfig(tokens=4096 * 98, lr=1e-3).learning_rate(3072, transcoder=True) == 1e-3  # a given lr stays
    from sae.config import SAEConfig

    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_latents=N, k=4))
    assert Trainer(transcoder(), cfg).base_lr == pytest.approx(4 * Trainer(sae, cfg).base_lr)
    assert Trainer(clt(), cfg).base_lr == Trainer(sae, cfg).base_lr  # a CLT is not centred: the SAE's rate
