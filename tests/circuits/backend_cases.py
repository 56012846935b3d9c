"""What the backend tests share with their .venv-interop side (which has no pytest): the tiny models' sizes, the
transcoders, and the comparison of two graphs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402

N_LAYERS, D, N = 2, 32, 16
HOOKS = ("blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out")
RESID_MID = ("blocks.{}.hook_mlp_in", "blocks.{}.hook_mlp_out")  # a CLT reading the residual before the MLP's norm
PROMPT = "the cat sat on the mat"
TABLES = ("node_kind", "node_layer", "node_pos", "node_index", "tokens", "active_features")


def transcoders(hooks: tuple[str, str] = HOOKS, kind: str = "per-layer") -> list:
    """Random skip JumpReLU transcoders, one per layer, or (`kind` "clt") one CLT, on `hooks`."""
    if kind == "clt":
        return [tm.our_clt(tm.random_clt(N_LAYERS, D, N, jumprelu=True, seed=5, skip=True), *hooks)]
    return [
        tm.our_transcoder(tm.random_transcoder(D, N, skip=True, jumprelu=True, seed=layer), layer, *hooks)
        for layer in range(N_LAYERS)
    ]


def assert_same_graph(ours, theirs, rel: float) -> None:
    """Equal node tables, node values within 1e-5, matrices within `rel` of the largest entry."""
    for name in TABLES:
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    torch.testing.assert_close(ours.node_value, theirs.node_value, rtol=1e-5, atol=1e-5)
    A, B = ours.adjacency_matrix, theirs.adjacency_matrix
    gap, scale = float((A - B).abs().max()), float(B.abs().max())
    assert A.shape == B.shape and gap <= rel * scale, f"matrices differ by {gap:.3g} of {scale:.3g}"
