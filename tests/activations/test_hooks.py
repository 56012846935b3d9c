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
