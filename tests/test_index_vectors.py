"""FAISS wrappers: stable ids, add/remove/search for Flat and HNSW, HNSW tombstones, delta and compaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index.embeddings import normalize_rows
from index.vectors import HnswVectors, VectorIndexConfig, create_vector_index, load_vector_index, vector_id

DIM = 32


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    return normalize_rows(np.random.default_rng(seed).standard_normal((n, DIM)))


def test_vector_id_is_stable_63_bit_and_distinct_per_relation() -> None:
    first = vector_id("post-1", "xIntent")
    assert first == vector_id("post-1", "xIntent")
    assert 0 <= first < 2**63
    assert len({first, vector_id("post-1", "xWant"), vector_id("post-2", "xIntent")}) == 3
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert vector_id("ab", "c") != vector_id("a", "bc")
    assert first == 6515463706206726536  # pinned: ids live in snapshots, so they must never change


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_add_search_remove_readd_save_load(kind: str, tmp_path: Path) -> None:
    config = VectorIndexConfig(kind=kind)  # type: ignore[arg-type]
    vectors = create_vector_index(DIM, config)
    data = unit_vectors(200)
    ids = np.arange(1, 201, dtype=np.int64) * 7919
    vectors.add(ids, data)
    assert len(vectors) == 200
    _, found = vectors.search(data[:5], 1)
    assert list(found[:, 0]) == list(ids[:5])

    vectors.remove(ids[:3])
    assert len(vectors) == 197
    _, found = vectors.search(data[:3], 10)
    assert not set(found.ravel()) & set(ids[:3])

    # Re-adding a removed id with a new vector: the new vector is found, the old one is not.
    replacement = unit_vectors(1, seed=1)
    vectors.add(ids[:1], replacement)
    assert len(vectors) == 198
    scores, found = vectors.search(replacement, 1)
    assert found[0, 0] == ids[0] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(vectors.reconstruct(ids[:1]), replacement, atol=1e-6)
    scores, found = vectors.search(data[:1], 1)
    assert not (found[0, 0] == ids[0] and scores[0, 0] > 0.99), "the replaced vector is still searchable"

    vectors.save(tmp_path)
    loaded = load_vector_index(tmp_path, kind, DIM, config)  # type: ignore[arg-type]
    assert len(loaded) == 198
    assert np.array_equal(loaded.search(data[10:20], 5)[1], vectors.search(data[10:20], 5)[1])


def test_hnsw_compaction_drops_tombstones_and_folds_the_delta() -> None:
    config = VectorIndexConfig(kind="hnsw", compact_ratio=0.2, compact_min=10)
    vectors = HnswVectors(DIM, config)
    data = unit_vectors(100)
    ids = np.arange(100, dtype=np.int64) + 10
    vectors.add(ids, data)
    vectors.remove(ids[:30])
    replacement = unit_vectors(5, seed=2)
    vectors.add(ids[:5], replacement)  # into the delta: their graph nodes are dead
    assert vectors.tombstones == 30 and len(vectors) == 75
    assert vectors.needs_compaction()

    compacted = vectors.compacted()
    assert compacted.tombstones == 0 and len(compacted) == 75
    assert not compacted.needs_compaction()
    _, found = compacted.search(replacement, 1)
    assert list(found[:, 0]) == list(ids[:5])
    _, found = compacted.search(data[5:30], 5)
    assert not set(found.ravel()) & set(ids[5:30])


def test_flat_search_pads_with_minus_one_when_k_exceeds_size() -> None:
    vectors = create_vector_index(DIM, VectorIndexConfig())
    vectors.add(np.array([1, 2], dtype=np.int64), unit_vectors(2))
    _, found = vectors.search(unit_vectors(1, seed=3), 4)
    assert sorted(found[0][:2]) == [1, 2] and list(found[0][2:]) == [-1, -1]
