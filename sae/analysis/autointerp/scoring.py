"""Scores of an explanation from the judge's verdicts: balanced accuracy, AUROC where P(yes) is known, a CI.

Balanced accuracy is the mean of the true-positive and true-negative rates over the parsed verdicts
(so it is 0.5 for a judge that ignores the passage, whatever the class sizes). An unparsed verdict
(None) is counted in `unparsed` and left out, never read as a yes or a no. AUROC (Mann-Whitney, ties
count half) uses the items with a P(yes). `ci95` is a stratified bootstrap of the balanced accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Score", "auroc", "balanced_accuracy", "bootstrap_ci", "score_verdicts"]

_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Score:
    """One method's score of one explanation, with the counts it rests on."""

    method: str
    balanced_accuracy: float | None
    auroc: float | None
    tpr: float | None
    tnr: float | None
    n_positive: int
    n_negative: int
    unparsed: int
    ci95: tuple[float, float] | None

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Score:
        ci = d.get("ci95")
        return cls(**{**d, "ci95": tuple(ci) if ci is not None else None})


def balanced_accuracy(labels: Sequence[bool], verdicts: Sequence[bool]) -> tuple[float | None, float | None, float | None]:
    """(balanced accuracy, TPR, TNR); None where a class is empty."""
    y, v = np.asarray(labels, dtype=bool), np.asarray(verdicts, dtype=bool)
    tpr = float((v & y).sum() / y.sum()) if y.any() else None
    tnr = float((~v & ~y).sum() / (~y).sum()) if (~y).any() else None
    return ((tpr + tnr) / 2 if tpr is not None and tnr is not None else None), tpr, tnr


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """P(score of a random positive > that of a random negative), ties half; None without both classes."""
    y, s = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def bootstrap_ci(labels: Sequence[bool], verdicts: Sequence[bool], seed: int, n: int = _BOOTSTRAP) -> tuple[float, float] | None:
    """95% interval of the balanced accuracy, positives and negatives resampled apart."""
    y, v = np.asarray(labels, dtype=bool), np.asarray(verdicts, dtype=bool)
    pos, neg = v[y], ~v[~y]  # correct verdicts in each class
    if not len(pos) or not len(neg):
        return None
    rng = np.random.default_rng(seed)
    tpr = pos[rng.integers(0, len(pos), (n, len(pos)))].mean(1)
    tnr = neg[rng.integers(0, len(neg), (n, len(neg)))].mean(1)
    lo, hi = np.quantile((tpr + tnr) / 2, [0.025, 0.975])
    return (round(float(lo), 4), round(float(hi), 4))


def score_verdicts(
    method: str, labels: Sequence[bool], verdicts: Sequence[bool | None], p_yes: Sequence[float | None], seed: int = 0
) -> Score:
    """The `Score` of one method from each item's label, parsed verdict (None: unparsed) and P(yes) (None: unknown)."""
    parsed = [(y, v) for y, v in zip(labels, verdicts, strict=True) if v is not None]
    ys, vs = [y for y, _ in parsed], [v for _, v in parsed]
    ba, tpr, tnr = balanced_accuracy(ys, vs)
    with_p = [(y, p) for y, p in zip(labels, p_yes, strict=True) if p is not None]
    roc = auroc([y for y, _ in with_p], [p for _, p in with_p]) if with_p else None
    return Score(
        method=method,
        balanced_accuracy=round(ba, 4) if ba is not None else None,
        auroc=round(roc, 4) if roc is not None else None,
        tpr=round(tpr, 4) if tpr is not None else None,
        tnr=round(tnr, 4) if tnr is not None else None,
        n_positive=sum(ys),
        n_negative=len(ys) - sum(ys),
        unparsed=len(labels) - len(parsed),
        ci95=bootstrap_ci(ys, vs, seed),
    )
