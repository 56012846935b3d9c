"""Balanced accuracy and AUROC equal scikit-learn's; unparsed verdicts are counted and left out."""

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from sae.analysis.autointerp.scoring import auroc, balanced_accuracy, bootstrap_ci, score_verdicts


def test_against_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(30) < 0.4
        y[:2] = [True, False]
        v = rng.random(30) < 0.5
        p = np.round(rng.random(30), 1)  # ties
        assert balanced_accuracy(y, v)[0] == balanced_accuracy_score(y, v)
        assert abs(auroc(y, p) - roc_auc_score(y, p)) < 1e-12


def test_unparsed_are_counted_not_scored():
    labels = [True, True, False, False, True]
    s = score_verdicts("detection", labels, [True, None, False, True, None], [None] * 5)
    assert s.unparsed == 2 and (s.n_positive, s.n_negative) == (1, 2)
    assert s.balanced_accuracy == 0.75 and s.tpr == 1.0 and s.tnr == 0.5
    assert s.auroc is None
    none = score_verdicts("fuzzing", labels, [None] * 5, [None] * 5)
    assert none.balanced_accuracy is None and none.unparsed == 5 and none.ci95 is None


def test_auroc_from_probabilities_and_ci():
    labels = [True] * 10 + [False] * 10
    s = score_verdicts("detection", labels, [True] * 20, [0.9] * 10 + [0.1] * 10)
    assert s.auroc == 1.0 and s.balanced_accuracy == 0.5
    lo, hi = bootstrap_ci(labels, [True] * 8 + [False] * 2 + [False] * 10, seed=0)
    assert lo <= 0.9 <= hi and hi <= 1.0 and lo > 0.7
    assert bootstrap_ci(labels, [True] * 20, seed=0) == bootstrap_ci(labels, [True] * 20, seed=0)
