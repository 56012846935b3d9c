"""Analysis downstream of a trained dictionary: evaluation, interventions, probes, geometry, feature statistics,
the feature browser, figures."""

from sae.analysis.dashboard import write_browser
from sae.analysis.evaluate import evaluate, reconstruction_metrics
from sae.analysis.features import FeatureStats, feature_stats
from sae.analysis.interventions import ablate, splice, steer
from sae.analysis.probing import sparse_probe
from sae.analysis.show import explain_text, show, show_text

__all__ = [
    "FeatureStats",
    "ablate",
    "evaluate",
    "explain_text",
    "feature_stats",
    "reconstruction_metrics",
    "show",
    "show_text",
    "sparse_probe",
    "splice",
    "steer",
    "write_browser",
]
