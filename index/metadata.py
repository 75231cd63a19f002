"""Metadata of the indexed intentions and posts in SQLite (vectors: index/vectors.py).

The live database is in memory: the only durable copy is the one inside a snapshot, written with SQLite's
online backup API together with the FAISS files and the consumed offsets. A crash therefore loses metadata and
vectors and offsets *together*, which is what makes replay from the snapshot offsets exactly-once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from index.records import PostDoc

SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    post_id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    document TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS intentions (
    vid INTEGER PRIMARY KEY,
    post_id TEXT NOT NULL,
    relation TEXT NOT NULL,
    text TEXT NOT NULL,
    score REAL
);
CREATE INDEX IF NOT EXISTS intentions_post ON intentions(post_id);
"""

IntentionRow = tuple[str, str, str, float | None]  # post_id, relation, text, verifier score


class MetadataDB:
    """One in-memory SQLite connection shared by the writer and concurrent readers, serialised by a mutex."""

    def __init__(self, connection: sqlite3.Connection | None = None) -> None:
        self._conn = connection or sqlite3.connect(":memory:", check_same_thread=False)
        self._mutex = threading.Lock()
        with self._mutex, self._conn:
            self._conn.executescript(SCHEMA)

    @classmethod
    def load(cls, path: Path) -> MetadataDB:
        """Copy a snapshot's database file into memory (the file itself is never written)."""
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        target = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            source.backup(target)
        finally:
            source.close()
        return cls(target)

    def backup_to(self, path: Path) -> None:
        target = sqlite3.connect(path)
        try:
            with self._mutex:
                self._conn.backup(target)
        finally:
            target.close()

    def intentions_of(self, post_ids: Iterable[str]) -> dict[str, dict[int, tuple[str, str]]]:
        """{post_id: {vid: (relation, text)}} for the posts that have intentions."""
        post_ids = list(dict.fromkeys(post_ids))
        found: dict[str, dict[int, tuple[str, str]]] = {}
        with self._mutex:
            for chunk in _chunks(post_ids):
                rows = self._conn.execute(
                    f"SELECT post_id, vid, relation, text FROM intentions WHERE post_id IN ({_marks(chunk)})",
                    chunk,
                )
                for post_id, vid, relation, text in rows:
                    found.setdefault(post_id, {})[vid] = (relation, text)
        return found

    def write(self, upserts: Sequence[PostDoc], vids: Sequence[Sequence[int]], deletes: Sequence[str]) -> None:
        """Replace each upserted post (``vids[i]`` for its intentions), drop deleted ones; one transaction."""
        now = time.time()
        with self._mutex, self._conn:
            for post_id in deletes:
                self._conn.execute("DELETE FROM intentions WHERE post_id = ?", (post_id,))
                self._conn.execute("DELETE FROM posts WHERE post_id = ?", (post_id,))
            for doc, doc_vids in zip(upserts, vids, strict=True):
                self._conn.execute("DELETE FROM intentions WHERE post_id = ?", (doc.post_id,))
                self._conn.execute(
                    "INSERT OR REPLACE INTO posts (post_id, text, document, updated_at) VALUES (?, ?, ?, ?)",
                    (doc.post_id, doc.text, doc.document, now),
                )
                self._conn.executemany(
                    "INSERT INTO intentions (vid, post_id, relation, text, score) VALUES (?, ?, ?, ?, ?)",
                    [
                        (vid, doc.post_id, item.relation, item.text, item.score)
                        for vid, item in zip(doc_vids, doc.intentions, strict=True)
                    ],
                )

    def intentions(self, vids: Sequence[int]) -> dict[int, IntentionRow]:
        found: dict[int, IntentionRow] = {}
        with self._mutex:
            for chunk in _chunks(list(vids)):
                query = "SELECT vid, post_id, relation, text, score FROM intentions WHERE vid IN ({})"
                rows = self._conn.execute(query.format(_marks(chunk)), chunk)
                found.update({vid: tuple(rest) for vid, *rest in rows})
        return found

    def post_texts(self, post_ids: Iterable[str]) -> dict[str, str]:
        post_ids = list(dict.fromkeys(post_ids))
        found: dict[str, str] = {}
        with self._mutex:
            for chunk in _chunks(post_ids):
                rows = self._conn.execute(f"SELECT post_id, text FROM posts WHERE post_id IN ({_marks(chunk)})", chunk)
                found.update(dict(rows))
        return found

    def document(self, post_id: str) -> str | None:
        with self._mutex:
            row = self._conn.execute("SELECT document FROM posts WHERE post_id = ?", (post_id,)).fetchone()
        return row[0] if row else None

    def counts(self) -> tuple[int, int]:
        """(posts, intentions)."""
        with self._mutex:
            posts = self._conn.execute("SELECT COUNT(*) FROM posts").fetchone()[0]
            intentions = self._conn.execute("SELECT COUNT(*) FROM intentions").fetchone()[0]
        return int(posts), int(intentions)

    def relation_counts(self) -> dict[str, int]:
        with self._mutex:
            rows = self._conn.execute("SELECT relation, COUNT(*) FROM intentions GROUP BY relation ORDER BY relation")
            return {relation: int(count) for relation, count in rows}

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


def _chunks(items: list, size: int = 500) -> Iterable[list]:
    """SQLite limits the number of bound parameters per statement."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(chunk: list) -> str:
    return ",".join("?" * len(chunk))
