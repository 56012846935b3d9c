"""docs/extending.md's family recipe followed to the letter: the family below is one class and one
`register_family` call, and it then trains, logs its loss term, saves, loads and resumes through the same code as
the built-in families; what it has not declared (ddp, shard, sparsify, SAELens) is refused."""

import json

import pytest
import torch

from sae import Family, SAEConfig, SparseAutoencoder, TrainConfig, register_family, train
from sae.data import TensorBatches
from sae.distributed.shard import shard_rule
from sae.families import FAMILIES


class TopKL1(Family):
    """TopK plus an L1 penalty on the codes: l1_coef * mean_b |z_b|_1 / mean_b |x_b|."""

    name = "topk_l1"
    option_names = ("l1_coef",)
    saelens_unsupported = "SAELens's TopK has no L1 term (its inference would be the same, but say so)"

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        coef = cfg.options.get("l1_coef", 0.01)
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not coef >= 0:
            raise ValueError(f"family 'topk_l1': l1_coef={coef!r}; expected a float >= 0")

    def extra_losses(self, sae, x_n, enc, x_hat_n, step):
        l1 = enc.code.values.float().abs().sum(1).mean() / x_n.float().norm(dim=1).mean().clamp_min(1e-12)
        return {"l1_loss": self.cfg.options.get("l1_coef", 0.01) * l1}


@pytest.fixture
def topk_l1():
    register_family(TopKL1)
    yield TopKL1
    del FAMILIES[TopKL1.name]  # the registry is process-wide: leave it as the other tests expect it


def _data(n: int = 2048, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(32, d, generator=g)
    idx = torch.rand(n, 32, generator=g).topk(3, dim=1).indices
    return (torch.rand(n, 3, generator=g)[..., None] * feats[idx]).sum(1)


def test_a_registered_family_trains_saves_loads_and_resumes(topk_l1, tmp_path):
    cfg = SAEConfig(d_in=16, n_latents=64, k=4, family="topk_l1", options={"l1_coef": 0.05})
    tcfg = TrainConfig(tokens=128 * 12, batch_size=128, init_tokens=256, checkpoint_every=4, log_every=4, seed=1)
    x = _data()
    sae = SparseAutoencoder(cfg, seed=0)
    train(sae, TensorBatches(x, 128, seed=0), tcfg, out_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["l1_loss"] > 0 for r in rows) and rows[-1]["loss"] < rows[0]["loss"]

    sae.save(tmp_path / "dict")
    loaded = SparseAutoencoder.load(tmp_path / "dict")
    assert loaded.cfg == sae.cfg and isinstance(loaded.family, TopKL1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x[:64]).x_hat, sae(x[:64]).x_hat)

    def stop(trainer):
        if trainer.step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(SparseAutoencoder(cfg, seed=0), TensorBatches(x, 128, seed=0), tcfg, out_dir=tmp_path / "part", on_step=stop)
    resumed = SparseAutoencoder(cfg, seed=0)
    train(resumed, TensorBatches(x, 128, seed=0), tcfg, out_dir=tmp_path / "part", resume=True)
    for (name, a), b in zip(sae.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_what_a_family_does_not_declare_is_refused(topk_l1, tmp_path):
    with pytest.raises(ValueError, match=r"l1_coef=-1"):
        SAEConfig(d_in=16, n_latents=64, family="topk_l1", options={"l1_coef": -1})
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=64, k=4, family="topk_l1"))
    assert not TopKL1.ddp_supported({})
    with pytest.raises(ValueError, match="family 'topk_l1' selects otherwise"):
        shard_rule("topk_l1", {})
    with pytest.raises(ValueError, match="family 'topk_l1' cannot be saved for sparsify"):
        sae.save(tmp_path / "s", format="sparsify")
    with pytest.raises(ValueError, match="family 'topk_l1' cannot be saved for SAELens: SAELens's TopK has no L1"):
        sae.save(tmp_path / "s", format="saelens-strict")


def test_register_family_refuses_a_duplicate_name_and_a_class_that_is_not_a_family(topk_l1):
    class Again(TopKL1):
        pass  # inherits the name "topk_l1"

    with pytest.raises(ValueError, match="family name 'topk_l1' is already registered"):
        register_family(Again)
    with pytest.raises(TypeError, match="subclass of sae.families.Family"):
        register_family(dict)
    with pytest.raises(TypeError, match="subclass of sae.families.Family"):
        register_family(Family)
    with pytest.raises(ValueError, match="already registered"):
        register_family(FAMILIES["topk"])
