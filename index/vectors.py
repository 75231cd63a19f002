"""FAISS indexes keyed by stable 63-bit ids: exact Flat, and HNSW for large indexes (README, "Flat or HNSW").

Both wrap the real index in ``IndexIDMap2`` over inner product on unit vectors, so scores are cosine
similarities and vectors can be reconstructed by id. Callers (the store) know from their metadata which ids
are live: ``add`` is only called for absent ids and ``remove`` for present ones, which keeps every operation
proportional to the batch, not to the index.

HNSW graphs cannot delete nodes (faiss raises on ``remove_ids``). The HNSW variant therefore keeps a tombstone
set for ids whose node in the graph is dead, filtered during the graph search with an ``IDSelector``, and puts
re-added ids into a small exact *delta* index. When tombstones exceed ``compact_ratio`` of the graph, the
graph is rebuilt from the live vectors (``compacted``). See docs/index.md for the trade-off.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import faiss
import numpy as np

IndexKind = Literal["flat", "hnsw"]
ID_MASK = (1 << 63) - 1


def vector_id(post_id: str, relation: str) -> int:
    """Stable, non-negative 63-bit id of the one vector a (post, relation) pair has (FAISS ids are int64)."""
    digest = hashlib.blake2b(f"{post_id}\x1f{relation}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ID_MASK


@dataclass(frozen=True)
class VectorIndexConfig:
    """Which FAISS index to build. HNSW: ``m`` links per node, ``ef_*`` beam widths (recall vs. speed)."""

    kind: IndexKind | None = None  # None: keep the kind of an existing index, flat for a new one
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 256
    compact_ratio: float = 0.2
    compact_min: int = 1000
    search_threads: int = 1  # FAISS threads per search; 0 = all cores (see docs/index.md)


class VectorIndex(Protocol):
    kind: IndexKind
    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def reconstruct(self, ids: np.ndarray) -> np.ndarray: ...

    def needs_compaction(self) -> bool: ...

    def compacted(self) -> VectorIndex: ...

    def save(self, directory: Path) -> list[str]: ...


def _ids(ids: np.ndarray | list[int]) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64)


def _rows(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _flat(dim: int) -> faiss.IndexIDMap2:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _limit_threads(threads: int) -> None:
    """OpenMP thread count for the *calling* thread only (libgomp keeps it per thread): API searches run
    single-threaded side by side, while the writer's adds and rebuilds keep every core."""
    if threads > 0:
        faiss.omp_set_num_threads(threads)


def _map_arrays(index: faiss.IndexIDMap2) -> tuple[np.ndarray, np.ndarray]:
    """All (ids, vectors) held by an IndexIDMap2 whose inner index stores full vectors."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if not len(ids):
        return ids, np.zeros((0, index.d), dtype=np.float32)
    return ids, faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)


class FlatVectors:
    """Exact search (``IndexFlatIP``): a full scan per query, supports remove; for up to ~1M vectors."""

    kind: IndexKind = "flat"
    FILE = "flat.faiss"

    def __init__(self, dim: int, index: faiss.IndexIDMap2 | None = None, search_threads: int = 1) -> None:
        self.dim = dim
        self.search_threads = search_threads
        self._index = index if index is not None else _flat(dim)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(_rows(vectors), _ids(ids))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self._index.remove_ids(_ids(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _limit_threads(self.search_threads)
        return self._index.search(_rows(queries), k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(_ids(ids))

    def needs_compaction(self) -> bool:
        return False

    def compacted(self) -> FlatVectors:
        """Nothing to do: removal from a flat index is immediate."""
        return self

    def save(self, directory: Path) -> list[str]:
        faiss.write_index(self._index, str(directory / self.FILE))
        return [self.FILE]

    @classmethod
    def load(cls, directory: Path, dim: int, search_threads: int = 1) -> FlatVectors:
        return cls(dim, faiss.read_index(str(directory / cls.FILE)), search_threads)


class HnswVectors:
    """Approximate search over an HNSW graph + tombstones + an exact delta index for re-added ids."""

    kind: IndexKind = "hnsw"
    MAIN, DELTA, TOMBSTONES = "hnsw.faiss", "delta.faiss", "tombstones.npy"

    def __init__(
        self,
        dim: int,
        config: VectorIndexConfig,
        main: faiss.IndexIDMap2 | None = None,
        delta: faiss.IndexIDMap2 | None = None,
        tombstones: set[int] | None = None,
    ) -> None:
        self.dim = dim
        self.config = config
        self._main = main if main is not None else self._new_main()
        self._delta = delta if delta is not None else _flat(dim)
        self._delta_ids = {int(i) for i in faiss.vector_to_array(self._delta.id_map)}
        self._tombstones = tombstones or set()
        self._selector: tuple[faiss.IDSelector, ...] | None = None
        self._refresh_selector()

    def _new_main(self) -> faiss.IndexIDMap2:
        graph = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.config.hnsw_ef_construction
        return faiss.IndexIDMap2(graph)

    def __len__(self) -> int:
        return int(self._main.ntotal) - len(self._tombstones) + int(self._delta.ntotal)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = _ids(ids), _rows(vectors)
        to_delta = np.fromiter((int(i) in self._tombstones for i in ids), dtype=bool, count=len(ids))
        if (~to_delta).any():
            self._main.add_with_ids(vectors[~to_delta], ids[~to_delta])
        if to_delta.any():
            self._delta.add_with_ids(vectors[to_delta], ids[to_delta])
            self._delta_ids.update(int(i) for i in ids[to_delta])

    def remove(self, ids: np.ndarray) -> None:
        in_delta = [int(i) for i in ids if int(i) in self._delta_ids]
        if in_delta:
            self._delta.remove_ids(_ids(in_delta))
            self._delta_ids.difference_update(in_delta)
        dead = {int(i) for i in ids} - set(in_delta)
        if dead:
            self._tombstones |= dead
            self._refresh_selector()

    def _refresh_selector(self) -> None:
        """Rebuilt by the writer, so concurrent searches only ever read a finished selector."""
        if not self._tombstones:
            self._selector = None
            return
        batch = faiss.IDSelectorBatch(_ids(sorted(self._tombstones)))
        self._selector = (faiss.IDSelectorNot(batch), batch)

    def _params(self, k: int) -> tuple[faiss.SearchParametersHNSW, object]:
        params = faiss.SearchParametersHNSW(efSearch=max(self.config.hnsw_ef_search, k))
        selector = self._selector
        if selector is not None:
            params.sel = selector[0]
        return params, selector

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _rows(queries)
        _limit_threads(self.config.search_threads)
        params, _alive = self._params(k)  # _alive keeps the selector objects referenced during the call
        scores, ids = self._main.search(queries, k, params=params)
        if not self._delta.ntotal:
            return scores, ids
        delta_scores, delta_ids = self._delta.search(queries, k)
        scores, ids = np.hstack([scores, delta_scores]), np.hstack([ids, delta_ids])
        scores = np.where(ids < 0, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for row, vid in enumerate(_ids(ids)):
            source = self._delta if int(vid) in self._delta_ids else self._main
            out[row] = source.reconstruct(int(vid))
        return out

    def needs_compaction(self) -> bool:
        dead = len(self._tombstones)
        return dead >= self.config.compact_min and dead > self.config.compact_ratio * self._main.ntotal

    def compacted(self) -> HnswVectors:
        """A new graph of the live vectors only, delta folded in (O(n log n)).

        Only reads ``self``, so searches go on while it is built.
        """
        ids, vectors = _map_arrays(self._main)
        keep = ~np.isin(ids, _ids(sorted(self._tombstones)))
        delta_ids, delta_vectors = _map_arrays(self._delta)
        fresh = HnswVectors(self.dim, self.config)
        fresh.add(np.concatenate([ids[keep], delta_ids]), np.vstack([vectors[keep], delta_vectors]))
        return fresh

    def save(self, directory: Path) -> list[str]:
        faiss.write_index(self._main, str(directory / self.MAIN))
        faiss.write_index(self._delta, str(directory / self.DELTA))
        np.save(directory / self.TOMBSTONES, _ids(sorted(self._tombstones)))
        return [self.MAIN, self.DELTA, self.TOMBSTONES]

    @classmethod
    def load(cls, directory: Path, dim: int, config: VectorIndexConfig) -> HnswVectors:
        main = faiss.read_index(str(directory / cls.MAIN))
        delta = faiss.read_index(str(directory / cls.DELTA))
        tombstones = {int(i) for i in np.load(directory / cls.TOMBSTONES)}
        return cls(dim, config, main=main, delta=delta, tombstones=tombstones)


def create_vector_index(dim: int, config: VectorIndexConfig) -> VectorIndex:
    return HnswVectors(dim, config) if config.kind == "hnsw" else FlatVectors(dim, search_threads=config.search_threads)


def load_vector_index(directory: Path, kind: IndexKind, dim: int, config: VectorIndexConfig) -> VectorIndex:
    """Load what ``save`` wrote; ``kind`` comes from the snapshot manifest."""
    if kind == "hnsw":
        return HnswVectors.load(directory, dim, config)
    return FlatVectors.load(directory, dim, config.search_threads)
