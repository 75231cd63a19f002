"""Which verifier model? Grouped 5-fold CV (by post) of candidate models on human-judged intentions.

    python -m bench.verifier_study --data ../shared/data/verifier_dev.jsonl [--llm-features FILE.npz]

Prints one row per candidate: grouped-CV AUROC (mean over seeds of the fold split) and its spread. MiniLM
features are computed once (cached with --cache). ``--llm-features`` adds SmolLM2 candidates from a file made by
``bench/verifier_llm_features.py`` (layer-20 mean-pooled hidden states of the intention given the post, and the
intention's mean log-probability with and without the post).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graph.verifier.artifact import load_encoder
from graph.verifier.features import FeatureExtractor
from graph.verifier.head import fit_linear_head
from graph.verifier.items import completion, groups_of, read_labelled
from graph.verifier.metrics import auroc
from graph.verifier.training import grouped_folds

Fit = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def linear(c: float) -> Fit:
    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return fit_linear_head(x, y, c).predict

    return fit


def boosted(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40)
    model.fit(x, y)
    return lambda z: model.predict_proba(z)[:, 1]


def cv_scores(features: np.ndarray, labels: np.ndarray, groups: list[int], fit: Fit, seed: int) -> np.ndarray:
    scores = np.zeros(len(labels))
    for test in grouped_folds(groups, 5, seed):
        train = np.setdiff1d(np.arange(len(labels)), test)
        scores[test] = fit(features[train], labels[train])(features[test])
    return scores


def knn_scores(v: np.ndarray, labels: np.ndarray, groups: list[int], relations: np.ndarray, seed: int, k: int = 30):
    """Accept rate of the k most similar intentions of the same relation in the training folds (other posts)."""
    out = np.zeros(len(labels))
    for test in grouped_folds(groups, 5, seed):
        train = np.setdiff1d(np.arange(len(labels)), test)
        sims = v[test] @ v[train].T
        sims[relations[test][:, None] != relations[train][None, :]] = -2
        nearest = np.argsort(-sims, axis=1)[:, :k]
        out[test] = labels[train][nearest].mean(axis=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/verifier_study_features.npz"))
    parser.add_argument("--llm-features", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    items = read_labelled(args.data)
    labels = np.array([x.label for x in items])
    groups = groups_of([x.item for x in items])
    relations = np.array([x.item.relation.value for x in items])
    started = time.perf_counter()
    if args.cache.is_file():
        cached = np.load(args.cache)
        context, u, v = cached["context"], cached["u"], cached["v"]
    else:
        encoder = load_encoder("all-MiniLM-L6-v2")
        feature_set = FeatureExtractor(encoder)([x.item for x in items])
        context = feature_set.select(["relation", "similarity", "lexical"])
        u = encoder.encode([x.item.post_text for x in items])
        v = encoder.encode([completion(x.item.relation, x.item.intention) for x in items])
        np.savez(args.cache, context=context, u=u, v=v)
    print(f"features: {time.perf_counter() - started:.0f}s, load {os.getloadavg()[0]:.1f}", flush=True)
    one_hot = context[:, :10]
    length = np.log1p([len(completion(x.item.relation, x.item.intention).split()) for x in items])[:, None]
    frozen = np.hstack([u, v, u * v, np.abs(u - v), one_hot, length])
    candidates: dict[str, Callable[[int], np.ndarray]] = {
        "relation prior": lambda s: cv_scores(one_hot, labels, groups, linear(1.0), s),
        "MiniLM cosine(post, intention)": lambda s: np.einsum("ij,ij->i", u, v),
        "LR frozen MiniLM [u,v,u*v,|u-v|,rel,len]": lambda s: cv_scores(frozen, labels, groups, linear(0.001), s),
        "LR context features (rel+sim+lex)": lambda s: cv_scores(context, labels, groups, linear(0.003), s),
        "HGB context features": lambda s: cv_scores(context, labels, groups, boosted, s),
        "kNN accept rate (k=30, same relation)": lambda s: knn_scores(v, labels, groups, relations, s),
        "LR context + kNN": lambda s: cv_scores(
            np.hstack([context, knn_scores(v, labels, groups, relations, s)[:, None]]), labels, groups, linear(0.003), s
        ),
    }
    if args.llm_features:
        llm = np.load(args.llm_features)
        hidden, pmi = llm["H"], (llm["lpc"] - llm["lpu"])[:, None]
        lik = np.column_stack([llm["lpc"], llm["lpu"], pmi[:, 0]])
        candidates |= {
            "SmolLM2 log p(intention | post)": lambda s: llm["lpc"],
            "SmolLM2 PMI log p(i|post) - log p(i)": lambda s: pmi[:, 0],
            "LR SmolLM2 layer-20 mean-pooled": lambda s: cv_scores(hidden, labels, groups, linear(0.001), s),
            "LR context + SmolLM2 likelihoods": lambda s: cv_scores(
                np.hstack([context, lik]), labels, groups, linear(0.003), s
            ),
            "avg(LR context, LR SmolLM2 layer-20)": lambda s: (
                _rank(cv_scores(context, labels, groups, linear(0.003), s))
                + _rank(cv_scores(hidden, labels, groups, linear(0.001), s))
            ),
            "LR context + SmolLM2 layer-20 + likelihoods": lambda s: cv_scores(
                np.hstack([context, lik, hidden]), labels, groups, linear(0.001), s
            ),
        }
    print(f"{'candidate':48s} {'AUROC':>7s} {'±':>6s}  seconds  (grouped 5-fold CV, {args.seeds} fold seeds)")
    for name, run in candidates.items():
        t0 = time.perf_counter()
        values = [auroc(labels, run(seed)) for seed in range(args.seeds)]
        print(f"{name:48s} {np.mean(values):7.4f} {np.std(values):6.4f}  {time.perf_counter() - t0:7.1f}", flush=True)
    print(f"load average {os.getloadavg()}")


def _rank(scores: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(scores)) / len(scores)


if __name__ == "__main__":
    main()
