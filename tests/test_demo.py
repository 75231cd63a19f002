"""`miko-stream demo` runs every part embedded and indexes the shipped sample posts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from miko_stream.broker import free_port
from miko_stream.demo import sample_posts


def test_samples_are_valid_posts() -> None:
    from graph.contracts import Post

    lines = sample_posts().read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 20
    assert all(Post.model_validate(json.loads(line)).id for line in lines)


def test_demo_processes_and_indexes_every_sample(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "miko_stream", "--log-level", "WARNING", "demo", "--llm", "fake",
        "--exit-when-indexed", "--port", str(free_port()), "--index-dir", str(tmp_path / "index"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    total = len(sample_posts().read_text(encoding="utf-8").splitlines())
    assert f"all {total} posts processed and indexed" in done.stderr
    assert "example search" in done.stderr
