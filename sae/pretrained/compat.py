"""Is a dictionary fit to read a model's hook? One check every module that joins the two calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sae.model import SparseAutoencoder

if TYPE_CHECKING:
    from activations.models import ModelAdapter


def check_compatible(sae: SparseAutoencoder, model: ModelAdapter | int, hook: str, force: bool = False) -> None:
    """Refuse a dictionary whose d_in differs from the hook's width, or whose recorded hook_name differs from
    `hook`, naming both values. `force=True` allows the hook-name mismatch (a dictionary deliberately moved
    to another layer) but never a width mismatch, which no forward pass could survive.

    `model` is a ModelAdapter (the hook's width is probed with a tiny forward pass) or the width itself.
    """
    if isinstance(model, int):
        width = model
    else:
        width = model.hook_dims(hook)[hook]
    if sae.cfg.d_in != width:
        raise ValueError(
            f"the dictionary reads d_in={sae.cfg.d_in} but hook {hook!r} has width {width} "
            f"(model {getattr(model, 'name', 'given as a width')!r}): they cannot be joined"
        )
    recorded = sae.cfg.hook_name
    if recorded and recorded != hook and not force:
        raise ValueError(
            f"the dictionary was trained on hook {recorded!r}, not {hook!r}; pass force=True to attach it there anyway"
        )
