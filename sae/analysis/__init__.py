"""Analysis downstream of a trained dictionary: metrics, baselines, statistics, figures."""
