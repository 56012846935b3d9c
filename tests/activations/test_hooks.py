"""The hook points of a run: --hook names or --layers through a template, refused at once when malformed."""

import pytest

from activations import HookPoints
from activations.hooks import DEFAULT_HOOK

DEFAULT = "blocks.3.hook_resid_pre"


def test_layers_expand_through_the_template():
    assert list(HookPoints(None, "0-2,5", "blocks.{}.hook_resid_pre")) == [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.2.hook_resid_pre",
        "blocks.5.hook_resid_pre",
    ]
    assert list(HookPoints(["a", "b"], "", "")) == ["a", "b"]
    assert list(HookPoints(None, "", "")) == [DEFAULT] == [DEFAULT_HOOK]


@pytest.mark.parametrize(
    "hooks, layers, template, message",
    [
        (["a"], "1", "blocks.{}.x", "not both"),
        (None, "1", "blocks.x", "exactly one '{}'"),
        (None, "3-1", "blocks.{}.x", "runs backwards"),
        (None, "one", "blocks.{}.x", "expected numbers and ranges"),
        (["a", "a"], "", "", "given twice"),
    ],
)
def test_bad_hook_lists_are_refused(hooks, layers, template, message):
    with pytest.raises(ValueError, match=message):
        HookPoints(hooks, layers, template)


def test_one_name_is_one_hook_point_and_the_value_is_frozen():
    points = HookPoints("blocks.1.hook_resid_pre")
    assert points.names == ("blocks.1.hook_resid_pre",) and len(points) == 1
    assert HookPoints(("a", "b")) == HookPoints(["a", "b"])
    with pytest.raises(AttributeError):
        points.layers = "0-1"  # type: ignore[misc]


def test_targets_pair_with_hooks_or_come_from_a_template():
    points = HookPoints(["a", "b"], targets=["c", "d"])
    assert points.paired and points.pairs == [("a", "c"), ("b", "d")] and points.target_names == ("c", "d")
    assert not HookPoints(["a"]).paired and HookPoints(["a"]).pairs == []
    layered = HookPoints(layers="0-1", hook_template="blocks.{}.mlp.hook_in", target_template="blocks.{}.mlp.hook_out")
    assert layered.pairs == [("blocks.0.mlp.hook_in", "blocks.0.mlp.hook_out"), ("blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out")]
    assert not layered.clt and layered.layer_numbers == (0, 1)


def test_a_clt_takes_the_mlp_templates_by_default():
    clt = HookPoints(layers="2-4", clt=True)
    assert clt.names == tuple(f"blocks.{i}.hook_mlp_in" for i in (2, 3, 4))
    assert clt.target_names == tuple(f"blocks.{i}.hook_mlp_out" for i in (2, 3, 4))
    assert clt.first_layer == 2 and clt.layer_numbers == (2, 3, 4)
    own = HookPoints(layers="0-1", hook_template="blocks.{}.hook_resid_mid", target_template="blocks.{}.mlp.hook_out", clt=True)
    assert own.pairs == [
        ("blocks.0.hook_resid_mid", "blocks.0.mlp.hook_out"),
        ("blocks.1.hook_resid_mid", "blocks.1.mlp.hook_out"),
    ]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(hooks=["a", "b"], targets=["c"]), "pairs 1:1 with --hook: got 2 hook"),
        (dict(targets=["c"]), "got 0 hook"),
        (dict(hooks=["a"], targets=["a"]), "'a' is its own input hook"),
        (dict(layers="0-1", target_template="blocks.{}.hook_resid_pre"), "its own input hook"),
        (dict(clt=True), "--clt trains one dictionary over --layers"),
        (dict(layers="0,2", clt=True), "consecutive layers in ascending order"),
        (dict(layers="3,2", clt=True), "consecutive layers in ascending order"),
        (dict(layers="3", clt=True), "at least two layers"),
        (dict(layers="0-1", targets=["c", "d"]), "with --layers give --target-template"),
        (dict(hooks=["a"], target_template="t.{}"), "needs --layers"),
        (dict(layers="0-1", target_template="blocks.out"), "--target-template 'blocks.out' must contain exactly one"),
        (dict(hooks=["a"], targets=[""]), "target hooks must be non-empty names"),
    ],
)
def test_bad_target_hooks_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        HookPoints(**kw)


def test_the_train_command_offers_the_target_flags():
    """(Training through them: tests/sae/transcoders/test_cli.py.)"""
    cli = pytest.importorskip("sae.cli")
    args = cli.build_parser().parse_args(["train", "--hook", "a", "--target-hook", "b", "--layers", "", "--clt", "false"])
    assert (args.hooks, args.targets, args.clt) == (["a"], ["b"], False)
