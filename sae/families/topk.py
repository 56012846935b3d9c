"""TopK (Makhzani & Frey 2013; Gao et al. 2024): the base class is the whole method."""

from sae.families.base import Family


class TopK(Family):
    """Keep each token's k largest pre-activations, then ReLU; AuxK trains dead latents."""

    name = "topk"
