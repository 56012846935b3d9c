"""Analysis downstream of a trained dictionary: evaluation, interventions, probes, geometry, figures."""

from sae.analysis.evaluate import evaluate, reconstruction_metrics
from sae.analysis.interventions import ablate, splice, steer
from sae.analysis.probing import sparse_probe

__all__ = ["ablate", "evaluate", "reconstruction_metrics", "sparse_probe", "splice", "steer"]
