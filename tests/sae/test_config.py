import pytest

from sae.config import SAEConfig, TrainConfig


def test_expansion_sets_n_latents():
    assert SAEConfig(d_in=48, expansion=8).n_latents == 384


@pytest.mark.parametrize("k", [0, -1, 129])
def test_k_out_of_range_names_value_and_bound(k):
    with pytest.raises(ValueError, match=rf"k={k}.*n_latents=128"):
        SAEConfig(d_in=32, n_latents=128, k=k)


def test_unknown_family_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown SAE family 'topq'.*'topk'"):
        SAEConfig(d_in=32, n_latents=128, family="topq")


def test_unknown_dtype_and_normalisation():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        SAEConfig(d_in=32, n_latents=128, dtype="float8")
    with pytest.raises(ValueError, match="unknown normalize 'zscore'"):
        SAEConfig(d_in=32, n_latents=128, normalize="zscore")


def test_missing_size_and_unknown_options():
    with pytest.raises(ValueError, match="n_latents or expansion"):
        SAEConfig(d_in=32)
    with pytest.raises(ValueError, match=r"unknown options \['m'\]"):
        SAEConfig(d_in=32, n_latents=128, options={"m": 3})


def test_train_config_checks():
    with pytest.raises(ValueError, match="less than one batch"):
        TrainConfig(tokens=100, batch_size=4096)
    assert TrainConfig(tokens=8192, batch_size=4096).steps == 2
    assert TrainConfig().learning_rate(2**14) == pytest.approx(2e-4)
    assert TrainConfig().learning_rate(2**16) == pytest.approx(1e-4)


def test_config_dict_round_trip():
    cfg = SAEConfig(d_in=32, n_latents=128, k=8, hook_name="blocks.3.hook_resid_pre")
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
