"""`miko-stream demo` runs every part embedded and indexes the shipped sample posts."""

from __future__ import annotations

import json
import signal
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
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)  # bounds a hang only
    assert done.returncode == 0, done.stderr[-2000:]
    total = len(sample_posts().read_text(encoding="utf-8").splitlines())
    assert f"all {total} posts processed and indexed" in done.stderr
    assert "example search" in done.stderr


def child_pids(pid: int) -> set[int]:
    """Every descendant of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found |= {int(child), *child_pids(int(child))}
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_demo_is_readable_and_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    port = free_port()
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(line + "\n" for line in sample_posts().read_text(encoding="utf-8").splitlines()[:4]))
    command = [
        sys.executable, "-m", "miko_stream", "demo", "--llm", "fake", "--port", str(port),
        "--index-dir", str(tmp_path / "index"), "--posts", str(posts),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert process.stderr is not None
    for line in process.stderr:  # until everything is indexed (pytest-timeout bounds a hang)
        lines.append(line)
        if "posts processed and indexed" in line:
            break
    children = child_pids(process.pid)
    assert children, "the embedded broker runs as a child process"
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-2000:]
    assert lines[0].startswith(f"dashboard: http://127.0.0.1:{port}/"), "the dashboard URL comes first"
    assert "stopped: broker, processor, indexer and API are down" in rest
    assert not any(line.lstrip().startswith("{") for line in output.splitlines()), "no JSON log lines by default"
    assert any(line.startswith("      ") and "(0." in line for line in lines), "sample intentions with scores"
    assert not [pid for pid in children if alive(pid)], "a process outlived the demo"
