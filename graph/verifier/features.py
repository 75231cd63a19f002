"""Features of an intention in the light of its post and of the post's other intentions.

Annotators judged each intention next to the post (and its image) and next to the nine others generated for it.
So besides sentence-embedding features of (post, intention), every item gets context features: how it sits
among its siblings (similar to the rest, a near-duplicate, an outlier), how much it copies the post, and how
grounded the whole set is in the post's text (sets far from the text were written about the image, which the
text alone cannot confirm). Every feature is computed from text with MiniLM on the CPU, no LLM.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from graph.contracts import Relation
from graph.normalize import normalize_text
from graph.verifier.items import VerifierItem, completion, groups_of

RELATIONS = tuple(Relation)
_WORD = re.compile(r"[a-z][a-z']+")
_STOP = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "at",
        "by",
        "from",
        "this",
        "that",
        "these",
        "those",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "their",
        "they",
        "them",
        "it",
        "its",
        "as",
        "into",
        "about",
        "user",
        "users",
        "others",
        "other",
        "post",
        "posts",
        "posting",
        "posted",
        "tweet",
        "will",
        "want",
        "wants",
        "feel",
        "feels",
    ]
)
FEATURE_GROUPS = ("relation", "similarity", "lexical", "embedding")


class TextEncoder(Protocol):
    """Texts -> L2-normalised float32 rows (index.embeddings' embedders satisfy it)."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class FeatureSet:
    """Feature matrix for items, with the name of each column's group (so studies can drop groups)."""

    matrix: np.ndarray
    groups: tuple[str, ...]

    def select(self, groups: Sequence[str]) -> np.ndarray:
        keep = np.array([group in groups for group in self.groups])
        return self.matrix[:, keep]


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _copied(body: str, post: str) -> float:
    """Longest run of the intention's words found verbatim in the post, as a share of the intention."""
    words, post_words = body.lower().split(), " " + " ".join(post.lower().split()) + " "
    best = 0
    for start in range(len(words)):
        for end in range(start + best + 1, len(words) + 1):
            if " " + " ".join(words[start:end]) + " " not in post_words:
                break
            best = end - start
    return best / max(1, len(words))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def lexical_features(post: str, body: str, sibling_words: Sequence[set[str]]) -> list[float]:
    words, post_words = set(_words(body)), set(_words(post))
    n_body = len(body.split())
    return [
        np.log1p(n_body),
        float(n_body <= 2),
        np.log1p(len(post.split())),
        np.log1p(len(post_words)),
        len(words & post_words) / max(1, len(words)),
        _copied(body, post),
        max((_jaccard(words, other) for other in sibling_words), default=0.0),
        float(post.count("@user")) / max(1, len(post.split())),
    ]


class FeatureExtractor:
    """Turns items into a :class:`FeatureSet` with one sentence encoder (MiniLM by default)."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder

    def __call__(self, items: Sequence[VerifierItem]) -> FeatureSet:
        posts = [normalize_text(item.post_text) for item in items]
        bodies = [completion(item.relation, item.intention) for item in items]
        unique_posts = sorted(set(posts))
        post_vectors = self.encoder.encode(unique_posts)
        u = post_vectors[[unique_posts.index(p) for p in posts]] if items else post_vectors
        v = self.encoder.encode(bodies)
        groups = np.array(groups_of(items))
        parts = [
            ("relation", _one_hot([item.relation for item in items])),
            ("similarity", _similarity(u, v, groups)),
            ("lexical", _lexical(posts, bodies, groups)),
            ("embedding", np.hstack([u * v, np.abs(u - v), v])),
        ]
        matrix = np.hstack([block for _, block in parts]).astype(np.float32)
        names = tuple(name for name, block in parts for _ in range(block.shape[1]))
        return FeatureSet(matrix, names)


def _one_hot(relations: Sequence[Relation]) -> np.ndarray:
    out = np.zeros((len(relations), len(RELATIONS)), dtype=np.float32)
    for row, relation in enumerate(relations):
        out[row, RELATIONS.index(relation)] = 1.0
    return out


def _similarity(u: np.ndarray, v: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Cosine to the post, and where the intention stands among its post's intentions."""
    cosine = np.einsum("ij,ij->i", u, v)
    out = np.zeros((len(v), 8), dtype=np.float32)
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        sims = v[rows] @ v[rows].T
        np.fill_diagonal(sims, np.nan)
        others = np.nan_to_num(np.nanmean(sims, axis=1)) if len(rows) > 1 else np.zeros(len(rows))
        nearest = np.nan_to_num(np.nanmax(sims, axis=1)) if len(rows) > 1 else np.zeros(len(rows))
        centroid = v[rows].mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-6)
        post_cos = cosine[rows]
        spread = post_cos.std() + 1e-3
        out[rows] = np.column_stack(
            [
                post_cos,
                others,
                nearest,
                v[rows] @ centroid,
                (post_cos - post_cos.mean()) / spread,
                np.full(len(rows), post_cos.mean()),
                np.full(len(rows), others.mean()),
                np.full(len(rows), len(rows) / len(RELATIONS)),
            ]
        )
    return out


def _lexical(posts: Sequence[str], bodies: Sequence[str], groups: np.ndarray) -> np.ndarray:
    word_sets = [set(_words(body)) for body in bodies]
    rows = []
    for index, (post, body) in enumerate(zip(posts, bodies, strict=True)):
        siblings = [word_sets[j] for j in np.flatnonzero(groups == groups[index]) if j != index]
        rows.append(lexical_features(post, body, siblings))
    return np.asarray(rows, dtype=np.float32).reshape(len(bodies), -1)
