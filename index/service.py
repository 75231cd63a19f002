"""The intention index as a service: embedder + store + snapshot directory, in one object to pass around.

Writers (the indexer) use the async methods, which embed and apply in worker threads so the event loop never
blocks. Readers (API, CLI) call the synchronous ``search``/``similar``/``document`` from any thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from index.embeddings import Embedder
from index.records import Hit, IntentionRef
from index.snapshot import Snapshot, SnapshotDir
from index.store import Changes, IntentionStore, embed_plan
from index.vectors import VectorIndexConfig

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class IndexSettings:
    """Where the index lives and how it is built."""

    root: Path
    vectors: VectorIndexConfig = field(default_factory=VectorIndexConfig)
    keep_snapshots: int = 2


class IntentionIndex:
    """Search and (for the one writer) update the index of verified intentions."""

    def __init__(self, store: IntentionStore, embedder: Embedder, snapshots: SnapshotDir | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self._snapshots = snapshots

    @classmethod
    def open(cls, settings: IndexSettings, embedder: Embedder, *, writer: bool) -> IntentionIndex:
        """Load the newest snapshot; a writer also takes the directory's lock (one writer per index)."""
        snapshots = SnapshotDir(settings.root, keep=settings.keep_snapshots)
        if writer:
            snapshots.acquire()
        try:
            store = IntentionStore.open(
                settings.root, dim=embedder.dim, embedding_model=embedder.name, config=settings.vectors
            )
        except BaseException:
            snapshots.release()
            raise
        return cls(store, embedder, snapshots if writer else None)

    @classmethod
    def fresh(cls, settings: IndexSettings, embedder: Embedder) -> IntentionIndex:
        """An empty index that will publish its snapshots into ``settings.root`` (``index rebuild``)."""
        snapshots = SnapshotDir(settings.root, keep=settings.keep_snapshots)
        snapshots.acquire()
        store = IntentionStore(dim=embedder.dim, embedding_model=embedder.name, config=settings.vectors)
        return cls(store, embedder, snapshots)

    @property
    def checkpoint(self) -> dict[str, Any]:
        return self.store.checkpoint

    async def apply(self, changes: Changes, checkpoint: dict[str, Any]) -> int:
        """Embed what changed, then apply ``changes`` with ``checkpoint``; returns the texts embedded."""
        plan = self.store.plan(changes)
        vectors = await asyncio.to_thread(self.embedder.encode, list(plan.values()))
        await asyncio.to_thread(self.store.apply, changes, embed_plan(plan, vectors), checkpoint)
        return len(plan)

    async def snapshot(self) -> Snapshot:
        if self._snapshots is None:
            raise RuntimeError("this index was opened read-only: open it with writer=True to write snapshots")
        snapshot = await asyncio.to_thread(self.store.snapshot, self._snapshots)
        log.info("index_snapshot", seq=snapshot.seq, vectors=snapshot.manifest["vectors"])
        return snapshot

    def search(self, query: str, k: int = 10, relation: str | None = None) -> list[Hit]:
        return self.store.search(self.embedder.encode([query]), k, relation)[0]

    def similar(self, post_id: str, k: int = 10, relation: str | None = None) -> list[Hit] | None:
        return self.store.similar(post_id, k, relation)

    def document(self, post_id: str) -> str | None:
        return self.store.document(post_id)

    def intention_vectors(self, post_ids: Iterable[str]) -> tuple[list[IntentionRef], np.ndarray]:
        return self.store.intention_vectors(post_ids)

    def stats(self) -> dict[str, Any]:
        return self.store.stats()

    def close(self) -> None:
        if self._snapshots is not None:
            self._snapshots.release()
        self.store.close()
