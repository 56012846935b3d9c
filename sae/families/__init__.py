"""The registry of SAE families. A family is one file (a `Family` subclass) and one `register_family` call;
docs/extending.md walks through one. The built-in families are registered below, in the order `FAMILIES` lists
them.
"""

from __future__ import annotations

from sae.families.abstopk import AbsTopK
from sae.families.adaptivek import AdaptiveK
from sae.families.base import DEFAULT_AUX_COEF, DEFAULT_K_AUX, Family, TrainStep
from sae.families.batchtopk import BatchTopK
from sae.families.choice import FeatureChoice, MutualChoice
from sae.families.gated import Gated
from sae.families.hierarchical import HierarchicalTopK
from sae.families.jumprelu import JumpReLU
from sae.families.matryoshka import Matryoshka
from sae.families.standard import Standard
from sae.families.topafa import TopAFA
from sae.families.topk import TopK
from sae.families.vsae import VariationalTopK

FAMILIES: dict[str, type[Family]] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Make `cls` the family named `cls.name` (SAEConfig(family=...), saved cfg.json files, the CLI's --family).

    Refuses a class that is not a Family subclass and a name already registered. Returns `cls`."""
    if not (isinstance(cls, type) and issubclass(cls, Family)) or cls is Family:
        raise TypeError(f"register_family takes a subclass of sae.families.Family, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"family class {cls.__name__} has name={name!r}; expected a non-empty string")
    if name in FAMILIES:
        raise ValueError(
            f"family name {name!r} is already registered (by {FAMILIES[name].__qualname__}); "
            f"give {cls.__qualname__} a name of its own"
        )
    FAMILIES[name] = cls
    return cls


def get_family(name: str) -> type[Family]:
    """The family class registered under `name`; a clear error listing the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown SAE family {name!r}; expected one of {sorted(FAMILIES)}") from None


register_family(TopK)
register_family(BatchTopK)
register_family(AbsTopK)
register_family(AdaptiveK)
register_family(FeatureChoice)
register_family(MutualChoice)
register_family(TopAFA)
register_family(HierarchicalTopK)
register_family(Matryoshka)
register_family(VariationalTopK)
register_family(JumpReLU)
register_family(Standard)
register_family(Gated)

__all__ = ["DEFAULT_AUX_COEF", "DEFAULT_K_AUX", "FAMILIES", "Family", "TrainStep", "get_family", "register_family"]
