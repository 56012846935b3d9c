"""Registry of SAE families: adding one is a file and a line here."""

from __future__ import annotations

from sae.families.abstopk import AbsTopK
from sae.families.adaptivek import AdaptiveK
from sae.families.base import Family, fvu
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

FAMILIES: dict[str, type[Family]] = {
    "topk": TopK,
    "batchtopk": BatchTopK,
    "abstopk": AbsTopK,
    "adaptivek": AdaptiveK,
    "featurechoice": FeatureChoice,
    "mutualchoice": MutualChoice,
    "topafa": TopAFA,
    "hierarchicaltopk": HierarchicalTopK,
    "matryoshka": Matryoshka,
    "vsae": VariationalTopK,
    "jumprelu": JumpReLU,
    "standard": Standard,
    "gated": Gated,
}


def get_family(name: str) -> type[Family]:
    """The family class registered under `name`; a clear error listing the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown SAE family {name!r}; expected one of {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "get_family", "fvu"]
