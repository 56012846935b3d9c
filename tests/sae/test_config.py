import pytest

from sae.config import SAEConfig, TrainConfig, move_training_keys


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


def test_missing_size_defaults_to_expansion_8_and_unknown_options():
    assert SAEConfig(d_in=32).n_latents == 256
    with pytest.raises(ValueError, match=r"unknown options \['m'\]"):
        SAEConfig(d_in=32, n_latents=128, options={"m": 3})


def test_train_config_checks():
    with pytest.raises(ValueError, match="less than one batch"):
        TrainConfig(tokens=100, batch_size=4096)
    assert TrainConfig(tokens=8192, batch_size=4096).steps == 2
    with pytest.raises(ValueError, match="dead_window_tokens must be >= 1"):
        TrainConfig(dead_window_tokens=0)


def test_default_lr_rule():
    """4e-3 up to 3200 steps whatever n; then falling as 1/sqrt(steps) down to Gao et al.'s rate; a given lr wins."""
    for n in (1536, 3072, 24576):
        assert TrainConfig(tokens=4096 * 390, batch_size=4096).learning_rate(n) == 4e-3  # the demo's 390 steps
        assert TrainConfig(tokens=512 * 3200, batch_size=512).learning_rate(n) == 4e-3
    assert TrainConfig(tokens=64 * 25600, batch_size=64).learning_rate(1536) == pytest.approx(4e-3 / 8**0.5)
    very_long = TrainConfig(tokens=4096 * 10**7)  # ten million steps: Gao's rate, which falls with n
    assert very_long.learning_rate(2**14) == pytest.approx(2e-4)
    assert very_long.learning_rate(2**16) == pytest.approx(1e-4)
    assert TrainConfig(tokens=4096 * 10, lr=1e-5).learning_rate(2**14) == 1e-5


def test_dead_window_default():
    """32 firings of an average latent (32 n / k tokens), at least one batch, at most a quarter of the run; the
    demo (n 3072, k 32, batches of 4096) gets one batch, API and demo alike."""
    assert TrainConfig(tokens=1_600_000).dead_window(3072, 32) == 4096
    assert TrainConfig(tokens=1_600_000, batch_size=1024).dead_window(3072, 32) == 3072
    assert TrainConfig(tokens=10**9).dead_window(2**16, 32) == 32 * 2**11
    assert TrainConfig(tokens=10**9).dead_window(2**16, 64) == 32 * 2**10
    assert TrainConfig(tokens=10**9).dead_window(2**16) == 32 * 2**11  # no k (e.g. L1 families): k = 32
    assert TrainConfig(tokens=512 * 80, batch_size=512).dead_window(24576, 32) == 512 * 80 // 4  # a quarter of the run
    assert TrainConfig(tokens=4096 * 10, batch_size=4096).dead_window(1536, 32) == 4096  # at least a batch
    assert TrainConfig(tokens=10**9, dead_window_tokens=123).dead_window(3072, 32) == 123


def test_config_dict_round_trip():
    cfg = SAEConfig(d_in=32, n_latents=128, k=8, hook_name="blocks.3.hook_resid_pre")
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg


def test_families_without_k_accept_the_default_and_refuse_an_explicit_one():
    cfg = SAEConfig(d_in=32, n_latents=128, family="topafa")
    assert cfg.k is None
    assert SAEConfig(d_in=32, n_latents=128).k == 32  # the top-k default is still 32
    with pytest.raises(ValueError, match="family 'topafa' chooses k per token.*k=32"):
        SAEConfig(d_in=32, n_latents=128, family="topafa", k=32)


@pytest.mark.parametrize("field, value", [("d_in", "32"), ("n_latents", 12.5), ("k", True), ("options", [1]), ("family", 3)])
def test_a_field_of_the_wrong_type_is_a_value_error_naming_it(field, value):
    kw = {"d_in": 32, "n_latents": 128, field: value}
    with pytest.raises(ValueError, match=rf"SAEConfig\.{field} must be"):
        SAEConfig(**kw)


@pytest.mark.parametrize("field, value", [("aux_coef", "big"), ("k_aux", 2.5), ("k_aux", True)])
def test_a_training_field_of_the_wrong_type_is_a_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be"):
        TrainConfig(**{field: value})


def test_auxk_settings_are_training_settings_and_old_dictionary_configs_still_load():
    """k_aux and aux_coef live in TrainConfig (range-checked there); a cfg.json written when SAEConfig held them
    still loads, and a checkpoint's copies move to the training config."""
    assert (TrainConfig().k_aux, TrainConfig().aux_coef) == (256, 1 / 32)
    with pytest.raises(ValueError, match="k_aux must be >= 0"):
        TrainConfig(k_aux=-1)
    with pytest.raises(ValueError, match="aux_coef must be a finite float >= 0"):
        TrainConfig(aux_coef=float("inf"))
    old = {"d_in": 32, "n_latents": 128, "k": 8, "k_aux": 64, "aux_coef": 0.125}
    assert SAEConfig.from_dict(old) == SAEConfig(d_in=32, n_latents=128, k=8)
    sae_cfg, train_cfg = move_training_keys(old, {"seed": 3})
    assert "k_aux" not in sae_cfg and train_cfg == {"seed": 3, "k_aux": 64, "aux_coef": 0.125}


def test_an_option_value_of_the_wrong_type_is_a_value_error():
    with pytest.raises(ValueError, match="family 'adaptivek'"):
        SAEConfig(d_in=32, n_latents=128, family="adaptivek", options={"k_min": [1]})


def test_train_config_refuses_absurd_values():
    with pytest.raises(ValueError, match="batch_size=1 is below the minimum of 8"):
        TrainConfig(tokens=1, batch_size=1)
    for lr in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            TrainConfig(lr=lr)
    with pytest.raises(ValueError, match="betas must lie in"):
        TrainConfig(betas=(0.9, 1.0))
    assert TrainConfig(tokens=8 * 4, batch_size=8, lr=1e-3).steps == 4
