"""Training transcoders and CLTs through the one trainer: PairBatches, initialisation from pairs, the target's FVU
falling, dead latents, exact resume after a kill, the wrong kind of batch refused, the distributed modes."""

import json

import pytest
import torch

from sae.config import SAEConfig, TrainConfig
from sae.data import PairBatches, TensorBatches
from sae.init import init_from_sample
from sae.model import SparseAutoencoder
from sae.train import train

from .synthetic import D_IN, D_OUT, clt, clt_data, pair_data, transcoder


def _cfg(**kw):
    base = dict(
        tokens=256 * 30, batch_size=256, checkpoint_every=5, log_every=5, dead_window_tokens=1024, init_tokens=1024, seed=3
    )
    return TrainConfig(**{**base, **kw})


def test_pair_batches_shuffle_both_halves_alike_and_resume_exactly():
    x = torch.arange(40.0)[:, None].expand(40, 3).contiguous()
    y = -x[:, :2]
    data = PairBatches(x, y, batch_size=8, seed=1)
    assert (data.d_in, data.d_out, data.layers, data.per_epoch) == (3, 2, 1, 5)
    it = iter(data)
    first = [next(it) for _ in range(12)]  # past one epoch
    for bx, by in first:
        assert torch.equal(by, -bx[:, :2])
    for step in (0, 3, 7, 11):
        bx, by = next(data.iter_from(step))
        assert torch.equal(bx, first[step][0]) and torch.equal(by, first[step][1])
    stacked = PairBatches(torch.zeros(16, 3, 5), torch.zeros(16, 3, 4), batch_size=8)
    assert (stacked.d_in, stacked.d_out, stacked.layers) == (5, 4, 3)


@pytest.mark.parametrize(
    "x, y, match",
    [
        (torch.zeros(100, 4), torch.zeros(99, 3), r"the halves of the pairs disagree in length: x has 100 rows, y has 99"),
        (torch.zeros(100, 2, 4), torch.zeros(100, 3, 3), r"disagree in layers: x has 2, y has 3"),
        (torch.zeros(100, 4), torch.zeros(100, 2, 3), r"pairs must be x \[tokens, d_in\] and y \[tokens, d_out\]"),
        (torch.zeros(10, 4), torch.zeros(10, 3), r"only 10 pairs for a batch of 64"),
    ],
)
def test_pair_batches_refuse_bad_pairs(x, y, match):
    with pytest.raises(ValueError, match=match):
        PairBatches(x, y, batch_size=64)


def test_the_wrong_kind_of_batch_is_refused_at_the_first_batch(tmp_path):
    x, y = pair_data(1024)
    with pytest.raises(ValueError, match=r"a transcoder trains on \(x, y\) pairs.*got a tensor of shape \(256, 16\)"):
        train(transcoder(), TensorBatches(x, 256), _cfg(), out_dir=tmp_path / "a")
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_latents=64, k=4))
    with pytest.raises(
        ValueError, match=r"an SAE trains on \[batch, d_in\] tensors; got a tuple of 2 \(tensor \(256, 16\), tensor \(256, 12\)\)"
    ):
        train(sae, PairBatches(x, y, 256), _cfg(), out_dir=tmp_path / "b")
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "b" / "checkpoints").exists()


def test_initialisation_from_pairs_sets_both_scales_and_b_dec_from_the_target():
    x, y = pair_data(2048)
    sae = transcoder()
    init_from_sample(sae, x, y)
    s, t = float(sae.input_scale), float(sae.target_scale)
    assert (x * s).pow(2).sum(1).mean().item() == pytest.approx(D_IN, rel=1e-4)
    assert (y * t).pow(2).sum(1).mean().item() == pytest.approx(D_OUT, rel=1e-4)
    torch.testing.assert_close(sae.b_dec, (y * t).median(0).values, atol=0.15, rtol=0)  # a geometric median: near
    c = clt()
    xc, yc = clt_data(1024)
    init_from_sample(c, xc, yc)
    for i in range(3):
        assert (yc[:, i] * c.target_scale[i]).pow(2).sum(1).mean().item() == pytest.approx(D_OUT, rel=1e-4)
    with pytest.raises(ValueError, match="the sample's targets are missing"):
        init_from_sample(transcoder(), x)


def test_lstsq_skip_init_fits_the_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, D_IN, generator=g)
    A = torch.randn(D_OUT, D_IN, generator=g)
    y = x @ A.T + 3.0
    sae = transcoder(skip=True)
    init_from_sample(sae, x, y, skip_init="lstsq")
    s, t = float(sae.input_scale), float(sae.target_scale)
    torch.testing.assert_close(sae.W_skip, A * t / s, atol=1e-4, rtol=1e-4)  # in normalised space: y_n = x_n (A t / s)^T
    # what is left: y_n - (x_n - c) W_skip^T = 3 t + c W_skip^T (c the centred input's offset)
    torch.testing.assert_close(sae.b_dec, 3.0 * t + sae.input_offset @ sae.W_skip.T, atol=1e-3, rtol=0)
    zero = transcoder(skip=True)
    init_from_sample(zero, x, y)
    assert not zero.W_skip.any()


@pytest.mark.parametrize(
    "make, data",
    [
        pytest.param(lambda: transcoder(), pair_data, id="transcoder"),
        pytest.param(lambda: transcoder(skip=True), pair_data, id="skip"),
        pytest.param(lambda: clt(), clt_data, id="clt"),
    ],
)
def test_training_lowers_the_targets_fvu(tmp_path, make, data):
    x, y = data()
    sae = make()
    held_x, held_y = x[-1024:], y[-1024:]
    before = sae(held_x, target=held_y).fvu.item()
    train(sae, PairBatches(x[:-1024], y[:-1024], 256), _cfg(tokens=256 * 60), out_dir=tmp_path)
    after = sae(held_x, target=held_y).fvu.item()
    assert after < 0.5 * before
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"loss", "fvu", "aux_loss", "l0", "dead_fraction"} <= set(rows[-1])
    for W in sae.decoders():
        torch.testing.assert_close(W.flatten(1).norm(dim=1), torch.ones(W.shape[0]))


def test_a_skip_transcoder_beats_the_plain_one_on_a_linear_target(tmp_path):
    """The target is mostly linear in the input: the skip term takes that part, so the same budget goes further."""
    x, y = pair_data(3072)
    fvu = {}
    for skip in (False, True):
        sae = transcoder(skip=skip)
        train(sae, PairBatches(x, y, 256), _cfg(tokens=256 * 24, skip_init="lstsq"))
        fvu[skip] = sae(x[:1024], target=y[:1024]).fvu.item()
    assert fvu[True] < fvu[False]


@pytest.mark.parametrize(
    "make, data",
    [
        pytest.param(lambda: transcoder(skip=True), pair_data, id="skip-transcoder"),
        pytest.param(
            lambda: clt(skip=True, family="batchtopk", options={"threshold_start_step": 5, "threshold_beta": 0.9}),
            clt_data,
            id="clt-batchtopk",
        ),
    ],
)
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, make, data):
    """Killed after step 13 (last checkpoint at 10) and resumed in a fresh model: bit-identical to one run."""
    x, y = data(2048)
    cfg = _cfg(skip_init="lstsq")
    full = make()
    train(full, PairBatches(x, y, 256, seed=0), cfg, out_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_at_13(trainer):
        if trainer.step == 13:
            raise Killed

    with pytest.raises(Killed):
        train(make(), PairBatches(x, y, 256, seed=0), cfg, out_dir=tmp_path / "part", on_step=kill_at_13)
    resumed = make()
    result = train(resumed, PairBatches(x, y, 256, seed=0), cfg, out_dir=tmp_path / "part", resume=True)
    assert result.steps == 20
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    if full.cfg.is_clt:  # every layer's own threshold was estimated
        assert all(bool((fam.threshold >= 0).all()) for fam in full.families)


def test_dead_latents_of_a_clt_are_tracked_per_feature(tmp_path):
    x, y = clt_data(1024)
    sae = clt(layers=3)
    with torch.no_grad():
        sae.b_enc[1, :20] = -100.0  # 20 latents of layer 1 never fire
    seen = {}

    def spy(trainer):
        seen["dead"] = trainer.dead_mask().clone()

    train(sae, PairBatches(x, y, 256), _cfg(tokens=256 * 8, dead_window_tokens=512), on_step=spy)
    assert seen["dead"].shape == (3 * 64,)
    assert seen["dead"][64 : 64 + 20].all()


@pytest.mark.parametrize(
    "family, kw",
    [
        ("matryoshka", {"options": {"threshold_start_step": 5, "prefixes": [16, 32, 64]}}),
        ("hierarchicaltopk", {}),
        ("standard", {"k": None, "options": {"l1_coef": 0.05}}),
        ("vsae", {}),
        ("mutualchoice", {"options": {"threshold_start_step": 5}}),
        ("featurechoice", {"options": {"threshold_start_step": 5}}),
    ],
)
def test_families_with_their_own_loss_or_state_train_as_skip_transcoders(family, kw):
    x, y = pair_data(2048)
    sae = transcoder(family=family, skip=True, **kw)
    data = PairBatches(x, y, 256)
    before = None

    def first(trainer):
        nonlocal before
        if before is None:
            before = trainer.sae(x[:512], target=y[:512]).fvu.item()

    train(sae, data, _cfg(tokens=256 * 16, skip_init="lstsq"), on_step=first)
    assert sae(x[:512], target=y[:512]).fvu.item() < before


def test_shard_refuses_transcoders():
    from sae.distributed.group import process_group
    from sae.distributed.shard import LatentShard

    with (
        process_group("cpu", 30),
        pytest.raises(ValueError, match="--distributed shard splits an SAE's latents.*--distributed ddp"),
    ):
        LatentShard().prepare(transcoder())
