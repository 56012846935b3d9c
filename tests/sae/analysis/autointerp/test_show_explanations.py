"""Notebook views: a latent's explanation and scores in `show`, escaped; `show_explanations` sorted by score."""

import pytest

from sae.analysis.autointerp import RuleJudge, explain_and_score
from sae.analysis.autointerp.results import append_lines
from sae.analysis.features import STATS_FILE
from sae.analysis.show import show, show_explanations


@pytest.fixture
def run(synthetic, tmp_path):
    stats, _, _ = synthetic
    stats.save(tmp_path / STATS_FILE)
    explain_and_score(tmp_path, RuleJudge(), "0-5", progress=False)
    return tmp_path


def test_show_includes_the_explanation_escaped(run, synthetic):
    _, _, sae = synthetic
    html = show(sae, 2, run / STATS_FILE)._repr_html_()
    assert "<h4>explanation</h4>" in html and "the words &quot;" in html and "detection" in html
    append_lines(run / "explanations.jsonl", [{"latent": 3, "explanation": "<script>alert(1)</script>", "scores": {}}])
    html = show(sae, 3, run / STATS_FILE)._repr_html_()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<h4>explanation</h4>" not in show(sae, 9, run / STATS_FILE)._repr_html_()
    from sae.analysis.features import FeatureStats

    assert "<h4>explanation</h4>" not in show(sae, 2, FeatureStats.load(run))._repr_html_()  # none given


def test_show_explanations_sorts_by_score(run):
    table = show_explanations(run, sort="detection")
    scores = [r["scores"]["detection"]["balanced_accuracy"] for r in table.rows]
    assert scores == sorted(scores, reverse=True) and len(table.rows) == 6
    assert "<table>" in table._repr_html_() and "6 latents" in repr(table)
    assert [r["latent"] for r in show_explanations(run, sort="latent", descending=False).rows] == list(range(6))
    with pytest.raises(ValueError, match="sort must be"):
        show_explanations(run, sort="accuracy")
