import json

import pytest
import torch

from sae.config import SAEConfig, TrainConfig
from sae.data import TensorBatches
from sae.model import SparseAutoencoder
from sae.train import NonFiniteError, lr_at, train

from .conftest import sparse_data


def _cfg(**kw):
    base = dict(
        tokens=512 * 30, batch_size=512, checkpoint_every=5, log_every=5, dead_window_tokens=2048, init_tokens=1024, seed=3
    )
    return TrainConfig(**{**base, **kw})


def _sae():
    return SparseAutoencoder(SAEConfig(d_in=32, n_latents=128, k=4), seed=1)


def test_training_lowers_fvu(acts, tmp_path):
    sae = _sae()
    data = TensorBatches(acts, 512, seed=0)
    before = sae(acts[:2048]).fvu.item()
    train(sae, data, _cfg(tokens=512 * 80), out_dir=tmp_path)
    after = sae(acts[:2048]).fvu.item()
    assert after < 0.5 * before
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, 81, 5))
    assert {"loss", "fvu", "l0", "dead_fraction", "lr", "tokens_per_s"} <= set(rows[0])
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))


def test_resume_after_kill_matches_uninterrupted_run(acts, tmp_path):
    """A run killed mid-way (after step 13, last checkpoint at 10) and resumed ends bit-identical."""
    full = _sae()
    train(full, TensorBatches(acts, 512, seed=0), _cfg(), out_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_at_13(trainer):
        if trainer.step == 13:
            raise Killed

    part = _sae()
    with pytest.raises(Killed):
        train(part, TensorBatches(acts, 512, seed=0), _cfg(), out_dir=tmp_path / "part", on_step=kill_at_13)
    resumed = _sae()  # a fresh process: nothing in memory survives the kill
    result = train(resumed, TensorBatches(acts, 512, seed=0), _cfg(), out_dir=tmp_path / "part", resume=True)
    assert result.steps == 20  # 10 .. 30
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    log_full = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    log_part = (tmp_path / "part" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log_part] == [json.loads(x)["step"] for x in log_full]


def test_resume_from_plain_iterable_skips_consumed_batches(acts, tmp_path):
    """Without iter_from the trainer discards the batches it already trained on."""
    batches = list(acts.split(512))[:16]
    cfg = _cfg(tokens=512 * 16, checkpoint_every=8)
    full = _sae()
    train(full, batches, cfg, out_dir=tmp_path / "a")

    def stop(trainer):
        if trainer.step == 8:
            raise KeyboardInterrupt

    part = _sae()
    with pytest.raises(KeyboardInterrupt):
        train(part, batches, cfg, out_dir=tmp_path / "b", on_step=stop)
    resumed = _sae()
    train(resumed, batches, cfg, out_dir=tmp_path / "b", resume=True)
    assert torch.equal(full.W_enc, resumed.W_enc)


def test_nan_batch_stops_with_step_and_keeps_last_good_checkpoint(acts, tmp_path):
    bad = acts.clone()
    data = TensorBatches(bad, 512, seed=0)
    # poison exactly the batch that step 7 will read
    rows = data._perm(0)[7 * 512 : 8 * 512]
    bad[rows[0], 3] = float("nan")
    sae = _sae()
    with pytest.raises(NonFiniteError, match="step 7"):
        train(sae, data, _cfg(), out_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=False)
    assert state["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["sae"].values())


def test_data_running_out_is_reported(acts):
    with pytest.raises(ValueError, match="data ran out at step 4"):
        train(_sae(), list(acts.split(512))[:4], _cfg(tokens=512 * 10))


def test_dead_latents_are_tracked_and_revived(tmp_path):
    x = sparse_data(n=4096, d=32, n_feat=16, active=2)
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=256, k=2), seed=0)
    result = train(sae, TensorBatches(x, 512), _cfg(tokens=512 * 20, dead_window_tokens=1024))
    assert 0.0 < result.dead_fraction < 1.0


def test_trainer_uses_the_dictionarys_default_dead_window(acts):
    """No window given: the trainer takes 32 n / k tokens for its dictionary (128 latents, k 4: 1024 tokens), and a
    latent silent that long is dead after two steps of 512, not before."""
    from sae.train import Trainer

    trainer = Trainer(_sae(), _cfg(dead_window_tokens=None))
    assert trainer.dead_window == 32 * 128 // 4
    trainer.since_fired[:3] = torch.tensor([0, 512, 1024])
    assert trainer.dead_mask()[:3].tolist() == [False, False, True]


def test_lr_schedule_warms_up_and_decays():
    cfg = TrainConfig(tokens=100 * 10, batch_size=10, warmup_frac=0.1, decay_frac=0.2)
    lrs = [lr_at(s, 100, 1.0, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[50] == 1.0
    assert lrs[80] == 1.0 and lrs[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(lrs[80:], lrs[81:]))


def test_resume_with_a_changed_training_config_names_each_field_and_both_values(acts, tmp_path):
    cfg = _cfg(tokens=512 * 5)
    train(_sae(), TensorBatches(acts, 512, seed=0), cfg, out_dir=tmp_path)
    changed = _cfg(tokens=512 * 10, seed=4, lr=1e-3, batch_size=256, log_every=2)  # log_every may change
    with pytest.raises(ValueError, match="cannot resume") as err:
        train(_sae(), TensorBatches(acts, 256, seed=0), changed, out_dir=tmp_path, resume=True)
    msg = str(err.value)
    for line in (
        "training seed: checkpoint 3, this run 4",
        "training lr: checkpoint None, this run 0.001",
        "training batch_size: checkpoint 512, this run 256",
        "training tokens: checkpoint 2560, this run 5120",
    ):
        assert line in msg
    assert "log_every" not in msg and "{" not in msg  # the differing fields, not two whole dicts
    with pytest.raises(ValueError, match="dictionary k: checkpoint 4, this run 8"):
        sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=128, k=8), seed=1)
        train(sae, TensorBatches(acts, 512, seed=0), cfg, out_dir=tmp_path, resume=True)


def test_auxk_settings_are_training_settings_on_resume(acts, tmp_path):
    """A changed k_aux or aux_coef is refused as a training change (it changes the result, as another lr would),
    never as a different dictionary."""
    train(_sae(), TensorBatches(acts, 512, seed=0), _cfg(tokens=512 * 5), out_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot resume") as err:
        train(
            _sae(), TensorBatches(acts, 512, seed=0), _cfg(tokens=512 * 5, k_aux=128, aux_coef=0.5), out_dir=tmp_path, resume=True
        )
    msg = str(err.value)
    assert "training k_aux: checkpoint 256, this run 128" in msg and "training aux_coef: checkpoint 0.03125, this run 0.5" in msg
    assert "dictionary" not in msg


def test_resume_from_a_checkpoint_holding_auxk_in_the_dictionary_config(acts, tmp_path):
    """Checkpoints written when SAEConfig held k_aux and aux_coef resume, bit-identical to an uninterrupted run."""
    cfg = _cfg(k_aux=64, aux_coef=0.25)
    full = _sae()
    train(full, TensorBatches(acts, 512, seed=0), cfg, out_dir=tmp_path / "full")

    def stop(trainer):
        if trainer.step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_sae(), TensorBatches(acts, 512, seed=0), cfg, out_dir=tmp_path / "part", on_step=stop)
    path = tmp_path / "part" / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    for key in ("k_aux", "aux_coef"):  # the older layout: AuxK's settings in the dictionary config only
        state["sae_cfg"][key] = state["train_cfg"].pop(key)
    torch.save(state, path)
    resumed = _sae()
    train(resumed, TensorBatches(acts, 512, seed=0), cfg, out_dir=tmp_path / "part", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_resume_from_a_checkpoint_written_before_transcoders(acts, tmp_path):
    """A checkpoint whose configs lack the fields added since (d_out, skip, layers, ..., skip_init) resumes as
    an SAE run with those fields at their defaults, bit-identical to an uninterrupted run."""
    cfg = _cfg()
    full = _sae()
    train(full, TensorBatches(acts, 512, seed=0), cfg, out_dir=tmp_path / "full")

    def stop(trainer):
        if trainer.step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_sae(), TensorBatches(acts, 512, seed=0), cfg, out_dir=tmp_path / "part", on_step=stop)
    path = tmp_path / "part" / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    for key in ("d_out", "target_hook", "skip", "layers", "first_layer"):
        del state["sae_cfg"][key]
    del state["train_cfg"]["skip_init"]
    torch.save(state, path)
    resumed = _sae()
    train(resumed, TensorBatches(acts, 512, seed=0), cfg, out_dir=tmp_path / "part", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_resume_drops_a_log_line_torn_by_the_kill_and_refuses_a_corrupt_log(acts, tmp_path):
    class Killed(Exception):
        pass

    def kill_at_13(trainer):
        if trainer.step == 13:
            raise Killed

    with pytest.raises(Killed):
        train(_sae(), TensorBatches(acts, 512, seed=0), _cfg(), out_dir=tmp_path, on_step=kill_at_13)
    log = tmp_path / "log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 14, "loss": 0.1')  # the line a kill cut in half
    train(_sae(), TensorBatches(acts, 512, seed=0), _cfg(), out_dir=tmp_path, resume=True)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # one record a logged step, the torn one gone

    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl line 2 is not a JSON record"):
        train(_sae(), TensorBatches(acts, 512, seed=0), _cfg(), out_dir=tmp_path, resume=True)
