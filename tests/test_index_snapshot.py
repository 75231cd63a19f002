"""Snapshot atomicity: a half-written snapshot is never loaded, even if the writer is SIGKILLed mid-write."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from index.embeddings import HashingEmbedder
from index.service import IndexSettings, IntentionIndex
from index.snapshot import SnapshotDir, SnapshotError


def write_text_files(contents: dict[str, str]):
    def fill(tmp: Path) -> dict[str, object]:
        for name, text in contents.items():
            (tmp / name).write_text(text)
        return {"note": contents.get("a", "")}

    return fill


def test_write_publishes_and_prunes(tmp_path: Path) -> None:
    snapshots = SnapshotDir(tmp_path, keep=2)
    snapshots.acquire()
    for n in range(1, 5):
        snapshot = snapshots.write(write_text_files({"a": f"v{n}", "b": "x" * n}))
        assert snapshot.seq == n
    latest = snapshots.latest()
    assert latest is not None and latest.seq == 4 and latest.manifest["note"] == "v4"
    assert (tmp_path / "CURRENT").read_text().strip() == "4"
    assert sorted(p.name for p in snapshots.snapshots.iterdir()) == ["000000000003", "000000000004"]


def test_failed_fill_leaves_the_previous_snapshot(tmp_path: Path) -> None:
    snapshots = SnapshotDir(tmp_path)
    snapshots.acquire()
    snapshots.write(write_text_files({"a": "good"}))

    def broken(tmp: Path) -> dict[str, object]:
        (tmp / "a").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        snapshots.write(broken)
    latest = snapshots.latest()
    assert latest is not None and latest.manifest["note"] == "good"
    assert [p.name for p in snapshots.snapshots.iterdir()] == ["000000000001"]


def test_incomplete_snapshots_are_ignored(tmp_path: Path) -> None:
    snapshots = SnapshotDir(tmp_path)
    snapshots.acquire()
    snapshots.write(write_text_files({"a": "one"}))
    second = snapshots.write(write_text_files({"a": "two", "big": "y" * 100}))

    # A torn file in the newest snapshot (size differs from the manifest): fall back to the previous one.
    (second.path / "big").write_text("y" * 10)
    latest = snapshots.latest()
    assert latest is not None and latest.manifest["note"] == "one"

    # A numbered directory without a manifest, a temp directory and a garbage CURRENT are all ignored.
    (snapshots.snapshots / "000000000009").mkdir()
    (snapshots.snapshots / "000000000009" / "a").write_text("partial")
    (snapshots.snapshots / ".tmp-10-1").mkdir()
    (tmp_path / "CURRENT").write_text("not a number")
    latest = snapshots.latest()
    assert latest is not None and latest.seq == 1

    # The next writer numbers after everything it sees and clears stale temp dirs on acquire.
    snapshots.release()
    again = SnapshotDir(tmp_path)
    again.acquire()
    assert not (again.snapshots / ".tmp-10-1").exists()
    assert again.write(write_text_files({"a": "three"})).seq == 10


def test_one_writer_per_directory(tmp_path: Path) -> None:
    first = SnapshotDir(tmp_path)
    first.acquire()
    with pytest.raises(SnapshotError, match="another process"):
        SnapshotDir(tmp_path).acquire()
    with pytest.raises(SnapshotError, match="acquire"):
        SnapshotDir(tmp_path).write(write_text_files({"a": "x"}))
    first.release()
    SnapshotDir(tmp_path).acquire()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from index.embeddings import HashingEmbedder
    from index.records import IntentionDoc, PostDoc
    from index.service import IndexSettings, IntentionIndex

    async def main(root: str) -> None:
        index = IntentionIndex.open(IndexSettings(Path(root)), HashingEmbedder(), writer=True)
        n = index.checkpoint.get("n", 0)
        while True:
            n += 1
            items = (IntentionDoc("xIntent", f"intent {n}"), IntentionDoc("xWant", f"want {n}"))
            await index.apply({f"p{n}": PostDoc(f"p{n}", "t", "{}", items)}, {"n": n})
            await index.snapshot()
            print(f"done={n}", flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_sigkill_during_snapshots_never_exposes_a_partial_one(tmp_path: Path) -> None:
    """Kill a process that does nothing but apply and snapshot; each restart must see one consistent state."""
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    seen = 0
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert child.stdout is not None
        target = rng.randint(3, 25)
        for line in child.stdout:  # log lines are interleaved on stdout
            if line.startswith(b"done="):
                seen = int(line.removeprefix(b"done="))
            if seen >= target:
                break
        time.sleep(rng.uniform(0, 0.03))  # land anywhere in the next apply + snapshot (often mid-write)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert seen >= target, "the writer process stopped early"

        index = IntentionIndex.open(IndexSettings(tmp_path), HashingEmbedder(), writer=False)
        n = index.checkpoint["n"]
        stats = index.stats()
        index.close()
        assert n >= target  # printed numbers were snapshotted before the print
        assert stats["posts"] == n and stats["intentions"] == 2 * n and stats["vectors"] == 2 * n
