"""How well scores separate what humans accepted (1) from what they rejected (0).

Written out in numpy rather than taken from scikit-learn so that the service needs no training library, and so
that tests can check every figure against values computed by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VerifierMetrics:
    """Figures of one evaluation; ``rejection_*`` treat a human rejection as the positive class."""

    n: int
    accept_rate_human: float
    accept_rate: float
    auroc: float
    accuracy: float
    f1: float
    precision_accepted: float
    rejection_precision: float
    rejection_recall: float
    ece: float
    auroc_by_relation: dict[str, float]


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties counted half."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Mean |accept rate - mean score| over equal-width score bins, weighted by the bins' sizes."""
    y, s = np.asarray(labels, dtype=float), np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    which = np.minimum((s * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(y[members].mean() - s[members].mean())
    return float(total / len(y))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def evaluate(
    labels: Sequence[int], scores: Sequence[float], accepted: Sequence[bool], relations: Sequence[str]
) -> VerifierMetrics:
    """All figures for ``scores`` and the accept decisions taken from them (thresholds applied by the caller)."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    a = np.asarray(accepted, dtype=bool)
    true_accept = int((a & (y == 1)).sum())
    true_reject = int((~a & (y == 0)).sum())
    precision = _ratio(true_accept, a.sum())
    recall = _ratio(true_accept, (y == 1).sum())
    names = np.asarray(relations)
    return VerifierMetrics(
        n=len(y),
        accept_rate_human=float(y.mean()),
        accept_rate=float(a.mean()),
        auroc=auroc(y, s),
        accuracy=float((a == (y == 1)).mean()),
        f1=_ratio(2 * precision * recall, precision + recall),
        precision_accepted=precision,
        rejection_precision=_ratio(true_reject, (~a).sum()),
        rejection_recall=_ratio(true_reject, (y == 0).sum()),
        ece=expected_calibration_error(y, s),
        auroc_by_relation={name: auroc(y[names == name], s[names == name]) for name in dict.fromkeys(relations)},
    )
