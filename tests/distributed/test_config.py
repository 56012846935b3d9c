"""Options of the distributed and multi-hook runs, refused at start with messages that name the bad value."""

import pytest
import torch.distributed as dist

from sae.cli.run import run_training
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.distributed.comm import DataParallel
from sae.distributed.config import DistributedConfig
from sae.distributed.shard import LatentShard, shard_rule
from sae.model import SparseAutoencoder


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'fsdp'"):
        DistributedConfig(distributed="fsdp")


@pytest.mark.parametrize("family, rule", [("topk", "row"), ("batchtopk", "batch"), ("abstopk", "abs")])
def test_shard_rules(family, rule):
    assert shard_rule(family, {}) == rule


@pytest.mark.parametrize("family", ["matryoshka", "featurechoice", "vsae"])
def test_shard_refuses_other_selections(family):
    with pytest.raises(ValueError, match=f"family {family!r} selects otherwise"):
        shard_rule(family, {})


def test_shard_mode_refuses_a_family_before_loading_the_model(monkeypatch, tmp_path):
    import activations

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded before the family was checked")

    monkeypatch.setattr(activations, "load_model", no_model)
    with pytest.raises(ValueError, match="family 'matryoshka' selects otherwise"):
        run_training(
            RunConfig(out=str(tmp_path / "run")),
            {"family": "matryoshka", "k": 4},
            TrainConfig(tokens=4096, batch_size=256),
            DistributedConfig(distributed="shard"),
        )


@pytest.fixture
def one_rank():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_refuses_batch_selection(one_rank):
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_latents=32, family="batchtopk", k=4))
    with pytest.raises(ValueError, match="family 'batchtopk' selects over the batch"):
        DataParallel().prepare(sae)


def test_shard_slices_and_gathers_back(one_rank):
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_latents=32, k=4), seed=0)
    whole = {k: v.clone() for k, v in sae.state_dict().items()}
    comm = LatentShard()
    comm.prepare(sae)
    back = comm.whole_model(sae).state_dict()
    assert all(back[k].equal(v) for k, v in whole.items())
