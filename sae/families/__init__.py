"""Registry of SAE families: adding one is a file and a line here."""

from __future__ import annotations

from sae.families.base import Family, fvu
from sae.families.topk import TopK

FAMILIES: dict[str, type[Family]] = {
    "topk": TopK,
}


def get_family(name: str) -> type[Family]:
    """The family class registered under `name`; a clear error listing the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown SAE family {name!r}; expected one of {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "get_family", "fvu"]
