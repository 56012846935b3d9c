"""Sparse autoencoders for language-model interpretability.

from sae import SAEConfig, SparseAutoencoder
sae = SparseAutoencoder(SAEConfig(d_in=384, n_latents=3072, family="topk", k=32))
"""

from kernels import SparseCode
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.families import FAMILIES, Family, TrainStep, register_family
from sae.formats import Format, register_format
from sae.model import ForwardOutput, SparseAutoencoder
from sae.pretrained import check_compatible, load_all, load_pretrained
from sae.train import NonFiniteError, Trainer, train

__all__ = [
    "FAMILIES",
    "Family",
    "Format",
    "ForwardOutput",
    "NonFiniteError",
    "RunConfig",
    "SAEConfig",
    "SparseAutoencoder",
    "SparseCode",
    "TrainConfig",
    "TrainStep",
    "Trainer",
    "check_compatible",
    "load_all",
    "load_pretrained",
    "register_family",
    "register_format",
    "train",
]
