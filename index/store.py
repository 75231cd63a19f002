"""The intention store: FAISS vectors + SQLite metadata + the consumer's checkpoint, changed and saved as one.

One writer (the indexer) calls ``plan``/``apply``/``snapshot``; any number of threads search concurrently.
A readers-writer lock makes every search see a consistent (vectors, metadata) pair. ``apply`` is the only
mutation and replaces whole posts: a post's vectors after an event are exactly its verified intentions, one
per relation, keyed by ``vector_id(post_id, relation)``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from index.metadata import MetadataDB
from index.records import Hit, IntentionDoc, IntentionRef, PostDoc
from index.snapshot import Snapshot, SnapshotDir
from index.vectors import (
    IndexKind,
    VectorIndex,
    VectorIndexConfig,
    create_vector_index,
    load_vector_index,
    vector_id,
)

log = structlog.get_logger(__name__)

METADATA_FILE = "metadata.db"
CHECKPOINT_FILE = "checkpoint.json"
VECTORS_PER_RELATION_GUESS = 10  # ten relations: a relation filter keeps about a tenth of the candidates

Changes = Mapping[str, PostDoc | None]  # post_id -> its new state, or None to delete it


class IndexMismatchError(RuntimeError):
    """The snapshot on disk was built with another embedding model or index kind than the one configured."""


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers so indexing cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def unique_relations(doc: PostDoc) -> PostDoc:
    """At most one intention per relation (the first), since (post, relation) is the vector's identity."""
    seen: dict[str, IntentionDoc] = {}
    for item in doc.intentions:
        seen.setdefault(item.relation, item)
    if len(seen) == len(doc.intentions):
        return doc
    return PostDoc(doc.post_id, doc.text, doc.document, tuple(seen.values()))


@dataclass
class _Diff:
    remove: list[int] = field(default_factory=list)
    add: list[int] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)


class IntentionStore:
    """Vectors, metadata and checkpoint of one index; the module docstring gives the concurrency contract."""

    def __init__(
        self,
        *,
        dim: int,
        embedding_model: str,
        config: VectorIndexConfig,
        vectors: VectorIndex | None = None,
        metadata: MetadataDB | None = None,
        checkpoint: dict[str, Any] | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.dim = dim
        self.embedding_model = embedding_model
        self.config = config
        self._vectors = vectors if vectors is not None else create_vector_index(dim, config)
        self._metadata = metadata or MetadataDB()
        self.checkpoint: dict[str, Any] = checkpoint or {}
        self.saved_checkpoint: dict[str, Any] = dict(self.checkpoint)  # the checkpoint in the last snapshot
        self.last_snapshot = snapshot
        self._lock = RWLock()

    @property
    def kind(self) -> IndexKind:
        return self._vectors.kind

    # loading and saving ------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, root: Path, *, dim: int, embedding_model: str, config: VectorIndexConfig | None = None
    ) -> IntentionStore:
        """The newest complete snapshot under ``root``, or an empty store if there is none."""
        config = config or VectorIndexConfig()
        snapshot = SnapshotDir(root).latest()
        if snapshot is None:
            return cls(dim=dim, embedding_model=embedding_model, config=config)
        manifest = snapshot.manifest
        built = (manifest.get("embedding_model"), manifest.get("dim"))
        if built != (embedding_model, dim):
            raise IndexMismatchError(
                f"the index in {root} was built with embedding model {built[0]!r} ({built[1]}-d), not "
                f"{embedding_model!r} ({dim}-d): use --embedding-model {built[0]} "
                "or run `miko-stream index rebuild`"
            )
        kind = manifest.get("kind", "flat")
        if config.kind not in (None, kind):
            raise IndexMismatchError(
                f"the index in {root} is {kind!r}, not {config.kind!r}: omit --index-kind, or run "
                f"`miko-stream index rebuild --index-kind {config.kind}`"
            )
        vectors = load_vector_index(snapshot.path, kind, dim, config)
        metadata = MetadataDB.load(snapshot.path / METADATA_FILE)
        checkpoint = json.loads((snapshot.path / CHECKPOINT_FILE).read_text())
        log.info("index_loaded", root=str(root), seq=snapshot.seq, kind=kind, vectors=len(vectors))
        return cls(
            dim=dim,
            embedding_model=embedding_model,
            config=config,
            vectors=vectors,
            metadata=metadata,
            checkpoint=checkpoint,
            snapshot=snapshot,
        )

    def snapshot(self, directory: SnapshotDir) -> Snapshot:
        """Write vectors + metadata + checkpoint as one atomic snapshot (searches continue meanwhile)."""

        def fill(tmp: Path) -> dict[str, Any]:
            self._vectors.save(tmp)
            self._metadata.backup_to(tmp / METADATA_FILE)
            (tmp / CHECKPOINT_FILE).write_text(json.dumps(self.checkpoint, sort_keys=True))
            posts, intentions = self._metadata.counts()
            return {
                "kind": self.kind,
                "dim": self.dim,
                "embedding_model": self.embedding_model,
                "vectors": len(self._vectors),
                "posts": posts,
                "intentions": intentions,
            }

        with self._lock.read():
            checkpoint = dict(self.checkpoint)
            self.last_snapshot = directory.write(fill)
            self.saved_checkpoint = checkpoint
        return self.last_snapshot

    @property
    def dirty(self) -> bool:
        """Something was applied since the last snapshot."""
        return self.checkpoint != self.saved_checkpoint

    # writing (single writer) -------------------------------------------------------------------------------

    def _diff(self, changes: Changes) -> _Diff:
        old = self._metadata.intentions_of(changes)
        diff = _Diff()
        for post_id, doc in changes.items():
            before = old.get(post_id, {})
            after = {vector_id(post_id, item.relation): item.text for item in doc.intentions} if doc else {}
            diff.remove.extend(vid for vid, (_, text) in before.items() if after.get(vid) != text)
            for vid, text in after.items():
                if before.get(vid, (None, None))[1] != text:
                    diff.add.append(vid)
                    diff.texts[vid] = text
        return diff

    def plan(self, changes: Changes) -> dict[int, str]:
        """{vector id: text} of the intentions ``changes`` adds or alters: the ones that need embedding."""
        return self._diff(_normalised(changes)).texts

    def apply(self, changes: Changes, embeddings: Mapping[int, np.ndarray], checkpoint: dict[str, Any]) -> None:
        """Apply one batch and adopt ``checkpoint`` with it; ``embeddings`` must cover ``plan(changes)``."""
        changes = _normalised(changes)
        diff = self._diff(changes)
        missing = [vid for vid in diff.add if vid not in embeddings]
        if missing:
            raise ValueError(f"{len(missing)} changed intentions have no embedding: call plan() and embed them")
        added = np.stack([embeddings[vid] for vid in diff.add]) if diff.add else np.zeros((0, self.dim), np.float32)
        upserts = [doc for doc in changes.values() if doc is not None]
        vids = [[vector_id(doc.post_id, item.relation) for item in doc.intentions] for doc in upserts]
        deletes = [post_id for post_id, doc in changes.items() if doc is None]
        with self._lock.write():
            self._vectors.remove(np.asarray(diff.remove, dtype=np.int64))
            self._vectors.add(np.asarray(diff.add, dtype=np.int64), added)
            self._metadata.write(upserts, vids, deletes)
            self.checkpoint = checkpoint
        if self._vectors.needs_compaction():
            self._compact()

    def _compact(self) -> None:
        with self._lock.read():
            compacted = self._vectors.compacted()
        with self._lock.write():
            self._vectors = compacted
        log.info("index_compacted", vectors=len(compacted))

    # reading (concurrent) ----------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, relation: str | None = None, exclude_post: str | None = None
    ) -> list[list[Hit]]:
        """Top ``k`` live intentions per query row, optionally of one relation and not of ``exclude_post``.

        FAISS returns candidates without knowing relations; candidates are widened until ``k`` pass the filter
        or the whole index was considered.
        """
        with self._lock.read():
            return self._search(queries, k, relation, exclude_post)

    def _search(self, queries: np.ndarray, k: int, relation: str | None, exclude_post: str | None) -> list:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        total = len(self._vectors)
        fetch = k * (VECTORS_PER_RELATION_GUESS if relation else 1) + (16 if exclude_post else 0)
        while True:
            fetch = min(fetch, total)
            results = self._hits(queries, fetch, k, relation, exclude_post) if fetch else [[] for _ in queries]
            if fetch >= total or all(len(hits) >= k for hits in results):
                return results
            fetch *= 4

    def _hits(self, queries: np.ndarray, fetch: int, k: int, relation: str | None, exclude: str | None) -> list:
        scores, ids = self._vectors.search(queries, fetch)
        rows = self._metadata.intentions([int(vid) for vid in np.unique(ids) if vid >= 0])
        texts = self._metadata.post_texts(row[0] for row in rows.values())
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits: list[Hit] = []
            for score, vid in zip(row_scores, row_ids, strict=True):
                row = rows.get(int(vid))
                if row is None or (relation and row[1] != relation) or row[0] == exclude:
                    continue
                post_id, rel, text, verifier_score = row
                hits.append(Hit(post_id, rel, text, float(score), verifier_score, texts.get(post_id, "")))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def similar(self, post_id: str, k: int, relation: str | None = None) -> list[Hit] | None:
        """Other posts whose intentions are nearest to this post's (best pair per post); None if unknown."""
        with self._lock.read():
            if self._metadata.document(post_id) is None:
                return None
            own = self._metadata.intentions_of([post_id]).get(post_id, {})
            vids = [vid for vid, (rel, _) in own.items() if relation in (None, rel)]
            if not vids:
                return []
            queries = self._vectors.reconstruct(np.asarray(vids, dtype=np.int64))
            per_query = k * VECTORS_PER_RELATION_GUESS  # near intentions often share posts: ask for more
            while True:
                best: dict[str, Hit] = {}
                for hits in self._search(queries, per_query, relation, exclude_post=post_id):
                    for hit in hits:
                        if hit.post_id not in best or hit.score > best[hit.post_id].score:
                            best[hit.post_id] = hit
                if len(best) >= k or per_query >= len(self._vectors):
                    return sorted(best.values(), key=lambda hit: -hit.score)[:k]
                per_query *= 4

    def intention_vectors(self, post_ids: Iterable[str]) -> tuple[list[IntentionRef], np.ndarray]:
        """The indexed intentions of ``post_ids`` with their vectors (rows in the same order), for clustering."""
        with self._lock.read():
            found = self._metadata.intentions_of(post_ids)
            refs = [
                IntentionRef(post_id, relation, text, vid)
                for post_id, intentions in found.items()
                for vid, (relation, text) in intentions.items()
            ]
            if not refs:
                return [], np.zeros((0, self.dim), dtype=np.float32)
            return refs, self._vectors.reconstruct(np.asarray([ref.vid for ref in refs], dtype=np.int64))

    def document(self, post_id: str) -> str | None:
        """The latest event JSON stored for the post."""
        return self._metadata.document(post_id)

    def __len__(self) -> int:
        return len(self._vectors)

    def stats(self) -> dict[str, Any]:
        posts, intentions = self._metadata.counts()
        snapshot = self.last_snapshot
        return {
            "kind": self.kind,
            "dim": self.dim,
            "embedding_model": self.embedding_model,
            "vectors": len(self._vectors),
            "posts": posts,
            "intentions": intentions,
            "relations": self._metadata.relation_counts(),
            "snapshot_seq": snapshot.seq if snapshot else None,
            "snapshot_at": snapshot.manifest["created_at"] if snapshot else None,
        }

    def close(self) -> None:
        self._metadata.close()


def _normalised(changes: Changes) -> dict[str, PostDoc | None]:
    for post_id, doc in changes.items():
        if doc is not None and doc.post_id != post_id:
            raise ValueError(f"change keyed {post_id!r} carries post {doc.post_id!r}")
    return {post_id: unique_relations(doc) if doc else None for post_id, doc in changes.items()}


def embed_plan(plan: Mapping[int, str], vectors: np.ndarray) -> dict[int, np.ndarray]:
    """Pair planned vector ids with the rows the embedder returned for ``list(plan.values())``."""
    return dict(zip(plan, vectors, strict=True))
