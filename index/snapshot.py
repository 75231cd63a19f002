"""Atomic, self-validating snapshot directories (the durability half of exactly-once indexing).

Layout under the index directory::

    CURRENT                   the sequence number of the newest snapshot (atomically replaced)
    snapshots/000000000042/   one complete snapshot: data files + manifest.json (written last)
    snapshots/.tmp-43-<pid>/  a snapshot being written; never loaded, removed by the next writer
    .writer.lock              flock held by the one process allowed to write snapshots

A snapshot is written into a temporary directory, every file and the directory are fsynced, the manifest
(with each file's size) is written and fsynced last, then the directory is renamed into place and CURRENT is
replaced. A crash at any point leaves either the old snapshot or the new one visible, never a mix. The loader
also checks the manifest's file sizes, and falls back to the newest valid snapshot if CURRENT is unusable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
TEMP_PREFIX = ".tmp-"


class SnapshotError(RuntimeError):
    """The index directory cannot be used (locked by another writer, or unreadable)."""


@dataclass(frozen=True)
class Snapshot:
    seq: int
    path: Path
    manifest: dict[str, Any]


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable only once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class SnapshotDir:
    """Reads and writes the snapshots of one index directory; keeps the newest ``keep`` of them."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.snapshots = self.root / "snapshots"
        self.keep = max(1, keep)
        self._lock_fd: int | None = None

    # reading -----------------------------------------------------------------------------------------------

    def _seqs(self) -> list[int]:
        if not self.snapshots.is_dir():
            return []
        return sorted(int(entry.name) for entry in self.snapshots.iterdir() if entry.name.isdigit())

    def _path(self, seq: int) -> Path:
        return self.snapshots / f"{seq:012d}"

    def read(self, seq: int) -> Snapshot | None:
        """The snapshot ``seq`` if it is complete (manifest present, every file at its recorded size)."""
        path = self._path(seq)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            files = manifest["files"]
            complete = (
                manifest.get("format") == FORMAT
                and manifest.get("seq") == seq
                and all((path / name).stat().st_size == size for name, size in files.items())
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return Snapshot(seq, path, manifest) if complete else None

    def current_seq(self) -> int | None:
        try:
            return int((self.root / CURRENT).read_text().strip())
        except (OSError, ValueError):
            return None

    def latest(self) -> Snapshot | None:
        """The snapshot CURRENT names, else the newest complete one; None for a new index."""
        current = self.current_seq()
        if current is not None and (snapshot := self.read(current)):
            return snapshot
        for seq in reversed(self._seqs()):
            if snapshot := self.read(seq):
                if current is not None:
                    log.warning("snapshot_current_unusable", current=current, using=seq, root=str(self.root))
                return snapshot
        return None

    # writing (only with the writer lock) -------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the writer lock (freed when the process dies, even by SIGKILL) and clear stale temp dirs."""
        self.snapshots.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(fd)
            raise SnapshotError(
                f"{self.root} is being written by another process (serve or index rebuild); stop it first "
                "or use another --index-dir"
            ) from error
        self._lock_fd = fd
        for entry in self.snapshots.iterdir():
            if entry.name.startswith(TEMP_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write(self, fill: Callable[[Path], dict[str, Any]]) -> Snapshot:
        """``fill(tmp_dir)`` writes the data files and returns manifest fields; then publish atomically."""
        if self._lock_fd is None:
            raise SnapshotError("acquire() the writer lock before writing snapshots")
        seq = max([*self._seqs(), self.current_seq() or 0]) + 1
        tmp = self.snapshots / f"{TEMP_PREFIX}{seq}-{os.getpid()}"
        tmp.mkdir()
        try:
            fields = fill(tmp)
            files = {entry.name: entry.stat().st_size for entry in sorted(tmp.iterdir()) if entry.is_file()}
            for name in files:
                fsync_path(tmp / name)
            manifest = {**fields, "format": FORMAT, "seq": seq, "created_at": time.time(), "files": files}
            write_durably(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            fsync_path(tmp)
            final = self._path(seq)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(self.snapshots)
        pointer = self.root / f"{CURRENT}.tmp"
        write_durably(pointer, f"{seq}\n".encode())
        os.replace(pointer, self.root / CURRENT)
        fsync_path(self.root)
        self._prune(seq)
        return Snapshot(seq, final, manifest)

    def _prune(self, newest: int) -> None:
        for seq in self._seqs()[: -self.keep]:
            if seq < newest:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self._path(seq))
