"""Analysis downstream of a trained dictionary: metrics, baselines, statistics, figures."""

from sae.analysis.dashboard import write_browser
from sae.analysis.explain import explain_text
from sae.analysis.features import FeatureStats, feature_stats
from sae.analysis.show import show, show_text

__all__ = ["FeatureStats", "explain_text", "feature_stats", "show", "show_text", "write_browser"]
