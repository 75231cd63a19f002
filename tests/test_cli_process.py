"""`miko-stream process`: events for valid posts, dead letters for the rest, one-line errors for bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miko_stream.cli import app

runner = CliRunner()

POSTS = [
    {"id": "a1", "text": "so happy my team won!!! # GoTigers emoji_12 <user>"},
    {"id": "a2", "text": "great, rain again on my day off", "caption": "A wet street under grey clouds."},
    {"id": "a3", "text": "x" * 200},
]


def write_input(tmp_path: Path) -> Path:
    path = tmp_path / "posts.jsonl"
    lines = [json.dumps(post) for post in POSTS] + ["{broken", "", json.dumps({"text": "no id"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_process_writes_events_and_dead_letters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIKO_MAX_TEXT_CHARS", "100")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        app, ["process", str(write_input(tmp_path)), "-o", str(out), "--llm", "fake", "--vision", "none"]
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in out.read_text().splitlines()]
    letters = [json.loads(line) for line in (tmp_path / "out.dlq.jsonl").read_text().splitlines()]
    assert sorted(e["post_id"] for e in events) == ["a1", "a2"]
    assert {e["post_id"]: e["caption_source"] for e in events} == {"a1": "none", "a2": "provided"}
    assert sorted(d["stage"] for d in letters) == ["decode", "limits", "validate"]
    assert next(d for d in letters if d["stage"] == "limits")["post_id"] == "a3"
    assert "3 dead letters" in result.output


def test_limit_and_explicit_dlq(tmp_path: Path) -> None:
    out, dlq = tmp_path / "o.jsonl", tmp_path / "dead.jsonl"
    args = ["process", str(write_input(tmp_path)), "-o", str(out), "--dlq", str(dlq), "--llm", "fake", "--limit", "1"]
    result = runner.invoke(app, [*args, "--vision", "none"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1
    assert dlq.read_text() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl", "-o", "out.jsonl"], "input file not found"),
        (["{input}", "-o", "out.jsonl", "--llm", "gpt9000"], "gpt9000"),
        (["{input}", "-o", "out.jsonl", "--llm", "fake", "--vision", "telepathy"], "telepathy"),
        (["{input}", "-o", "/proc/nope/x.jsonl", "--llm", "fake"], "cannot write -o /proc/nope/x.jsonl"),
        (["{input}", "-o", "{tmp}", "--llm", "fake"], "is a directory"),
    ],
)
def test_unusable_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    source = write_input(tmp_path)
    args = [arg.replace("{input}", str(source)).replace("{tmp}", str(tmp_path)) for arg in args]
    result = runner.invoke(app, ["process", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output


def test_dlq_folder_is_created_like_the_output_folder(tmp_path: Path) -> None:
    out, dlq = tmp_path / "a" / "o.jsonl", tmp_path / "b" / "c" / "dead.jsonl"
    args = ["process", str(write_input(tmp_path)), "-o", str(out), "--dlq", str(dlq), "--llm", "fake"]
    result = runner.invoke(app, [*args, "--vision", "none"])
    assert result.exit_code == 0, result.output
    assert len(dlq.read_text().splitlines()) == 2


def test_bogus_log_level_is_a_one_line_error() -> None:
    result = runner.invoke(app, ["--log-level", "BOGUS", "schemas", "/nonexistent"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--log-level" in lines[0], result.output
