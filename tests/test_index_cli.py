"""`search`, `index rebuild` and `serve` refusals, through the real CLI."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import uvicorn
from helpers.index import apply, expected_pairs, generation, new_topic, open_index, produce_events, sample_docs
from helpers.wait import wait_until_sync
from typer.testing import CliRunner

from index.embeddings import HashingEmbedder
from index.service import IndexSettings, IntentionIndex
from index.snapshot import SnapshotDir
from miko_stream.api import ApiConfig, create_app
from miko_stream.broker import EmbeddedBroker, free_port
from miko_stream.cli import app

runner = CliRunner()


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (CliRunner swaps it per invocation, then closes it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def logs_survive_cli_runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI binds its loggers to the sys.stderr of the first invocation; keep them usable afterwards."""

    def configure(level: str = "INFO", json: bool = True) -> None:
        structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(_CurrentStderr()))  # type: ignore[arg-type]

    monkeypatch.setattr("miko_stream.cli.configure_logging", configure)
    yield
    structlog.reset_defaults()


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    index = open_index(tmp_path)
    apply(index, sample_docs())
    asyncio.run(index.snapshot())
    index.close()
    return tmp_path


def test_search_prints_a_table(index_dir: Path) -> None:
    args = ["search", "sell followers", "-k", "2", "--index-dir", str(index_dir), "--embedding-model", "hash"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "p-followers" in result.stdout and "sell followers to other accounts" in result.stdout


def test_search_json_with_relation(index_dir: Path) -> None:
    args = [
        "search",
        "dog",
        "--relation",
        "xNeed",
        "--json",
        "--index-dir",
        str(index_dir),
        "--embedding-model",
        "hash",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits and {hit["relation"] for hit in hits} == {"xNeed"}


def test_search_without_an_index_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "x", "--index-dir", str(tmp_path), "--embedding-model", "hash"])
    assert result.exit_code == 2 and "index rebuild" in result.output


@pytest.fixture
def live_server(index_dir: Path) -> Iterator[str]:
    index = IntentionIndex.open(IndexSettings(index_dir), HashingEmbedder(), writer=False)
    port = free_port()
    config = uvicorn.Config(create_app(index, config=ApiConfig(api_key="k")), port=port, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until_sync(lambda: server.started, what="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    index.close()


def test_search_against_a_running_server(live_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["search", "book a flight", "--url", live_server, "--json"])
    assert result.exit_code == 2 and "401" in result.output
    monkeypatch.setenv("MIKO_API_KEY", "k")
    result = runner.invoke(app, ["search", "book a flight", "--url", live_server, "--json", "-k", "1"])
    assert result.exit_code == 0, result.output
    assert [hit["post_id"] for hit in json.loads(result.stdout)] == ["p-trip"]


def test_serve_refuses_an_index_in_use(index_dir: Path) -> None:
    holder = SnapshotDir(index_dir)
    holder.acquire()
    try:
        result = runner.invoke(app, ["serve", "--index-dir", str(index_dir), "--embedding-model", "hash"])
    finally:
        holder.release()
    assert result.exit_code == 2 and "another process" in result.output


def test_serve_refuses_another_embedding_model(index_dir: Path) -> None:
    result = runner.invoke(app, ["serve", "--index-dir", str(index_dir), "--embedding-model", "hash:64"])
    assert result.exit_code == 2 and "--embedding-model hash:384" in result.output


def test_serve_refuses_an_index_of_another_topic(index_dir: Path) -> None:
    args = ["serve", "--index-dir", str(index_dir), "--embedding-model", "hash", "--topic", "other"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "follows topic 't'" in result.output


def test_index_rebuild_replays_the_topic(kafka_broker: EmbeddedBroker, index_dir: Path) -> None:
    kafka = asyncio.run(new_topic(kafka_broker.bootstrap))
    records = generation("r", range(10), deletes=[4])
    asyncio.run(produce_events(kafka.bootstrap, kafka.intentions_topic, records))
    before = SnapshotDir(index_dir).latest()
    assert before is not None

    args = ["index", "rebuild", "--bootstrap", kafka.bootstrap, "--topic", kafka.intentions_topic]
    args += ["--index-dir", str(index_dir), "--embedding-model", "hash", "--batch-size", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"rebuilt {index_dir}: {len(records)} records" in " ".join(result.output.split())

    index = IntentionIndex.open(IndexSettings(index_dir), HashingEmbedder(), writer=False)
    assert index.store.last_snapshot is not None and index.store.last_snapshot.seq > before.seq
    assert len(index.store) == expected_pairs(records)
    assert index.document("p-dog") is None  # the old index's content is gone
    assert index.checkpoint["topic"] == kafka.intentions_topic
    index.close()


def test_index_rebuild_of_a_missing_topic_fails(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    args = ["index", "rebuild", "--bootstrap", kafka_broker.bootstrap, "--topic", "no-such-topic-here"]
    result = runner.invoke(app, [*args, "--index-dir", str(tmp_path), "--embedding-model", "hash"])
    assert result.exit_code == 2 and "does not exist" in result.output
