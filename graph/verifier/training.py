"""Training the learned verifier from human judgements, with model choice and thresholds by grouped CV.

Grouped by post: the ten intentions of a post share most of their signal (labels cluster by post), so a post
is never in both the training and the test folds, or the figures would flatter the model. The regularisation
strength is chosen on the same folds (a small grid, so the optimism this adds is small; the model card says so).
Thresholds per relation maximise balanced accuracy (mean of the recall of human-accepted and of human-rejected
intentions) on the out-of-fold scores: a rejection should be as informative as an acceptance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from graph.contracts import Relation
from graph.verifier.features import FEATURE_GROUPS, FeatureExtractor
from graph.verifier.head import LinearHead, fit_linear_head, logit
from graph.verifier.items import LabelledItem, groups_of
from graph.verifier.metrics import VerifierMetrics, evaluate

Progress = Callable[[str, int, int], None]
"""progress(step description, done, total)"""


def _quiet(_: str, __: int, ___: int) -> None:
    return None


@dataclass(frozen=True)
class TrainConfig:
    folds: int = 5
    seed: int = 0
    c_grid: tuple[float, ...] = (0.003, 0.01, 0.03)
    feature_groups: tuple[str, ...] = ("relation", "similarity", "lexical")


@dataclass
class CrossValidation:
    """Out-of-fold scores for every item and the figures they give."""

    scores: np.ndarray
    labels: np.ndarray
    relations: list[str]
    c: float
    auroc_by_c: dict[float, float] = field(default_factory=dict)


@dataclass
class TrainedVerifier:
    head: LinearHead
    thresholds: dict[str, float]
    cv: CrossValidation
    metrics: VerifierMetrics


def grouped_folds(groups: Sequence[int], k: int, seed: int) -> list[np.ndarray]:
    """Test-index arrays of ``k`` folds; every group (post) falls in exactly one fold."""
    unique = np.unique(groups)
    if len(unique) < k:
        raise ValueError(f"{len(unique)} posts cannot make {k} folds; use fewer folds (--cv) or more data")
    order = np.random.default_rng(seed).permutation(unique)
    fold_of = {group: index % k for index, group in enumerate(order)}
    assignment = np.array([fold_of[group] for group in groups])
    return [np.flatnonzero(assignment == fold) for fold in range(k)]


def out_of_fold(features: np.ndarray, labels: np.ndarray, folds: list[np.ndarray], c: float, seed: int) -> np.ndarray:
    scores = np.zeros(len(labels))
    for test in folds:
        train = np.setdiff1d(np.arange(len(labels)), test)
        scores[test] = fit_linear_head(features[train], labels[train], c, seed).predict(features[test])
    return scores


def balanced_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The cut maximising balanced accuracy; ties go to the lower cut (accept more)."""
    if labels.min() == labels.max():
        return 0.0
    best, best_value = 0.0, -1.0
    for cut in np.unique(scores):
        accepted = scores >= cut
        value = (accepted[labels == 1].mean() + (~accepted[labels == 0]).mean()) / 2
        if value > best_value + 1e-12:
            best, best_value = float(cut), value
    return best


def relation_thresholds(labels: np.ndarray, scores: np.ndarray, relations: Sequence[str]) -> dict[str, float]:
    names = np.asarray(relations)
    thresholds = {}
    for relation in Relation:
        rows = names == relation.value
        if rows.any():
            thresholds[relation.value] = round(balanced_threshold(labels[rows], scores[rows]), 6)
    return thresholds


def apply_thresholds(scores: np.ndarray, relations: Sequence[str], thresholds: dict[str, float]) -> np.ndarray:
    return np.array([s >= thresholds.get(r, 0.5) for s, r in zip(scores, relations, strict=True)])


def train_verifier(
    items: Sequence[LabelledItem],
    extractor: FeatureExtractor,
    config: TrainConfig = TrainConfig(),
    progress: Progress = _quiet,
) -> TrainedVerifier:
    """Features once, grouped CV over the C grid, thresholds on the out-of-fold scores, then the final fit."""
    unknown = set(config.feature_groups) - set(FEATURE_GROUPS)
    if unknown:
        raise ValueError(f"unknown feature groups {sorted(unknown)}; known: {FEATURE_GROUPS}")
    progress("features", 0, 1)
    features = extractor([item.item for item in items]).select(config.feature_groups)
    progress("features", 1, 1)
    labels = np.array([item.label for item in items])
    if labels.min() == labels.max():
        raise ValueError("training data needs both accepted (1) and rejected (0) intentions")
    relations = [item.item.relation.value for item in items]
    folds = grouped_folds(groups_of([item.item for item in items]), config.folds, config.seed)
    by_c: dict[float, np.ndarray] = {}
    for step, c in enumerate(config.c_grid):
        progress(f"grouped {config.folds}-fold CV, C={c}", step, len(config.c_grid))
        by_c[c] = out_of_fold(features, labels, folds, c, config.seed)
    progress("grouped CV", len(config.c_grid), len(config.c_grid))
    auroc_by_c = {c: evaluate(labels, s, s >= 0.5, relations).auroc for c, s in by_c.items()}
    best_c = max(auroc_by_c, key=lambda c: auroc_by_c[c])
    scores = by_c[best_c]
    thresholds = relation_thresholds(labels, scores, relations)
    metrics = evaluate(labels, scores, apply_thresholds(scores, relations, thresholds), relations)
    progress("final fit", 0, 1)
    head = fit_linear_head(features, labels, best_c, config.seed)
    progress("final fit", 1, 1)
    cv = CrossValidation(scores=scores, labels=labels, relations=relations, c=best_c, auroc_by_c=auroc_by_c)
    return TrainedVerifier(head=head, thresholds=thresholds, cv=cv, metrics=metrics)


def fit_hybrid(
    learned: np.ndarray, llm: np.ndarray, labels: np.ndarray, groups: Sequence[int], folds: int, seed: int
) -> tuple[tuple[float, float, float], np.ndarray]:
    """Weights of logit(learned) and logit(P(yes)), plus out-of-fold hybrid scores on the same grouped folds."""
    combined = np.column_stack([logit(learned), logit(llm)])
    scores = np.zeros(len(labels))
    for test in grouped_folds(groups, folds, seed):
        train = np.setdiff1d(np.arange(len(labels)), test)
        scores[test] = _two_weight_fit(combined[train], labels[train]).predict(combined[test])
    head = _two_weight_fit(combined, labels)
    return (float(head.coef[0] / head.scale[0]), float(head.coef[1] / head.scale[1]), _raw_bias(head)), scores


def _two_weight_fit(features: np.ndarray, labels: np.ndarray) -> LinearHead:
    return fit_linear_head(features, labels, c=1.0)


def _raw_bias(head: LinearHead) -> float:
    return float(head.intercept - np.sum(head.coef * head.mean / head.scale))
