"""The metrics MIKO reports for its sarcasm students: ROC-AUC, PR-AUC, accuracy, F1, precision, recall."""

from __future__ import annotations

import math
from collections.abc import Sequence


def classification_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """Ranking metrics from the scores; the others at ``threshold``. AUCs are NaN when only one class is present."""
    from sklearn.metrics import accuracy_score, average_precision_score, precision_recall_fscore_support, roc_auc_score

    predicted = [int(score >= threshold) for score in scores]
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="binary", pos_label=1, zero_division=0
    )
    both = len(set(labels)) == 2
    return {
        "roc_auc": float(roc_auc_score(labels, scores)) if both else math.nan,
        "pr_auc": float(average_precision_score(labels, scores)) if both else math.nan,
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "positives": float(sum(labels)),
        "n": float(len(labels)),
    }


def summary_line(metrics: dict[str, float]) -> str:
    """The last line of `distill sarcasm`: ``f1=<x> roc_auc=<y> pr_auc=<z>``."""
    return f"f1={metrics['f1']:.4f} roc_auc={metrics['roc_auc']:.4f} pr_auc={metrics['pr_auc']:.4f}"
