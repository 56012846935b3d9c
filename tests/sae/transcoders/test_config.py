"""SAEConfig for transcoders and CLTs: the new fields, their refusals at construction, hooks, cfg.json round trips."""

import pytest

from sae.config import SAEConfig, TrainConfig, with_defaults
from sae.families import FAMILIES, Family, register_family


def test_kinds_and_hooks():
    sae = SAEConfig(d_in=8, hook_name="blocks.3.hook_resid_pre")
    assert not sae.is_transcoder and not sae.is_clt and sae.out_width == 8
    assert sae.input_hooks() == sae.target_hooks() == ["blocks.3.hook_resid_pre"]
    tc = SAEConfig(d_in=8, d_out=8, hook_name="blocks.3.hook_mlp_in", target_hook="blocks.3.hook_mlp_out")
    assert tc.is_transcoder and not tc.is_clt  # d_out == d_in is still a transcoder
    assert (tc.input_hooks(), tc.target_hooks()) == (["blocks.3.hook_mlp_in"], ["blocks.3.hook_mlp_out"])
    clt = SAEConfig(
        d_in=8,
        d_out=6,
        n_latents=16,
        k=4,
        layers=3,
        first_layer=2,
        hook_name="blocks.{}.hook_mlp_in",
        target_hook="blocks.{}.hook_mlp_out",
    )
    assert clt.is_clt and clt.n_features == 48 and clt.latents == 16
    assert clt.input_hooks() == [f"blocks.{i}.hook_mlp_in" for i in (2, 3, 4)]
    assert clt.target_hooks() == [f"blocks.{i}.hook_mlp_out" for i in (2, 3, 4)]


def test_cfg_json_round_trip_and_old_files_are_saes():
    cfg = SAEConfig(
        d_in=8, d_out=6, n_latents=16, skip=True, layers=2, family="jumprelu", target_hook="b.{}.out", hook_name="b.{}.in"
    )
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    old = {"d_in": 8, "n_latents": 16, "family": "topk", "k": 4, "dtype": "float32", "normalize": "dataset_scalar"}
    loaded = SAEConfig.from_dict(old)
    assert not loaded.is_transcoder and loaded.layers == 1 and not loaded.skip
    assert with_defaults(SAEConfig, old)["d_out"] is None and with_defaults(SAEConfig, old)["layers"] == 1


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"d_out": 0}, r"d_out must be a positive int.*got 0"),
        ({"d_out": 2.5}, r"SAEConfig.d_out must be int or None, got 2.5"),
        ({"skip": True}, r"skip=True is for a transcoder.*give d_out"),
        ({"skip": 1, "d_out": 4}, r"SAEConfig.skip must be bool, got 1"),
        ({"target_hook": "blocks.0.hook_mlp_out"}, r"target_hook='blocks.0.hook_mlp_out' is for a transcoder"),
        ({"layers": 0, "d_out": 4}, r"layers must be >= 1, got 0"),
        ({"layers": 3}, r"layers=3 is for a transcoder.*give d_out"),
        ({"first_layer": -1, "d_out": 4}, r"first_layer must be >= 0, got -1"),
        ({"d_out": 4, "layers": 2, "hook_name": "blocks.0.hook_mlp_in"}, r"hook_name='blocks.0.hook_mlp_in'.*exactly one \{\}"),
        ({"d_out": 4, "layers": 2, "target_hook": "b.{}.{}"}, r"target_hook='b.\{\}.\{\}'.*exactly one \{\}"),
        ({"d_out": 4, "layers": 2, "target_hook": "b.{0}"}, r"target_hook='b.\{0\}'.*exactly one \{\}"),
        ({"d_out": 4, "normalize": "layer_norm"}, r"normalize='layer_norm' is per token.*\('dataset_scalar', 'none'\)"),
        ({"d_out": 4, "family": "jumprelu", "k": None, "options": {"apply_b_dec_to_input": True}}, "apply_b_dec_to_input=True"),
    ],
)
def test_refusals_name_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        SAEConfig(**{"d_in": 8, "n_latents": 16, "k": 4, **kw})


@pytest.mark.parametrize("family", ["topafa", "adaptivek"])
def test_families_that_cannot_be_transcoders_say_why(family):
    k = None if family == "topafa" else 4
    SAEConfig(d_in=8, n_latents=16, family=family, k=k)  # fine as SAEs
    with pytest.raises(ValueError, match=rf"family '{family}' cannot be a transcoder: its"):
        SAEConfig(d_in=8, d_out=6, n_latents=16, family=family, k=k)


@pytest.mark.parametrize("family", ["matryoshka", "hierarchicaltopk", "standard", "vsae"])
def test_families_with_their_own_loss_are_transcoders_but_not_clts(family):
    k = None if family == "standard" else 4
    SAEConfig(d_in=8, d_out=6, n_latents=16, family=family, k=k, skip=True)
    with pytest.raises(ValueError, match=rf"family '{family}' cannot be a CLT: its own loss"):
        SAEConfig(d_in=8, d_out=6, n_latents=16, family=family, k=k, layers=2)


def test_every_family_is_accepted_or_refused_with_a_reason():
    for name, cls in FAMILIES.items():
        k = 4 if cls.uses_k else None
        for kw in ({}, {"skip": True}, {"layers": 2}):
            try:
                SAEConfig(d_in=8, d_out=6, n_latents=16, family=name, k=k, **kw)
            except ValueError as e:
                assert f"family {name!r} cannot be a" in str(e), str(e)


class _PrefixLoss(Family):
    name = "test_prefix_loss_without_base"

    def recon_loss(self, sae, x_n, enc, x_hat_n, sse=None):
        return super().recon_loss(sae, x_n, enc, x_hat_n, sse)


def test_a_recon_loss_without_base_cannot_be_a_skip_transcoder():
    if _PrefixLoss.name not in FAMILIES:
        register_family(_PrefixLoss)
    SAEConfig(d_in=8, d_out=6, n_latents=16, k=4, family=_PrefixLoss.name)  # without skip its base is b_dec
    with pytest.raises(ValueError, match="cannot be a skip transcoder: its recon_loss takes no base="):
        SAEConfig(d_in=8, d_out=6, n_latents=16, k=4, family=_PrefixLoss.name, skip=True)


def test_skip_init_is_checked():
    assert TrainConfig().skip_init == "zero"
    with pytest.raises(ValueError, match=r"skip_init must be one of \('zero', 'lstsq'\), got 'ols'"):
        TrainConfig(skip_init="ols")
