"""TopK (Makhzani & Frey 2013; Gao et al. 2024): the base class is the whole method."""

from __future__ import annotations

from typing import Any

from sae.families.base import Family


class TopK(Family):
    """Keep each token's k largest pre-activations, then ReLU; AuxK trains dead latents."""

    name = "topk"
    sparsify_export = True

    @classmethod
    def ddp_supported(cls, options: dict[str, Any]) -> bool:
        return True

    @classmethod
    def shard_rule(cls, options: dict[str, Any]) -> str | None:
        return "row"
