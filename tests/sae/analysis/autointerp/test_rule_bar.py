"""The bar: with the rule judge on latents of known ground truth, detection and fuzzing scores equal the
values computed directly from the same samples; a correct explanation scores >= 0.9, a shuffled one
within 0.1 of chance, and a judge that ignores the passage exactly chance."""

import random
import statistics

import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from sae.analysis.autointerp import RuleJudge, SampleSettings, explain, score
from sae.analysis.autointerp.judges import Reply
from sae.analysis.autointerp.sampling import detection_items, fuzzing_items, latent_samples


def _direct(truth, words, marks=None):
    """The rule applied to the words themselves (no prompt, no judge)."""
    quoted = set(truth.words)
    if marks is None:
        return any(w in quoted for w in (words[:-1] if truth.kind == "after" else words))
    hits = [j for j, m in enumerate(marks) if m]
    if truth.kind == "after":
        return bool(hits) and all(j > 0 and words[j - 1] in quoted for j in hits)
    return bool(hits) and all(words[j] in quoted for j in hits)


@pytest.mark.parametrize("per_prompt", [1, 5])
def test_scores_equal_the_direct_computation(synthetic, per_prompt):
    stats, truth, _ = synthetic
    got = score(stats, {i: t.truth for i, t in enumerate(truth)}, RuleJudge(), per_prompt=per_prompt, progress=False)
    samples = latent_samples(stats, list(range(len(truth))))
    for i, t in enumerate(truth):
        for method, items in (("detection", detection_items(samples[i])), ("fuzzing", fuzzing_items(samples[i]))):
            labels = [it.label for it in items]
            pred = [_direct(t, [w.strip() for w in stats.text(it.example.ids)], it.marks) for it in items]
            s = got[i][method]
            assert s.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, pred), abs=5e-5)
            assert (s.n_positive, s.n_negative, s.unparsed) == (sum(labels), len(labels) - sum(labels), 0)
            if per_prompt == 1:
                assert s.auroc == pytest.approx(roc_auc_score(labels, [float(p) for p in pred]), abs=5e-5)
            else:
                assert s.auroc is None


def test_correct_explanations_score_high_and_shuffled_ones_at_chance(synthetic):
    stats, truth, _ = synthetic
    n = len(truth)
    correct = score(stats, {i: t.truth for i, t in enumerate(truth)}, RuleJudge(), progress=False)
    perm = list(range(n))
    rng = random.Random(0)
    while any(p == i or truth[p].words == truth[i].words for i, p in enumerate(perm)):
        rng.shuffle(perm)  # a derangement: no latent keeps its own explanation
    shuffled = score(stats, {i: truth[perm[i]].truth for i in range(n)}, RuleJudge(), progress=False)
    for method in ("detection", "fuzzing"):
        assert statistics.mean(correct[i][method].balanced_accuracy for i in range(n)) >= 0.9
        assert abs(statistics.mean(shuffled[i][method].balanced_accuracy for i in range(n)) - 0.5) <= 0.1
    # the rule's own explanations, written from the shown examples, are the ground truth's words
    made = explain(stats, RuleJudge(), progress=False)
    assert sum(set(t.words) == set(made[i].text.split('"')[1::2]) for i, t in enumerate(truth)) >= n - 1


class _AlwaysYes:
    name, identity, parallel = "always-yes", {"kind": "always-yes"}, 64

    def answer(self, requests, on_reply=None):
        return [Reply("yes", 1, 1) for _ in requests]


def test_a_judge_that_ignores_the_passage_scores_exactly_chance(synthetic):
    stats, truth, _ = synthetic
    got = score(stats, {0: truth[0].truth, 1: truth[1].truth}, _AlwaysYes(), settings=SampleSettings(), progress=False)
    assert all(s.balanced_accuracy == 0.5 and s.tpr == 1.0 and s.tnr == 0.0 for g in got.values() for s in g.values())
